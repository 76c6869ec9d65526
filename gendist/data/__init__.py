"""Data: sources -> crash-safe packed webdataset shards + manifest -> deterministic, resumable loader."""
from gendist.data.loader import ShardLoader, measure_throughput
from gendist.data.manifest import load_manifest, resolve_shards
from gendist.data.shards import prepare_dataset
from gendist.data.sources import SourceData, load_source

__all__ = ["load_source", "prepare_dataset", "ShardLoader", "resolve_shards", "load_manifest", "SourceData",
           "measure_throughput"]
