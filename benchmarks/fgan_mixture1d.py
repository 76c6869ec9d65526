"""f-GAN fitting one Gaussian to a 1-D two-component mixture (Nowozin et al. 2016, section 4), checked
against the exact optimum argmin D_f(P || N(mu, sigma^2)) computed by quadrature.

    python benchmarks/fgan_mixture1d.py [--divergences kl reverse_kl jensen_shannon jeffrey pearson]
        [--inits -2:1 0:1 2:1] [--steps N] [--tolerance 0.05] [--plot benchmarks/figures/fgan_mixture1d.png]
        [--pi 0.3]

`--divergences jensen_shannon_weighted` (not in the default list) trains with weight `--pi` (passed to every
run as `gan.pi=`, and used for its quadrature optimum); 0.3, its config's value, by default.

For each divergence, `gendist train configs/fgan_<divergence>_mixture1d.yaml` runs once per initial
Gaussian in `--inits` (mean:std). The objective is not convex in (mu, sigma) (reverse KL has a local optimum
on each component and one between them), so, as with any non-convex fit, the run kept is the one whose
critic reports the smallest divergence at the end (the mean of its last five `divergence_bound` logs): a
choice made from training outputs only, never from the quadrature answer. Then: |mu - mu*| and
|sigma - sigma*| against the quadrature optimum, and a table of every fitted model scored on every
divergence (each model should score best on the divergence it was trained with). Exit status 1 when a
check fails.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gendist.data.sources import MIXTURE_1D  # noqa: E402
from gendist.divergences import get_divergence  # noqa: E402
from gendist.errors import UserError  # noqa: E402
from gendist.metrics.quadrature import (best_gaussian, f_divergence, gaussian_log_density,  # noqa: E402
                                        mixture_log_density)

DIVERGENCES = ["kl", "reverse_kl", "jensen_shannon", "jeffrey", "pearson"]
CHOICES = [*DIVERGENCES, "jensen_shannon_weighted"]
PI = 0.3  # configs/fgan_jensen_shannon_weighted_mixture1d.yaml's gan.pi


def divergence_overrides(divergence: str, pi: float) -> list[str]:
    """Command-line overrides of the divergence's parameters (the config file sets the divergence itself)."""
    return [f"gan.pi={pi!r}"] if divergence == "jensen_shannon_weighted" else []


def label(divergence: str, pi: float) -> str:
    return f"{divergence} (pi={pi:g})" if divergence == "jensen_shannon_weighted" else divergence


