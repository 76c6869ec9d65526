"""`gendist data prepare`: write a source as webdataset tar shards plus `manifest.json`, crash-safely.

Small samples (points, small images) are packed `block_size` at a time into one tar member group
(`b000012.x.npy`, `.y.npy`, `.idx.npy`): one tiny sample per member costs a 512-byte header and a decode call
each, which caps webdataset at a few thousand samples/s, while packed blocks read at millions/s. Folder images
are stored one per member group, in their original encoding (`s000000042.png`, `.cls`, `.idx`).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import webdataset as wds

from gendist.data.manifest import MANIFEST_FORMAT
from gendist.data.sources import SourceData, load_source
from gendist.errors import UserError
from gendist.fsutil import fsync_path, write_bytes_atomic

SPLITS = ("train", "test")


class HashingFile:
    """File wrapper that hashes and counts bytes as they are written, so the shard is never re-read."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.bytes += len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


class ShardWriter:
    """Writes one tar shard to `NAME.tmp-<pid>` and renames it to `NAME` only once complete and fsynced.

    A killed writer therefore leaves at most a temporary file, never a truncated shard under its final name.
    The tar format itself comes from `webdataset.TarWriter`; mtimes are fixed so equal data gives equal bytes.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.temp_path = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        self.file = open(self.temp_path, "wb")
        self.hashing = HashingFile(self.file)
        self.tar = wds.TarWriter(self.hashing, encoder=False, mtime=0.0, user="gendist", group="gendist")
        self.num_samples = 0
        self.num_blocks = 0

    def write(self, sample: dict[str, Any], num_samples: int = 1) -> None:
        """Add one member group (`__key__` plus bytes per extension) holding `num_samples` samples."""
        self.tar.write(sample)
        self.num_samples += num_samples
        self.num_blocks += 1

    def close(self) -> dict[str, Any]:
        """Finish the tar, make it durable, move it to its final name; returns its manifest entry."""
        self.tar.close()  # writes the end-of-archive blocks; leaves our file open
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.temp_path, self.path)
        fsync_path(self.path.parent)
        return {"name": self.path.name, "num_samples": self.num_samples, "num_blocks": self.num_blocks,
                "bytes": self.hashing.bytes, "sha256": self.hashing.sha256.hexdigest()}

    def abort(self) -> None:
        """Drop the partial shard (used when writing fails)."""
        self.file.close()
        self.temp_path.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is not None:
            self.abort()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def build_packed_groups(data: SourceData, rows: np.ndarray, block_size: int, first_id: int,
                        first_block: int) -> Iterator[tuple[dict[str, Any], int]]:
    """Member groups of up to `block_size` samples: x (n, ...) float32, y (n,) int64, idx (n,) int64.

    `first_id`/`first_block` are the split-wide id of `rows[0]` and number of the first block.
    """
    for block, start in enumerate(range(0, len(rows), block_size), start=first_block):
        picked = rows[start:start + block_size]
        idx = np.arange(first_id + start, first_id + start + len(picked), dtype=np.int64)
        group = {"__key__": f"b{block:06d}",
                 "x.npy": npy_bytes(data.x[picked].astype(np.float32)), "idx.npy": npy_bytes(idx)}
        if data.y is not None:
            group["y.npy"] = npy_bytes(data.y[picked].astype(np.int64))
        yield group, len(picked)


def build_media_groups(data: SourceData, rows: np.ndarray, first_id: int) -> Iterator[tuple[dict[str, Any], int]]:
    """One member group per image, in its original encoding: `png`/`jpg`, `cls` (if labelled), `idx`."""
    for offset, row in enumerate(rows):
        extension, payload = data.encoded[row]
        sample_id = first_id + offset
        group = {"__key__": f"s{sample_id:09d}", extension: payload, "idx": str(sample_id).encode()}
        if data.y is not None:
            group["cls"] = str(int(data.y[row])).encode()
        yield group, 1


def write_split(data: SourceData, rows: np.ndarray, split: str, out_dir: Path, shard_size: int,
                block_size: int) -> list[dict[str, Any]]:
    """Write `rows` of `data` (already in shuffled order) as `split-000000.tar`, ...; returns shard entries.

    Row `i` of the split gets sample id `idx = i`: ids are contiguous per shard and per block.
    """
    entries: list[dict[str, Any]] = []
    for shard, start in enumerate(range(0, max(len(rows), 1), shard_size)):
        shard_rows = rows[start:start + shard_size]
        with ShardWriter(out_dir / f"{split}-{shard:06d}.tar") as writer:
            if data.encoded is not None:
                groups = build_media_groups(data, shard_rows, first_id=start)
            else:
                blocks_before = sum(entry["num_blocks"] for entry in entries)
                groups = build_packed_groups(data, shard_rows, block_size, start, blocks_before)
            for group, count in groups:
                writer.write(group, count)
            entries.append(writer.close())
    return entries


def write_json_atomic(path: Path, content: dict) -> None:
    write_bytes_atomic(path, json.dumps(content, indent=1).encode())


def remove_stale_files(out_dir: Path, manifest: dict) -> None:
    """Delete shards of an earlier prepare that the new manifest does not list, and temp files of dead writers."""
    keep = {shard["name"] for split in manifest["splits"].values() for shard in split["shards"]}
    for split in SPLITS:
        for path in out_dir.glob(f"{split}-*.tar"):
            if path.name not in keep:
                path.unlink(missing_ok=True)
    for path in out_dir.glob("*.tmp-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not process_alive(int(pid)):
            path.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def check_prepare_arguments(shard_size: int, test_fraction: float, block_size: int) -> None:
    if shard_size < 1 or block_size < 1:
        raise UserError(f"data prepare: shard_size ({shard_size}) and block_size ({block_size}) must be >= 1")
    if not 0 < test_fraction < 1:
        raise UserError(f"data prepare: test_fraction must be in (0, 1), got {test_fraction}")


def prepare_dataset(source: str, out_dir: Path | str, shard_size: int = 16384, test_fraction: float = 0.1,
                    seed: int = 0, block_size: int = 1024, half: int | None = None,
                    resize: tuple[int, int] | list[int] | None = None, crop: str = "center") -> dict:
    """Load `source` (images resized to `resize` (H, W), see sources.resize_images), split train/test with a
    seeded permutation (or the source's own split, e.g. Fashion-MNIST's test set: `test_fraction` is then
    not used), write shards and `manifest.json`.

    `half` (0 or 1) keeps one of two disjoint halves of the samples (a seeded split; two-domain data made
    from the same samples). Returns the manifest. Re-running into the same folder replaces the previous
    shards cleanly.
    """
    check_prepare_arguments(shard_size, test_fraction, block_size)
    data = load_source(source, seed=seed, resize=resize, crop=crop)
    if half is not None:
        data = take_half(data, half, seed)
    order = np.random.default_rng([seed, 1]).permutation(len(data.x))
    if data.test_rows is not None:  # the source's own split (shuffled within each part, like a random one)
        is_test = np.zeros(len(data.x), dtype=bool)
        is_test[data.test_rows] = True
        split_rows = {"train": order[~is_test[order]], "test": order[is_test[order]]}
        return write_prepared(data, source, out_dir, split_rows, shard_size, block_size, half, resize, crop)
    num_test = int(round(len(data.x) * test_fraction))
    if len(data.x) < 2 or not 1 <= num_test < len(data.x):
        raise UserError(f"data prepare: {len(data.x)} samples from '{source}' cannot be split with "
                        f"test_fraction={test_fraction}; both splits need at least one sample")
    split_rows = {"train": order[num_test:], "test": order[:num_test]}
    return write_prepared(data, source, out_dir, split_rows, shard_size, block_size, half, resize, crop)


def write_prepared(data, source: str, out_dir: Path | str, split_rows: dict, shard_size: int, block_size: int,
                   half: int | None, resize, crop: str) -> dict:
    """Shards of both splits and the manifest (written last: a folder without it is not a prepared folder)."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"data prepare: cannot create the --out folder '{out_dir}' ({error.strerror or error}); "
                        "pass a folder you can write") from None
    # folder images are stored one per member group: record block_size 1 so block sizes stay derivable
    stored_block_size = 1 if data.encoded is not None else block_size
    splits = {}
    try:  # shards are written to temporary names and renamed when complete: a failure leaves no half shard
        for split in SPLITS:
            shards = write_split(data, split_rows[split], split, out_dir, shard_size, stored_block_size)
            splits[split] = {"num_samples": int(len(split_rows[split])), "shards": shards}
    except OSError as error:
        raise UserError(f"data prepare: writing shards to '{out_dir}' failed ({error.strerror or error}); "
                        "check the free space and permissions of --out") from None
    manifest = {
        "format": MANIFEST_FORMAT, "source": source, "half": half, "kind": data.kind, "sample_shape": list(data.x.shape[1:]),
        "dtype": "float32", "has_labels": data.y is not None,
        "num_classes": int(data.y.max()) + 1 if data.y is not None and len(data.y) else None, "block_size": stored_block_size,
        "image_mode": data.image_mode, "resize": list(resize) if resize else None, "crop": crop if resize else None,
        "split": "source" if data.test_rows is not None else "random",
        "modes": data.modes.tolist() if data.modes is not None else None, "mode_std": data.mode_std,
        "splits": splits,
    }
    write_json_atomic(out_dir / "manifest.json", manifest)
    remove_stale_files(out_dir, manifest)
    return manifest


