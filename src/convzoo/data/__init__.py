"""The data layer: from a ``data.source`` to normalised, augmented batches on the device.

A few shared modules and four rooms, lowest first (an import only points down; see
docs/architecture.md, "The data layer", and tests/test_data_layers.py):

- base: ``images`` (decode, `Geometry`, the geometry rule, scanning), ``dataset`` (`Split`,
  `Dataset`, the split/set interface), ``prepare`` (once per node), ``caches`` (decode
  caches), ``sampler`` (order and random streams), ``progress``;
- ``sources``: CIFAR, digits, image folders and archives, downloads;
- ``packs``: the packed record format, its reader, writer and remote cache;
- ``transforms``: preprocessing, augmentation (as a `Plan` of ops) and the stage that runs it;
- ``loading``: the registry of sources, the two loaders and the pipeline.

Nothing is re-exported here: import each module by its path.
"""
