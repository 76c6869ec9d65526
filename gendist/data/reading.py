"""Reading shards with webdataset: member groups -> decoded `Block`s (packed arrays or single images), with
truncation checks against the expected block counts and the raise/skip error policy."""
from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import webdataset as wds
from einops import rearrange

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "bmp", "webp", "ppm", "pgm")
GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "F"}
log = logging.getLogger(__name__)


class ShardError(Exception):
    """A shard (or one of its member groups) cannot be read; the message names the file."""

    def user_message(self) -> str:
        """The one-line message for `UserError`, with the way out."""
        return f"{self} — re-run `gendist data prepare` or set data.on_error=skip"


class Block(NamedTuple):
    """Consecutive samples of one member group: x (n, ...) float32 or uint8 images, y (n,) | None, idx (n,)."""

    x: np.ndarray
    y: np.ndarray | None
    idx: np.ndarray


@dataclass(frozen=True)
class ShardTask:
    """One shard to read: its expected samples per block, and which block positions to decode (None: all)."""

    url: str
    block_sizes: tuple[int, ...]
    keep: frozenset[int] | None = None


@dataclass
class SkipCounter:
    """Bad shards/member groups passed over under `on_error="skip"`."""

    count: int = 0


def shard_error(url: str, error: BaseException) -> ShardError:
    # webdataset appends stream objects to exception args and " @ <stream>" to the message: drop them
    detail = str(error.args[0]) if error.args else type(error).__name__
    detail = detail.split(" @ ")[0].replace("\n", " ")[:200]
    return ShardError(f"data: shard '{url}' is corrupt or truncated ({type(error).__name__}: {detail})")


def iterate_groups(url: str) -> Iterator[dict]:
    """Member groups (`__key__` plus bytes per extension) of one tar shard, in file order."""
    pipeline = wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples())
    try:
        yield from pipeline
    except Exception as error:  # tarfile, gzip, OSError, ValueError from duplicate keys, ...
        raise shard_error(url, error) from None


def check_tar_end(url: str) -> None:
    """A complete tar ends with two zero 512-byte blocks; Python's tarfile silently stops at a cut-off header,
    so without a manifest to count against, this is how a truncated local shard is told from a short one."""
    path = Path(url)
    if not path.is_file():
        return  # remote url: nothing cheap to check
    size = path.stat().st_size
    with open(path, "rb") as file:
        file.seek(max(size - 1024, 0))
        tail = file.read()
    if size < 1024 or size % 512 != 0 or tail.count(0) != len(tail):
        raise ShardError(f"data: shard '{url}' is truncated (no end-of-archive marker)")


def count_rows(group: dict) -> int:
    """Samples in a member group without decoding x: rows of `idx.npy`, or 1 for a single image."""
    if "idx.npy" in group:
        return int(load_npy(group, "idx.npy").shape[0])
    return 1


_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}  # header bytes -> (dtype, shape, fortran)


def load_npy(group: dict, extension: str) -> np.ndarray:
    """A `.npy` member as a read-only array over its bytes. The header is parsed by numpy's own reader the
    first time its exact bytes are seen and looked up afterwards: every block of a shard has one of a few
    headers, and parsing it (numpy evaluates the header's Python literal) cost more than the data's copy."""
    data = group[extension]
    version = data[6] if len(data) > 10 and data[:6] == b"\x93NUMPY" else None
    if version not in (1, 2, 3):
        return np.load(io.BytesIO(data), allow_pickle=False)  # numpy's own error for anything unexpected
    start = 10 if version == 1 else 12
    end = start + int.from_bytes(data[8:start], "little")
    header = bytes(data[:end])
    parsed = _NPY_HEADERS.get(header)
    if parsed is None:
        stream = io.BytesIO(header)
        major, minor = np.lib.format.read_magic(stream)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(stream)
        if dtype.hasobject:
            raise ValueError(f"{extension} holds Python objects, which gendist does not unpickle")
        parsed = (dtype, shape, fortran)
        if len(_NPY_HEADERS) < 4096:
            _NPY_HEADERS[header] = parsed
    dtype, shape, fortran = parsed
    array = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=end)
    return array.reshape(shape, order="F" if fortran else "C")


def decode_image(data: bytes, image_mode: str | None) -> np.ndarray:
    """Encoded image -> uint8 (1, C, H, W); converted to `image_mode` (else L for grayscale files, RGB)."""
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    mode = image_mode or ("L" if image.mode in GRAYSCALE_MODES else "RGB")
    pixels = np.asarray(image.convert(mode), dtype=np.uint8)
    if pixels.ndim == 2:
        return rearrange(pixels, "h w -> 1 1 h w")
    return rearrange(pixels, "h w c -> 1 c h w")


