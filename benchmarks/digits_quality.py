"""Sample quality of the digits GAN, VAE and BiGAN in the features of a digit classifier.

    python benchmarks/digits_quality.py [--families gan vae bigan] [--samples 10000] [--seed 0] [--work DIR]

Trains a digit classifier (`gendist classifier train --data digits`, held-out accuracy printed), then for
each family trains its shipped config (configs/<family>_digits.yaml, its own step count), draws --samples
samples with `gendist sample` and compares them with all 1,797 real digits by `gendist eval --real --fake
--features classifier:DIR --metrics fd,kid,pr,mmd,modes`: Fréchet distance and KID in classifier
features, precision/recall, and the class histogram of the samples (modes_covered of 10, KL to uniform).
The same evaluation of the real digits' own held-out split against all of them gives the floor.
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
KEYS = ("modes_covered", "num_modes", "kl_mode_histogram", "frechet_distance", "kid", "precision", "recall", "mmd2")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["gan", "vae", "bigan"])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    from gendist.data import load_source

    work = args.work or Path(tempfile.mkdtemp(prefix="digits-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, WANDB_SILENT="true")
    classifier = work / "classifier"
    print(gendist("classifier", "train", "--data", "digits", "--out", str(classifier), env=env).strip(), flush=True)
    digits = load_source("digits")
    np.save(work / "digits.npy", digits.x)
    np.save(work / "digits_half.npy", digits.x[1::2])
    evaluate = ["--features", f"classifier:{classifier}", "--metrics", "fd,kid,pr,mmd,modes", "--json"]
    rows = {"real (odd half vs all)": json.loads(gendist("eval", "--real", str(work / "digits.npy"), "--fake",
                                                         str(work / "digits_half.npy"), *evaluate, env=env).splitlines()[-1])}
    times = {}
    for family in args.families:
        run_dir = work / family
        started = time.perf_counter()
        gendist("train", f"configs/{family}_digits.yaml", f"run.dir={run_dir}", f"train.seed={args.seed}",
                "log.wandb=false", "log.progress=false", env=env)
        times[family] = round(time.perf_counter() - started, 1)
        gendist("sample", str(run_dir), "--n", str(args.samples), "--seed", str(args.seed), "--out",
                str(run_dir / "samples.npy"), env=env)
        rows[family] = json.loads(gendist("eval", "--real", str(work / "digits.npy"), "--fake",
                                          str(run_dir / "samples.npy"), *evaluate, env=env).splitlines()[-1])
        print(family, json.dumps({k: rows[family][k] for k in KEYS}), flush=True)
    print("| samples | " + " | ".join(KEYS) + " | train s |")
    print("|---" * (len(KEYS) + 2) + "|")
    for name, row in rows.items():
        cells = [f"{row[k]:.4g}" if isinstance(row[k], float) else str(row[k]) for k in KEYS]
        print(f"| {name} | " + " | ".join(cells) + f" | {times.get(name, '')} |")
    print(json.dumps({"work": str(work), "times": times}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
