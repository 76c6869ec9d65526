"""VAE vs IWAE on dynamically binarized digits: test NLL with K importance samples, the naive prior estimate,
effective sample sizes, active units and the amortization gap; and a categorical-latent VAE's cluster purity.

    python benchmarks/vae_likelihood.py [--ks 1 5 50] [--steps 3000] [--seed 0] [--eval-samples 5000]
                                        [--categorical-steps 3000] [--image-size 8] [--work DIR]

Each k trains configs/vae_digits.yaml with an MLP (2 x 200, latent 8, as Burda et al.'s one-layer model with
a smaller latent for 8x8 images) and vae.k=k (k = 1 is the VAE); training's own evaluation then reports
test_nll (K = --eval-samples samples from q), test_nll_prior (K samples from the prior), test_ess(_prior),
active_units and amortization_gap (300 Adam steps of per-datapoint q). The categorical run trains one
10-class latent with the learned baseline and reports cluster purity: the share of the 1,797 digits whose
cluster's majority label is their own. --image-size 28 trains on the same digits resized (bilinear) to
28 x 28, MNIST's size, written as an npz that gendist reads as a user's data (`data.source=npz:PATH`).
Exit status 1 when IWAE (largest k) does not beat the VAE by >= 1 nat.
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

MLP = ["model.arch=mlp", "model.hidden=200", "model.depth=2", "log.wandb=false", "log.progress=false",
       "log.sample_every=0", "ckpt.every=1000"]
KEYS = ("test_nll", "test_elbo", "test_ess", "test_nll_prior", "test_ess_prior", "active_units",
        "test_elbo_optimized", "amortization_gap", "approximation_gap")


def train_elbo(run_dir: Path) -> float | None:
    """The training ELBO of the last logged step (mean over its log interval)."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    values = [line["elbo/elbo"] for line in lines if "elbo/elbo" in line]
    return values[-1] if values else None


def cluster_purity(run_dir: Path, env: dict, work: Path, size: int = 8) -> float:
    """All digits: argmax of q(c|x) against the labels, each cluster scored by its majority label."""
    data = resized_digits(size, work)  # at size 8 the digits themselves (a same-size resize is exact)
    labels = np.load(data)["y"]
    gendist("encode", str(run_dir), "--data", str(data), "--out", str(work / "codes.npy"), env=env)
    clusters = np.load(work / "codes.npy").argmax(1)
    correct = sum(np.bincount(labels[clusters == c]).max() for c in np.unique(clusters))
    return float(correct / len(clusters))


def resized_digits(size: int, work: Path) -> Path:
    """scikit-learn's digits in [0, 1], resized to size x size (bilinear, as torch interpolates), as an npz."""
    import torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    path = work / f"digits{size}.npz"
    np.savez(path, x=x.numpy(), y=digits.target)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5, 50])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--categorical-steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-samples", type=int, default=5000)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--per-datapoint-steps", type=int, default=0,
                        help="also train the non-amortized model (per-datapoint q) this many steps")
    parser.add_argument("--image-size", type=int, default=8,
                        help="train on the digits resized to this size (8: the built-in 8 x 8 digits)")
    parser.add_argument("--extra", nargs="*", default=[], help="more config overrides for every run")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="vae-likelihood-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.image_size != 8:
        args.extra = [f"data.source=npz:{resized_digits(args.image_size, work)}", *args.extra]
    env = dict(os.environ, WANDB_SILENT="true")
    rows = {}
    for k in args.ks:
        run_dir = work / f"k{k}"
        started = time.perf_counter()
        gendist("train", "configs/vae_digits.yaml", f"run.dir={run_dir}", f"train.max_steps={args.steps}",
                f"train.seed={args.seed}", f"vae.k={k}", f"vae.eval_samples={args.eval_samples}",
                f"vae.prior_samples={args.eval_samples}", *MLP, *args.extra, env=env)
        metrics = json.loads((run_dir / "eval.json").read_text())
        rows[f"k={k}"] = {"seconds": round(time.perf_counter() - started, 1),
                          **{key: metrics.get(key) for key in KEYS}}
        print(json.dumps({f"k={k}": rows[f"k={k}"]}), flush=True)
    if args.per_datapoint_steps:  # the lecture's algorithm before amortization, same decoder
        run_dir = work / "per_datapoint"
        started = time.perf_counter()
        gendist("train", "configs/vae_digits.yaml", f"run.dir={run_dir}", f"train.max_steps={args.per_datapoint_steps}",
                f"train.seed={args.seed}", "vae.inference=per_datapoint", "data.split_mode=owner", "vae.gap_steps=0",
                "vae.test_steps=300", f"vae.eval_samples={args.eval_samples}", f"vae.prior_samples={args.eval_samples}",
                *MLP, *args.extra, env=env)
        metrics = json.loads((run_dir / "eval.json").read_text())
        rows["per_datapoint"] = {"seconds": round(time.perf_counter() - started, 1),
                                 **{key: metrics.get(key) for key in KEYS if key in metrics},
                                 "train_elbo_last_log": train_elbo(run_dir)}
        print(json.dumps({"per_datapoint": rows["per_datapoint"]}), flush=True)
    for name in [key for key in rows if key.startswith("k=")]:
        rows[name]["train_elbo_last_log"] = train_elbo(work / name.replace("=", ""))
    if args.categorical_steps:
        run_dir = work / "categorical"
        started = time.perf_counter()
        gendist("train", "configs/vae_digits.yaml", f"run.dir={run_dir}", f"train.max_steps={args.categorical_steps}",
                f"train.seed={args.seed}", "vae.latent=categorical", "model.latent_dim=1", "vae.categories=10",
                "vae.baseline=learned", "vae.gap_steps=0", f"vae.prior_samples={args.eval_samples}", *MLP,
                *[item for item in args.extra if not item.startswith("model.latent_dim")], env=env)
        metrics = json.loads((run_dir / "eval.json").read_text())
        rows["categorical"] = {"seconds": round(time.perf_counter() - started, 1),
                               **{key: metrics.get(key) for key in KEYS if key in metrics},
                               "cluster_purity": cluster_purity(run_dir, env, work, args.image_size)}
        print(json.dumps({"categorical": rows["categorical"]}), flush=True)
    (work / "vae_likelihood.json").write_text(json.dumps(rows, indent=1))
    largest = f"k={max(args.ks)}"
    gain = rows["k=1"]["test_nll"] - rows[largest]["test_nll"] if "k=1" in rows else float("nan")
    print(f"{'PASS' if gain >= 1 else 'FAIL'} IWAE {largest} beats the VAE by {gain:.2f} nats (>= 1)")
    return 0 if gain >= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
