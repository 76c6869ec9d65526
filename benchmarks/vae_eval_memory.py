"""Peak memory of each part of a VAE's end-of-run held-out scoring, for one evaluation chunk (500 rows).

    python benchmarks/vae_eval_memory.py [--shape 3x32x32] [--rows 500] [--config configs/vae_digits.yaml]
                                         [--root DIR] [--parts importance gap_elbo gap_steps]

Builds the config's VAE for images of --shape (untrained: memory and time do not depend on the weights) and
runs, each in a fresh process so that its peak resident set is its own: `importance` (the importance-sampled
likelihood, 400 of the config's draws), `gap_elbo` (one of the amortization gap's 100-draw ELBOs) and
`gap_steps` (2 steps of the per-datapoint optimization). --root imports gendist from another checkout (e.g. a
`git worktree` of an older commit), so a change is measured before and after in one run.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("importance", "gap_elbo", "gap_steps")

CHILD = """
import json, resource, sys, time
import torch
sys.path.insert(0, {root!r})
from gendist.config import load_config
from gendist.data.info import DataInfo
from gendist.recipes.vae import VAERecipe
from gendist.recipes import vae_eval as E

config = load_config({config!r}, [])
torch.manual_seed(0)
vae = VAERecipe(config, DataInfo("images", {shape!r})).build_networks()["vae"]
x = (torch.rand({rows}, *{shape!r}) < 0.3).float()
generator = torch.Generator().manual_seed(0)
budget = config.vae.eval_budget
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
with torch.no_grad():
    if {part!r} == "importance":
        E.importance_sampled_log_likelihood(vae, x, 400, generator, budget=budget)
    elif {part!r} == "gap_elbo":
        mean, log_var = vae.encode(x)
        eps = torch.randn(E.ELBO_SAMPLES, *mean.shape, generator=generator)
        try:
            E.gaussian_elbo(vae, x, mean, log_var, eps, budget)
        except TypeError:  # a checkout from before the ELBO took a budget
            E.gaussian_elbo(vae, x, mean, log_var, eps)
    else:
        E.optimized_posteriors(vae, x, 2, config.vae.gap_lr, generator, check_every=1)
print(json.dumps(dict(peak_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                      start_gib=before / 2**20, seconds=time.perf_counter() - started)))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="3x32x32", help="C x H x W of the images, e.g. 1x28x28")
    parser.add_argument("--rows", type=int, default=500, help="held-out rows scored (evaluation's chunk: 500)")
    parser.add_argument("--config", default=str(ROOT / "configs" / "vae_digits.yaml"))
    parser.add_argument("--root", default=str(ROOT), help="the checkout whose gendist is measured")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split("x"))
    rows = {}
    for part in args.parts:
        code = CHILD.format(root=str(Path(args.root).resolve()), config=args.config, shape=shape, part=part,
                             rows=args.rows)
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if result.returncode != 0:
            print(f"vae_eval_memory: {part} failed:\n{result.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows[part] = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"{args.shape} {part}: peak {rows[part]['peak_gib']:.2f} GiB (at start {rows[part]['start_gib']:.2f}), "
              f"{rows[part]['seconds']:.1f} s", flush=True)
    print(json.dumps(dict(shape=args.shape, rows=args.rows, root=args.root, **rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
