"""Architectures compared at one step budget: the digits GAN with each image architecture, in the features of a
digit classifier.

    python benchmarks/arch_quality.py [--archs conv resnet] [--seeds 0 1 2] [--steps 1500] [--samples 2000]

Trains a digit classifier once (`gendist classifier train --data digits`), then for each architecture and
seed trains configs/gan_digits.yaml with `model.arch=ARCH` (everything else as shipped: non-saturating loss,
Adam 2e-4, batch 128, EMA 0.999, hidden 32; resnet with spectral norm on the discriminator, its default) for
--steps steps, draws --samples samples (EMA weights) and compares them with all 1,797 real digits by
`gendist eval --real --fake --features classifier:DIR --metrics fd,kid,modes`. Prints a table and a json line.
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

KEYS = ("frechet_distance", "kid", "modes_covered", "kl_mode_histogram")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["conv", "resnet"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    from gendist.data import load_source

    work = args.work or Path(tempfile.mkdtemp(prefix="arch-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, WANDB_SILENT="true")
    classifier = work / "classifier"
    print(gendist("classifier", "train", "--data", "digits", "--out", str(classifier), env=env).strip(), flush=True)
    np.save(work / "digits.npy", load_source("digits").x)
    evaluate = ["--features", f"classifier:{classifier}", "--metrics", "fd,kid,modes", "--json"]
    rows: dict[str, list[dict]] = {arch: [] for arch in args.archs}
    for seed in args.seeds:
        for arch in args.archs:
            run_dir = work / f"{arch}-{seed}"
            started = time.perf_counter()
            gendist("train", "configs/gan_digits.yaml", f"run.dir={run_dir}", f"model.arch={arch}",
                    f"train.seed={seed}", f"train.max_steps={args.steps}", "ckpt.every=0", "log.sample_every=0",
                    "log.wandb=false", "log.progress=false", env=env)
            seconds = time.perf_counter() - started
            gendist("sample", str(run_dir), "--n", str(args.samples), "--seed", str(seed), "--out",
                    str(run_dir / "samples.npy"), env=env)
            row = json.loads(gendist("eval", "--real", str(work / "digits.npy"), "--fake", str(run_dir / "samples.npy"),
                                     *evaluate, env=env).splitlines()[-1])
            rows[arch].append({"seed": seed, "train_s": round(seconds, 1), **{k: row[k] for k in KEYS}})
            print(arch, json.dumps(rows[arch][-1]), flush=True)
    print("| architecture | seed | " + " | ".join(KEYS) + " | train s |")
    print("|---" * (len(KEYS) + 3) + "|")
    for arch, results in rows.items():
        for row in results:
            cells = [f"{row[k]:.4g}" if isinstance(row[k], float) else str(row[k]) for k in KEYS]
            print(f"| {arch} | {row['seed']} | " + " | ".join(cells) + f" | {row['train_s']} |")
    print(json.dumps({"work": str(work), "steps": args.steps, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
