"""Which reader of encoded, labelled records a ``data.source`` names, if any: a label file
(CSV/TSV), a Hugging Face dataset (a ``save_to_disk`` folder, parquet/arrow files, an
``hf://datasets/OWNER/NAME`` Hub name) or WebDataset shards. Shared by the registry
(`convzoo.data.loading.registry`) and ``convzoo pack`` (`convzoo.data.packs.writer`), so both
read a source the same way."""

from __future__ import annotations

from pathlib import Path

from convzoo.data.images import DEFAULT_LIMITS, Limits
from convzoo.data.sources import hf, labelfile, webdataset
from convzoo.data.sources.records import Records


def open_records(source: str, limits: Limits = DEFAULT_LIMITS) -> Records | None:
    """`Records` of the label file, Hugging Face dataset or WebDataset shards `source` names,
    or None for any other source (an image folder, an archive of one, CIFAR, a pack)."""
    if webdataset.looks_like_shards(source):
        return webdataset.read_shards(source, limits)
    if hf.hub_dataset_id(source) is not None:
        return None if hf.hub_is_pack(source) else hf.read_hub(source)
    if "://" in source:
        return None  # a pack behind an fsspec URL
    path = Path(source).expanduser()
    if labelfile.is_label_file(path):
        return labelfile.read_label_file(path)
    if hf.is_hf_source(path):
        return hf.read_hf(path)
    if path.is_file() and path.name.endswith((".tar", ".tar.gz", ".tgz")) \
            and webdataset.is_shard(path):
        return webdataset.read_shards(str(path), limits)
    return None
