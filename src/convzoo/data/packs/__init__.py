"""Packs: the packed record format (``convzoo pack``) for sets too large for memory.

``reader`` (the format, `open_packed`, `load_packed`), ``writer`` (`pack`) and ``remote``
(packs behind fsspec URLs, through a node-local block cache). They import the base modules of
``convzoo.data`` and, for the writer, the CIFAR reader of ``convzoo.data.sources``.
"""
