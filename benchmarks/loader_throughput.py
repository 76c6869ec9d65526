"""Read throughput of the shard loader: packed blocks (gendist's format) vs one sample per tar member.

    python benchmarks/loader_throughput.py [--samples 100000] [--batch-size 256]
"""
from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import webdataset as wds

from gendist.data import load_manifest, measure_throughput, prepare_dataset


def unpacked_throughput(folder: Path, count: int) -> tuple[float, int]:
    """The naive layout for comparison: one 2-D point per tar member, read with plain webdataset."""
    points = np.random.default_rng(0).normal(size=(count, 2)).astype(np.float32)
    path = folder / "unpacked.tar"
    with wds.TarWriter(str(path)) as sink:
        for index, point in enumerate(points):
            buffer = io.BytesIO()
            np.save(buffer, point)
            sink.write({"__key__": f"s{index:09d}", "x.npy": buffer.getvalue()})
    started = time.perf_counter()
    seen = sum(1 for _ in wds.WebDataset(str(path), shardshuffle=False).decode())
    return seen / (time.perf_counter() - started), path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000, help="samples for the unpacked comparison")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prepare_dataset("ring", folder / "ring")
        manifest = load_manifest(folder / "ring")
        urls = [str(folder / "ring" / s["name"]) for s in manifest["splits"]["train"]["shards"]]
        packed_bytes = sum(s["bytes"] for s in manifest["splits"]["train"]["shards"])
        packed = measure_throughput(urls, manifest, args.batch_size)
        naive, naive_bytes = unpacked_throughput(folder, args.samples)
        count = manifest["splits"]["train"]["num_samples"]
        print(f"packed blocks:   {packed:,.0f} samples/s, {packed_bytes / count:.1f} bytes/sample on disk")
        print(f"one per member:  {naive:,.0f} samples/s, {naive_bytes / args.samples:.1f} bytes/sample on disk")


if __name__ == "__main__":
    main()
