"""BiGAN representation quality on scikit-learn's digits: a linear probe on the encoder's codes E(x).

    python benchmarks/bigan_probe.py [--run-dir DIR | --steps 3000] [--seed 0] [--features encoder|discriminator]
        [--min-accuracy 0.90] [--min-gain 0.15]

Trains `configs/bigan_digits.yaml` (unless --run-dir names a finished run), encodes all 1,797 digits with
`gendist encode` (the trained encoder) and with a randomly initialized encoder of the same architecture
(same seed), and fits scikit-learn's logistic regression on a 70/30 stratified split (features
standardized on the training part); 1-NN accuracy on the same split is reported too. Exit status 1 when the
probe is below --min-accuracy or less than --min-gain above the random encoder.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def probe(features: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler

    train_x, test_x, train_y, test_y = train_test_split(features, labels, test_size=0.3, stratify=labels,
                                                        random_state=seed)
    scaler = StandardScaler().fit(train_x)
    train_x, test_x = scaler.transform(train_x), scaler.transform(test_x)
    logistic = LogisticRegression(max_iter=5000).fit(train_x, train_y)
    nearest = KNeighborsClassifier(n_neighbors=1).fit(train_x, train_y)
    return {"logistic": float(logistic.score(test_x, test_y)), "one_nn": float(nearest.score(test_x, test_y))}


def random_encoder_codes(run_dir: Path, x: np.ndarray, seed: int) -> np.ndarray:
    """Codes of the same encoder architecture at its initialization (the run's seed)."""
    import torch

    from gendist.inference import load_run
    from gendist.recipes.base import Nets

    loaded = load_run(run_dir)
    torch.manual_seed(seed)
    networks = loaded.recipe.build_networks()
    with torch.no_grad():
        return loaded.recipe.encode(Nets(networks), torch.from_numpy(x)).numpy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--features", choices=["encoder", "discriminator"], default="encoder")
    parser.add_argument("--min-accuracy", type=float, default=0.90)
    parser.add_argument("--min-gain", type=float, default=0.15)
    parser.add_argument("--extra", nargs="*", default=[], help="more config overrides")
    args = parser.parse_args()
    from gendist.data.sources import build_digits

    digits = build_digits()
    work = Path(tempfile.mkdtemp(prefix="bigan-probe-"))
    env = dict(os.environ, WANDB_SILENT="true")
    seconds = 0.0
    run_dir = args.run_dir
    if run_dir is None:
        run_dir = work / "run"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "gendist", "train", "configs/bigan_digits.yaml", f"run.dir={run_dir}",
                        f"train.max_steps={args.steps}", f"train.seed={args.seed}", "log.wandb=false",
                        "log.progress=false", *args.extra], cwd=ROOT, env=env, check=True)
        seconds = time.perf_counter() - started
    np.savez(work / "digits.npz", x=digits.x, y=digits.y)
    subprocess.run([sys.executable, "-m", "gendist", "encode", str(run_dir), "--data", str(work / "digits.npz"),
                    "--out", str(work / "z.npy"), "--features", args.features], cwd=ROOT, env=env, check=True)
    trained = probe(np.load(work / "z.npy"), digits.y, args.seed)
    baseline = probe(random_encoder_codes(run_dir, digits.x, args.seed), digits.y, args.seed)
    pixels = probe(digits.x.reshape(len(digits.x), -1), digits.y, args.seed)
    result = {"run_dir": str(run_dir), "features": args.features, "train_seconds": round(seconds, 1),
              "trained": trained, "random_encoder": baseline, "raw_pixels": pixels,
              "gain": trained["logistic"] - baseline["logistic"]}
    print(json.dumps(result, indent=1))
    ok = trained["logistic"] >= args.min_accuracy and result["gain"] >= args.min_gain
    print("PASS" if ok else "FAIL", f"logistic {trained['logistic']:.3f} (>= {args.min_accuracy}), "
          f"gain over a random encoder {result['gain']:+.3f} (>= {args.min_gain})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
