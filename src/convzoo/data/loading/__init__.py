"""Loading: from ``cfg.data`` to the trainer's batches.

``registry`` (every value ``data.source`` may take, loaded into memory), ``loaders`` (resident
and streaming) and ``pipeline`` (memory or stream, the fit of the preprocessing, the loaders of
a stage). The top room of ``convzoo.data``: it may import every other.
"""