def train(divergence: str, init: tuple[float, float], steps: int | None, workdir: Path, pi: float = PI) -> dict:
    run_dir = workdir / f"{divergence}_{init[0]}_{init[1]}"
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_SILENT="true")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gendist", "train", f"configs/fgan_{divergence}_mixture1d.yaml",
                    f"run.dir={run_dir}", f"model.gaussian_init=[{init[0]},{init[1]}]", "log.wandb=false",
                    "log.progress=false", "log.sample_every=0", "ckpt.every=0",
                    *divergence_overrides(divergence, pi), *([f"train.max_steps={steps}"] if steps else [])],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    seconds = time.perf_counter() - started
    final = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    generator = load_file(final / "players" / "generator.safetensors")
    bounds = [json.loads(line).get("discriminator/divergence_bound")
              for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    bounds = [b for b in bounds if b is not None]
    return {"divergence": divergence, "init": init, "seconds": seconds, "mean": float(generator["mu"][0]),
            "std": float(generator["log_sigma"].exp()[0]), "final_bound": float(np.mean(bounds[-5:]))}


def plot(path: Path, log_p, fits: dict[str, dict], optima: dict[str, dict], pi: float = PI) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.linspace(-6, 7, 1000)
    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=110)
    axes.fill_between(x, np.exp(log_p(x)), color="#cccccc", label="data: mixture P")
    for index, (name, fit) in enumerate(fits.items()):
        color = f"C{index}"
        axes.plot(x, np.exp(gaussian_log_density(fit["mean"], fit["std"])(x)), color=color,
                  label=f"{label(name, pi)}: f-GAN fit N({fit['mean']:.2f}, {fit['std']:.2f}²)")
        axes.plot(x, np.exp(gaussian_log_density(optima[name]["mean"], optima[name]["std"])(x)), color=color,
                  linestyle=":", linewidth=1)
    axes.set_title("Single Gaussian fitted to a mixture by f-GAN (solid) vs the quadrature optimum (dotted)")
    axes.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--divergences", nargs="+", default=DIVERGENCES, choices=CHOICES)
    parser.add_argument("--pi", type=float, default=PI, help="jensen_shannon_weighted's weight, in (0, 1)")
    parser.add_argument("--inits", nargs="+", default=["-2:1", "0:1", "2:1"], help="initial mean:std")
    parser.add_argument("--steps", type=int, default=None, help="override the configs' train.max_steps")
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    try:
        get_divergence("jensen_shannon_weighted", pi=args.pi)
    except UserError as error:
        parser.error(f"--pi: {error}")

    def divergence(name: str):
        return get_divergence(name, pi=args.pi)

    inits = [tuple(float(v) for v in text.split(":")) for text in args.inits]
    log_p = mixture_log_density(**MIXTURE_1D)

    starts = [*inits, *zip(MIXTURE_1D["means"], MIXTURE_1D["stds"])]
    optima = {name: best_gaussian(divergence(name), log_p, starts) for name in args.divergences}
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(name, init) for name in args.divergences for init in inits]
        with ThreadPoolExecutor(args.jobs) as pool:
            runs = list(pool.map(lambda job: train(*job, args.steps, Path(tmp), args.pi), jobs))
    fits = {name: min((r for r in runs if r["divergence"] == name), key=lambda r: r["final_bound"])
            for name in args.divergences}

    ok = True
    print(f"mixture P: {MIXTURE_1D}; inits {args.inits}; steps: {args.steps or 'from each config'}\n")
    print("| divergence | f-GAN fit (mu, sigma) | optimum by quadrature (mu*, sigma*) | abs(mu-mu*) | abs(sigma-sigma*) "
          "| D_f at fit | D_f at optimum | chosen init | runs (init: mu, sigma, final bound) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.divergences:
        fit, best = fits[name], optima[name]
        d_mean, d_std = abs(fit["mean"] - best["mean"]), abs(fit["std"] - best["std"])
        at_fit = f_divergence(divergence(name), log_p, gaussian_log_density(fit["mean"], fit["std"]))
        ok &= d_mean <= args.tolerance and d_std <= args.tolerance
        others = "; ".join(f"{r['init'][0]:g}:{r['init'][1]:g} → {r['mean']:.2f}, {r['std']:.2f}, {r['final_bound']:.3f}"
                           for r in runs if r["divergence"] == name)
        print(f"| {label(name, args.pi)} | {fit['mean']:.3f}, {fit['std']:.3f} | "
              f"{best['mean']:.3f}, {best['std']:.3f} | "
              f"{d_mean:.3f} | {d_std:.3f} | {at_fit:.4f} | {best['divergence']:.4f} | "
              f"{fit['init'][0]:g}:{fit['init'][1]:g} | {others} |")

    if len(args.divergences) > 1:
        print("\nEach fitted model (row) scored by quadrature on each divergence (column); * = column minimum\n")
        print("| fitted with \\ scored on | " + " | ".join(label(n, args.pi) for n in args.divergences) + " |")
        print("|---" * (len(args.divergences) + 1) + "|")
        scores = {row: {col: f_divergence(divergence(col), log_p,
                                          gaussian_log_density(fits[row]["mean"], fits[row]["std"]))
                        for col in args.divergences} for row in args.divergences}
        for row in args.divergences:
            cells = []
            for col in args.divergences:
                best_row = min(args.divergences, key=lambda r: scores[r][col])
                cells.append(f"{scores[row][col]:.4g}{' *' if best_row == row else ''}")
            print(f"| {label(row, args.pi)} | " + " | ".join(cells) + " |")
        for col in args.divergences:
            best_row = min(args.divergences, key=lambda r: scores[r][col])
            if best_row != col:
                print(f"CHECK FAILED: on {col}, the model fitted with {best_row} scores better than the {col} fit")
                ok = False
    print(f"\ntraining time per run: {np.mean([r['seconds'] for r in runs]):.1f} s (mean of {len(runs)})")
    if args.plot:
        plot(args.plot, log_p, fits, optima, args.pi)
        print(f"plot: {args.plot}")
    print("all checks passed" if ok else "CHECKS FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
