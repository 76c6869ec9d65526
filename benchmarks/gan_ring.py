"""Mode coverage of a 2-D GAN config (default gan_ring) under strategies and precisions: trains, evaluates and prints a Markdown table.

    python benchmarks/gan_ring.py --runs single:fp32:0 single:fp32:1 ddp:bf16:0 zero2:fp16:0 [--steps 3000]

Each run is `gendist train configs/gan_ring.yaml` (under `accelerate launch` for ddp/fsdp/zeroN) followed by
`gendist eval --json` (2,500 samples). Wall-clock time includes process start-up.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = {"ddp": "launch/cpu-ddp.yaml", "fsdp": "launch/cpu-fsdp.yaml", "zero1": "launch/cpu-deepspeed-zero1.yaml",
          "zero2": "launch/cpu-deepspeed-zero2.yaml", "zero3": "launch/cpu-deepspeed-zero3.yaml"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_command(strategy: str, config: str, overrides: list[str]) -> list[str]:
    if strategy == "single":
        return [sys.executable, "-m", "gendist", "train", config, *overrides]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", LAUNCH[strategy],
            "--main_process_port", str(free_port()), "-m", "gendist", "train", config, *overrides]


def one_run(spec: str, steps: int, workdir: Path, config: str) -> dict:
    strategy, precision, seed = spec.split(":")
    run_dir = workdir / spec.replace(":", "-")
    overrides = [f"run.dir={run_dir}", f"train.max_steps={steps}", f"train.seed={seed}", f"precision={precision}",
                 "log.wandb=false", "log.progress=false", "log.sample_every=0", "ckpt.every=0"]
    env = dict(os.environ, ACCELERATE_USE_CPU="true", WANDB_SILENT="true")
    started = time.perf_counter()
    subprocess.run(train_command(strategy, config, overrides), cwd=ROOT, env=env, check=True, capture_output=True)
    seconds = time.perf_counter() - started
    out = subprocess.run([sys.executable, "-m", "gendist", "eval", str(run_dir), "--json"], cwd=ROOT, env=env,
                         check=True, capture_output=True, text=True).stdout
    metrics = json.loads(out.strip().splitlines()[-1])
    nonfinite = 0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        nonfinite = max(nonfinite, int(sum(v for k, v in record.items() if k.endswith("/nonfinite"))))
    return {"run": spec, "seconds": seconds, "nonfinite_steps": nonfinite, **metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="strategy:precision:seed")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--config", default="configs/gan_ring.yaml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [one_run(spec, args.steps, Path(tmp), args.config) for spec in args.runs]
    print("| run (strategy:precision:seed) | steps | modes | high quality | MMD² | non-finite steps | time (s) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['run']} | {args.steps} | {row['modes_covered']}/{row['num_modes']} | "
              f"{row['hq_fraction']:.3f} | {row['mmd2']:.4f} | {row['nonfinite_steps']} | {row['seconds']:.1f} |")


if __name__ == "__main__":
    main()
