"""Data: gendist's shard loader against raw tar reading + decoding of the same shards, and against what the
trainer consumes, for points (the ring) and images (the digits).

    python benchmarks/data_throughput.py [--repeats 3] [--no-write]

- raw: webdataset's plain tar reader (`tarfile_to_samples`) and `np.load` of every member, nothing else (no
  shuffle, no batching, no tensors): the floor any loader of these shards pays;
- loader: `gendist.data.ShardLoader` as the trainer builds it (shuffle buffer, batches of the config's
  train.batch_size, torch tensors), over whole epochs, decoding every epoch and from its memory cache;
- trainer: samples/s a real 1-process `gendist train` run consumes (steps/s x batch, data read once per step).
Writes the "data-throughput" section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import webdataset as wds

from _results import ROOT, command_line, machine, median, publish, steady_rate

CASES = {"points (ring)": ("ring", "gan_ring"), "images (digits)": ("digits", "gan_digits")}


def raw_rate(urls: list[str], passes: int) -> float:
    samples, started = 0, time.perf_counter()
    for _ in range(passes):
        for group in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()):
            samples += len(np.load(io.BytesIO(group["x.npy"])))
            np.load(io.BytesIO(group["idx.npy"]))
            if "y.npy" in group:
                np.load(io.BytesIO(group["y.npy"]))
    return samples / (time.perf_counter() - started)


def loader_rate(urls: list[str], manifest: dict, batch_size: int, passes: int, cached: bool) -> float:
    """Samples/s over `passes` epochs. cached=False: every epoch reads and decodes the tar files
    (data.memory_cache_mb=0); cached=True: the default memory cache, filled by one untimed epoch first."""
    from gendist.config import DataConfig
    from gendist.data import ShardLoader

    loader = ShardLoader(urls, manifest, batch_size=batch_size, seed=0,
                         memory_cache_bytes=DataConfig().memory_cache_mb << 20 if cached else 0)
    stream = iter(loader)
    for _ in range(loader.num_batches(0) if cached else 1):  # warm-up: one batch, or the epoch that fills the cache
        next(stream)
    batches = loader.num_batches(0) * passes - (0 if cached else 1)
    samples, started = 0, time.perf_counter()
    for _ in range(batches):
        samples += len(next(stream)["idx"])
    return samples / (time.perf_counter() - started)


def trainer_rate(config: str, steps: int = 600, every: int = 100) -> tuple[float, int]:
    """Samples/s a 1-process run consumes (steady state between its steps `every` and `steps`)."""
    from gendist.config import load_config

    batch = load_config(ROOT / "configs" / f"{config}.yaml").train.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "gendist", "train", f"configs/{config}.yaml", f"run.dir={tmp}/run",
                        f"train.max_steps={steps}", f"log.every={every}", "ckpt.every=0", "log.sample_every=0",
                        "log.progress=false", "log.wandb=false", "eval.num_samples=500"], cwd=ROOT, check=True,
                       capture_output=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        return steady_rate(Path(tmp, "run", "metrics.jsonl"), every, steps) * batch, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    from gendist.data import load_manifest, prepare_dataset

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (source, config) in CASES.items():
            folder = Path(tmp) / source
            prepare_dataset(source, folder)
            manifest = load_manifest(folder)
            urls = [str(folder / shard["name"]) for shard in manifest["splits"]["train"]["shards"]]
            count = manifest["splits"]["train"]["num_samples"]
            passes = max(1, 200_000 // count)  # at least 200k samples per measurement
            consumed, batch = trainer_rate(config)
            raw, loaded, cached = [], [], []
            for _ in range(args.repeats):  # alternating
                raw.append(raw_rate(urls, passes))
                loaded.append(loader_rate(urls, manifest, batch, passes, cached=False))
                cached.append(loader_rate(urls, manifest, batch, passes, cached=True))
            rows.append((name, count, batch, median(raw), median(loaded), median(cached), consumed))
    lines = ["## Data: loader against raw tar decoding and the trainer's consumption (issue 14)", "",
             f"Machine: {machine()}. Command: `{command_line()}`. One process, one thread; medians of "
             f"{args.repeats} alternating measurements of at least 200,000 samples each. Loader, decoding: every "
             "epoch reads and decodes the tar files (`data.memory_cache_mb=0`); loader, from memory: the default "
             "cache of decoded shards, after the epoch that fills it (what a training run of these data gets "
             "from its second epoch on; the batches are the same). Trainer: a 1-process `gendist train` of the "
             "config named, steady state.", "",
             "| data | train samples | batch | raw tar + np.load samples/s | loader, decoding | loader, from "
             "memory | trainer consumes samples/s | decoding ÷ raw | from memory ÷ raw | decoding ÷ trainer |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, count, batch, raw, loaded, cached, consumed in rows:
        lines.append(f"| {name} | {count:,} | {batch} | {raw:,.0f} | {loaded:,.0f} | {cached:,.0f} | "
                     f"{consumed:,.0f} | {loaded / raw:.2f} | {cached / raw:.2f} | {loaded / consumed:.1f} |")
    text = "\n".join(lines)
    publish("data-throughput", text, not args.no_write)


if __name__ == "__main__":
    main()
