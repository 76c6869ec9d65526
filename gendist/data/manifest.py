"""Finding shards and knowing their contents: `load_manifest`, `resolve_shards`, and per-block sample counts
(from the manifest, or from one scan of the shards when there is none)."""
from __future__ import annotations

import glob
import json
import logging
from pathlib import Path

from webdataset.shardlists import expand_urls

from gendist.data.reading import ShardError, check_tar_end, count_rows, iterate_groups
from gendist.errors import UserError

MANIFEST_FORMAT = "gendist-shards/1"
REQUIRED_KEYS = ("format", "kind", "sample_shape", "block_size", "splits")
log = logging.getLogger(__name__)


def load_manifest(directory: Path | str) -> dict:
    """Read `DIR/manifest.json` (or the given manifest file) written by `gendist data prepare`."""
    path = Path(directory)
    path = path if path.suffix == ".json" else path / "manifest.json"
    if not path.is_file():
        raise UserError(f"data.dir: no manifest at '{path}' — run `gendist data prepare --out {path.parent}` "
                        "or fix the path")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"data.dir: '{path}' is not valid JSON ({error}) — re-run `gendist data prepare`") from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(manifest, dict) or key not in manifest]
    if missing or manifest.get("format") != MANIFEST_FORMAT:
        raise UserError(f"data.dir: '{path}' is not a {MANIFEST_FORMAT} manifest (missing {missing or 'format'}) "
                        "— re-run `gendist data prepare`")
    return manifest


def resolve_shards(spec: str) -> list[str]:
    """Shard paths from a prepared folder (its train split), a glob (`data/*.tar`) or a brace pattern
    (`data/train-{000000..000003}.tar`); sorted, and every one must exist."""
    path = Path(spec).expanduser()
    if path.is_dir():
        manifest = load_manifest(path)
        paths = [str(path / shard["name"]) for shard in manifest["splits"]["train"]["shards"]]
    elif any(char in spec for char in "*?["):
        paths = glob.glob(str(path))
    else:
        paths = [str(Path(url).expanduser()) for url in expand_urls(spec)]  # braces, or one plain path
        missing = [p for p in paths if not Path(p).is_file()]
        if missing and len(missing) < len(paths):
            raise UserError(f"data.shards: shard '{missing[0]}' named by '{spec}' does not exist — fix the pattern")
        paths = [p for p in paths if Path(p).is_file()]
    paths = sorted(p for p in paths if Path(p).is_file())
    if not paths:
        raise UserError(f"data.shards: no shard matches '{spec}' — run `gendist data prepare` or fix the path")
    return paths


def block_sizes_from_entry(entry: dict, block_size: int) -> list[int]:
    """Every block of a shard holds `block_size` samples except the shard's last one."""
    num_samples, num_blocks = int(entry["num_samples"]), int(entry["num_blocks"])
    if num_blocks == 0:
        return []
    return [block_size] * (num_blocks - 1) + [num_samples - block_size * (num_blocks - 1)]


def manifest_block_sizes(manifest: dict) -> dict[str, list[int]]:
    """Shard file name -> samples per block, for every shard the manifest lists."""
    block_size = int(manifest["block_size"])
    return {entry["name"]: block_sizes_from_entry(entry, block_size)
            for split in manifest["splits"].values() for entry in split["shards"]}


def scan_block_sizes(url: str) -> list[int]:
    """Samples per block of a shard that no manifest describes: one read of the tar (idx arrays only)."""
    check_tar_end(url)
    return [count_rows(group) for group in iterate_groups(url)]


def shard_block_sizes(urls: list[str], manifest: dict | None, on_error: str) -> tuple[list[list[int]], int]:
    """Samples per block for each url (manifest entry by file name, else a scan) and the number of shards
    dropped as unreadable (`on_error="skip"`: such a shard gets no blocks)."""
    known = manifest_block_sizes(manifest) if manifest is not None else {}
    sizes, skipped = [], 0
    for url in urls:
        name = Path(url).name
        if name in known:
            sizes.append(known[name])
            continue
        try:
            sizes.append(scan_block_sizes(url))
        except ShardError as error:
            if on_error == "raise":
                raise UserError(error.user_message()) from None
            log.warning("%s; skipping it", error)
            sizes.append([])
            skipped += 1
    return sizes, skipped


__all__ = ["load_manifest", "resolve_shards", "shard_block_sizes", "block_sizes_from_entry"]