def sample_id(group: dict) -> int:
    """A sample's id: gendist's own `idx` member, else the webdataset `__key__` (a number as is, any other key
    as a stable 63-bit hash), so standard shards get ids that are the same in every run."""
    if "idx" in group:
        return int(group["idx"])
    key = str(group.get("__key__", ""))
    if key.isdigit():
        return int(key)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1


def sample_label(group: dict) -> np.ndarray | None:
    """The class label of a standard member group: `cls` (an integer as text), or `json` with cls/label/class."""
    if "cls" in group:
        return np.array([int(group["cls"])], dtype=np.int64)
    if "json" in group:
        meta = json.loads(group["json"])
        for key in ("cls", "label", "class"):
            if isinstance(meta, dict) and isinstance(meta.get(key), int):
                return np.array([meta[key]], dtype=np.int64)
    return None


def decode_group(group: dict, image_mode: str | None) -> Block:
    """A packed block of gendist's own shards (`x.npy`, `y.npy`, `idx.npy`) or one sample of a standard
    webdataset shard (`png`/`jpg`/`webp`/... or `npy`, with `cls`/`json` labels, id from `idx` or `__key__`)."""
    if "x.npy" in group:
        x, idx = load_npy(group, "x.npy"), load_npy(group, "idx.npy").astype(np.int64, copy=False)
        y = load_npy(group, "y.npy").astype(np.int64, copy=False) if "y.npy" in group else None
        if len(x) != len(idx) or (y is not None and len(y) != len(idx)):
            raise ValueError(f"x/y/idx lengths differ ({len(x)}, {None if y is None else len(y)}, {len(idx)})")
        return Block(x.astype(np.float32, copy=False), y, idx)
    idx = np.array([sample_id(group)], dtype=np.int64)
    for extension in IMAGE_EXTENSIONS:
        if extension in group:
            return Block(decode_image(group[extension], image_mode), sample_label(group), idx)
    if "npy" in group:  # one array per sample: (D,) points, (H, W) or (C, H, W) images; uint8 or float
        x = load_npy(group, "npy")
        if x.dtype.kind not in "biuf" or not 1 <= x.ndim <= 3:
            raise ValueError(f"npy member holds a {x.dtype} array of shape {x.shape}; expected numbers of shape "
                             "(D,), (H, W) or (C, H, W)")
        x = x[None, None] if x.ndim == 2 else x[None]  # (1, ...) with images as (1, C, H, W)
        return Block(x if x.dtype == np.uint8 else x.astype(np.float32), sample_label(group), idx)
    raise ValueError(f"member group has no sample (x.npy, npy or an image: {', '.join(IMAGE_EXTENSIONS)}); "
                     f"found {sorted(k for k in group if k[0] != '_')}")


def read_shard(task: ShardTask, image_mode: str | None, on_error: str, skipped: SkipCounter) -> Iterator[Block]:
    """Decoded blocks of one shard that `task.keep` selects; blocks not kept are never decoded.

    A shard with fewer or more groups than expected, or a block whose size differs from the manifest, is an
    error: equal batch counts across ranks rely on those counts.
    """
    seen = 0
    for position, group in enumerate(iterate_groups(task.url)):
        seen += 1
        if task.keep is not None and position not in task.keep:
            continue
        try:
            block = decode_group(group, image_mode)
            expected = task.block_sizes[position] if position < len(task.block_sizes) else None
            if expected is not None and len(block.idx) != expected:
                raise ValueError(f"{len(block.idx)} samples, manifest says {expected}")
        except Exception as error:
            message = f"data: shard '{task.url}' member '{group.get('__key__')}' is unreadable ({error})"
            if on_error == "raise":
                raise ShardError(message) from None
            log.warning("%s; skipping it", message)
            skipped.count += 1
            continue
        yield block
    if seen != len(task.block_sizes):
        raise ShardError(f"data: shard '{task.url}' holds {seen} member groups but {len(task.block_sizes)} were "
                         "expected (truncated, or not the shard the manifest describes)")


def read_blocks(tasks: list[ShardTask], image_mode: str | None, on_error: str,
                skipped: SkipCounter) -> Iterator[Block]:
    """Blocks of every task in order; under `skip` a bad shard is abandoned (its blocks so far stay used)."""
    for task in tasks:
        try:
            yield from read_shard(task, image_mode, on_error, skipped)
        except ShardError as error:
            if on_error == "raise":
                raise
            log.warning("%s; skipping the rest of it", error)
            skipped.count += 1


__all__ = ["Block", "ShardTask", "ShardError", "SkipCounter", "iterate_groups", "count_rows", "read_blocks"]
