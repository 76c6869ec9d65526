"""From `data.*` config to loaders: a prepared folder, a built-in source (prepared once into a cache), or
shard patterns prepared elsewhere."""
from __future__ import annotations

import fcntl
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path


from gendist.config import RunConfig
from gendist.data import ShardLoader, load_manifest, prepare_dataset, resolve_shards
from gendist.data.shards import DOMAIN_B_DIR, prepare_two_domains
from gendist.data.sources import source_revision
from gendist.distributed import DistInfo, barrier
from gendist.errors import UserError
from gendist.data.info import DataInfo


@dataclass
class DataSpec:
    train_urls: list[str]
    test_urls: list[str]
    manifest: dict | None
    info: DataInfo
    domain_b: "DataSpec | None" = None  # second domain of two-domain data (CycleGAN)


def cache_root(config: RunConfig) -> Path:
    root = config.data.cache_dir or os.environ.get("GENDIST_CACHE") or "~/.cache/gendist"
    return Path(root).expanduser() / "shards"


CACHE_LAYOUT = "num_classes"  # what cached manifests hold beyond the format; changing it prepares the cache again


def _source_key(spec: str, seed: int, resize: list[int] | None = None, crop: str = "center") -> str:
    """Cache key of a source: its spec, its resize and crop, and for file sources the file's size and
    modification time."""
    parts = [spec, str(seed), CACHE_LAYOUT]
    if resize:
        parts.append(f"resize={list(resize)},crop={crop}")
    revision = source_revision(spec)
    if revision:
        parts.append(revision)
    if ":" in spec:
        path = Path(spec.split(":", 1)[1])
        if path.exists():
            stat = path.stat()
            parts += [str(stat.st_size), str(stat.st_mtime_ns)]
    return spec.split(":", 1)[0] + "-" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def prepare_cached_source(config: RunConfig, dist_info: DistInfo) -> Path:
    """Prepare `data.source` (and `data.source_b`) once per machine (file lock: several ranks/runs may race)
    and reuse it."""
    data, seed = config.data, config.train.seed
    key = _source_key(data.source, seed, data.resize, data.crop)
    if data.source_b:
        key = f"two-{key}-{_source_key(data.source_b, seed, data.resize, data.crop)}"
    folder = cache_root(config) / key
    if dist_info.local_rank == 0:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(folder.parent / f".{folder.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (folder / "manifest.json").is_file():
                if data.source_b:
                    prepare_two_domains(data.source, data.source_b, folder, seed=seed, resize=data.resize,
                                        crop=data.crop)
                else:
                    prepare_dataset(data.source, folder, seed=seed, resize=data.resize, crop=data.crop)
    barrier()
    return folder


def split_urls(folder: Path, manifest: dict, split: str) -> list[str]:
    return [str(folder / shard["name"]) for shard in manifest["splits"][split]["shards"]]


def info_from_manifest(manifest: dict) -> DataInfo:
    return DataInfo(kind=manifest["kind"], sample_shape=tuple(manifest["sample_shape"]),
                    modes=manifest.get("modes"), mode_std=manifest.get("mode_std"),
                    num_classes=manifest.get("num_classes"))


def resolve_data(config: RunConfig, dist_info: DistInfo) -> DataSpec:
    data = config.data
    if data.shards:
        train = resolve_shards(data.shards)
        test = resolve_shards(data.test_shards) if data.test_shards else []
        probe = ShardLoader(train, None, batch_size=1, seed=0)
        first = next(iter(probe))["x"]
        shape = tuple(first.shape[1:])
        kind = "points" if len(shape) == 1 else "images"
        return DataSpec(train, test, None, DataInfo(kind=kind, sample_shape=shape))
    folder = Path(data.dir) if data.dir else prepare_cached_source(config, dist_info)
    spec = spec_of_folder(folder)
    if config.model.recipe == "cyclegan":
        if not (folder / DOMAIN_B_DIR / "manifest.json").is_file():
            raise UserError(f"data: '{folder}' holds one domain; model.recipe=cyclegan needs two: prepare it with "
                            "`gendist data prepare --source A --source-b B --out DIR` (or set data.source_b)")
        spec.domain_b = spec_of_folder(folder / DOMAIN_B_DIR)
        spec.info.domain_b = spec.domain_b.info
    return spec


def spec_of_folder(folder: Path) -> DataSpec:
    manifest = load_manifest(folder)
    return DataSpec(split_urls(folder, manifest, "train"), split_urls(folder, manifest, "test"), manifest,
                    info_from_manifest(manifest))


SEED_OFFSET_B = 7919  # domain B's loader draws its own stream: its seed is train.seed + this


def build_train_loader(config: RunConfig, spec: DataSpec, dist_info: DistInfo, seed_offset: int = 0) -> ShardLoader:
    data = config.data
    return ShardLoader(spec.train_urls, spec.manifest, batch_size=config.train.batch_size,
                       seed=config.train.seed + seed_offset,
                       rank=dist_info.rank, world_size=dist_info.world_size, split_mode=data.split_mode,
                       num_workers=data.num_workers, shuffle_buffer=data.shuffle_buffer, on_error=data.on_error,
                       memory_cache_bytes=data.memory_cache_mb << 20, micro_batches=config.train.grad_accum,
                       pin_memory=dist_info.device.type == "cuda")


def iterate_in_order(urls: list[str], manifest: dict | None, batch_size: int = 500):
    """One pass over `urls` in file order, as the loader's batch dicts (x, and y/idx when stored)."""
    loader = ShardLoader(urls, manifest, batch_size=batch_size, seed=0, drop_last=False, split_mode="global",
                         shuffle_buffer=1)
    yield from (batch for batch, _ in zip(loader, range(loader.num_batches(0))))  # the loader repeats epochs


def iterate_test(spec: DataSpec, batch_size: int = 500, limit: int = 10_000):
    """Held-out samples, one pass in file order (at most `limit`), as (x (B, ...), y (B,)) pairs: one read of
    the shards gives both; y is None for unlabelled data."""
    if not spec.test_urls:
        return
    seen = 0
    for batch in iterate_in_order(spec.test_urls, spec.manifest, batch_size):
        yield batch["x"], batch.get("y")
        seen += batch["x"].shape[0]
        if seen >= limit:
            return


def check_batch_size(config: RunConfig, spec: DataSpec, dist_info: DistInfo) -> None:
    if spec.manifest is None:
        return
    for domain in (spec, spec.domain_b):
        if domain is None:
            continue
        total = domain.manifest["splits"]["train"]["num_samples"]
        if config.train.batch_size * dist_info.world_size > total:
            raise UserError(f"train.batch_size={config.train.batch_size} x {dist_info.world_size} processes exceeds "
                            f"the {total} training samples; lower train.batch_size")


__all__ = ["DataSpec", "resolve_data", "build_train_loader", "iterate_in_order", "iterate_test", "check_batch_size",
           "split_urls"]