__all__ = ["ShardWriter", "prepare_dataset", "write_json_atomic", "MANIFEST_FORMAT"]


def take_half(data, half: int, seed: int):
    """Rows of one of two disjoint halves (seeded permutation, the same for every variant of the source)."""
    import dataclasses

    order = np.random.default_rng([seed, 2]).permutation(len(data.x))
    rows = np.sort(order[: len(order) // 2] if half == 0 else order[len(order) // 2:])
    return dataclasses.replace(data, x=data.x[rows], y=None if data.y is None else data.y[rows],
                               encoded=None if data.encoded is None else [data.encoded[i] for i in rows],
                               test_rows=None if data.test_rows is None else np.flatnonzero(np.isin(rows, data.test_rows)))


def prepare_two_domains(source_a: str, source_b: str, out_dir: Path | str, **options) -> dict:
    """Unpaired two-domain data (CycleGAN): domain A in `out_dir`, domain B in `out_dir/b`, each with its
    own train/test split and manifest. Sources made from the same samples get disjoint halves."""
    from gendist.data.sources import same_base_data

    halves = (0, 1) if same_base_data(source_a, source_b) else (None, None)
    out_dir = Path(out_dir)
    manifest_b = prepare_dataset(source_b, out_dir / DOMAIN_B_DIR, half=halves[1], **options)
    manifest = prepare_dataset(source_a, out_dir, half=halves[0], **options)  # written last: marks completion
    return {"a": manifest, "b": manifest_b}


DOMAIN_B_DIR = "b"  # sub-folder of a two-domain data folder that holds domain B
