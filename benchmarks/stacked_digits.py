"""Stacked digits (stacked-MNIST protocol on the bundled 8x8 digits): modes covered and KL(mode histogram ||
uniform) of 26,000 samples, per seed, with the noise floor of real stacked samples.

    python benchmarks/stacked_digits.py [--seeds 0 1 2] [--steps N] [--samples 26000] [--extra k=v ...]

Trains a digit classifier once (`gendist classifier train --data digits`), then per seed trains
configs/gan_stacked_digits.yaml, draws --samples samples with `gendist sample` and counts modes with
`gendist eval --real PREPARED --fake SAMPLES --features classifier:DIR --metrics modes,fd,kid`. The noise
floor is the same evaluation of --samples fresh real stacked samples. Exit status 1 unless every seed
reaches 1,000 modes and KL <= --max-kl.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _gendist import gendist  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="train.max_steps (default: the config's)")
    parser.add_argument("--samples", type=int, default=26_000)
    parser.add_argument("--max-kl", type=float, default=0.05)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--extra", nargs="*", default=[], help="more config overrides")
    args = parser.parse_args()
    from gendist.data.sources import build_stacked_digits

    work = args.work or Path(tempfile.mkdtemp(prefix="stacked-digits-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, WANDB_SILENT="true")
    classifier = work / "classifier"
    print(gendist("classifier", "train", "--data", "digits", "--out", str(classifier), env=env).strip())
    data = work / "data"
    if not (data / "manifest.json").is_file():
        gendist("data", "prepare", "--source", "stacked_digits", "--out", str(data), env=env)
    evaluate = ["--features", f"classifier:{classifier}", "--metrics", "modes,fd,kid", "--json"]
    fresh = build_stacked_digits(12345, args.samples)
    np.save(work / "real.npy", fresh.x)
    floor = json.loads(gendist("eval", "--real", str(data), "--fake", str(work / "real.npy"), *evaluate,
                               env=env).strip().splitlines()[-1])
    rows = []
    for seed in args.seeds:
        run_dir = work / f"seed{seed}"
        started = time.perf_counter()
        steps = [f"train.max_steps={args.steps}"] if args.steps else []
        gendist("train", "configs/gan_stacked_digits.yaml", f"run.dir={run_dir}", *steps, f"train.seed={seed}",
                "log.wandb=false", "log.progress=false", *args.extra, env=env)
        seconds = time.perf_counter() - started
        gendist("sample", str(run_dir), "--n", str(args.samples), "--seed", str(seed), "--out",
                str(run_dir / "samples.npy"), env=env)
        result = json.loads(gendist("eval", "--real", str(data), "--fake", str(run_dir / "samples.npy"), *evaluate,
                                    env=env).strip().splitlines()[-1])
        rows.append({"seed": seed, "train_seconds": round(seconds, 1), **{k: result[k] for k in (
            "modes_covered", "num_modes", "kl_mode_histogram", "frechet_distance", "kid")}})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"real_floor": {k: floor[k] for k in ("modes_covered", "kl_mode_histogram", "frechet_distance")},
                      "runs": rows, "work": str(work)}, indent=1))
    ok = all(row["modes_covered"] == row["num_modes"] and row["kl_mode_histogram"] <= args.max_kl for row in rows)
    print("PASS" if ok else "FAIL", f"every seed covers all modes with KL <= {args.max_kl}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
