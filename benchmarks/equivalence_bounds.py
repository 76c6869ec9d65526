"""Round-off floor and smallest-bug effect of every equivalence case (2 ranks x b against 1 rank x 2b).

    python benchmarks/equivalence_bounds.py [--seeds 0 1 2 3 4] [--out benchmarks/results/equivalence_bounds.json]

A bound that tells a bug from round-off sits >= 10x above the case's round-off floor and >= 10x below the
effect of the smallest bug the case exists to catch. For each case of tests/equivalence_cases.py (RECIPES,
STEPS steps, batch BATCH) and each seed this measures, against the 1-process 2b run of that seed:

- the floor: the largest relative parameter difference of runs that compute the same thing with another
  summation order: 2 ranks x b and 4 ranks x b/2 (torchrun, DDP over gloo) and 1 process x 2 micro-steps x b
  (gradient accumulation: the same rows, summed in another order). (Not 1 process x 4 micro-steps x b/2: a
  loader batch of b/2 drops other rows at the end of an epoch than one of 2b, so on a small data set such as
  the 1,617 training digits it sees other samples after the first epoch: not a round-off comparison.)
- the bugs, each as the run it is equivalent to:
  * "2x gradient" (a sum instead of a mean over 2 ranks, or a micro-step not divided): with plain SGD
    (p <- p - lr g) a 2x gradient is exactly a 2x learning rate, so the run with every learning rate doubled.
    Adam cancels a constant factor on the gradient, so Adam cases do not catch this bug (reported "-"):
    SGD cases carry it;
  * "a rank's gradients missing" (no sync: each rank steps on its own half of the batch): the 1-process run
    with batch b (one rank's share of the rows per step);
  * "clip skipped" (gan_sgd_clip only): the same run without optim.grad_clip.
The floor is the maximum over seeds and splits, the bug effects the minimum over seeds. Every run of one kind
trains in one launch (tests/run_many.py), so start-up is paid once.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from equivalence_cases import BATCH, BOUNDS, RECIPES, STEPS, final_players, relative_difference  # noqa: E402
from helpers import run_many  # noqa: E402

COMMON = [f"train.max_steps={STEPS}", "data.split_mode=global", "ckpt.every=0", "log.every=10",
          "log.sample_every=0", "log.wandb=false", "log.progress=false", "eval.every=0", "eval.num_samples=200"]


def doubled_learning_rates(args: list[str]) -> list[str] | None:
    """The overrides with every learning rate doubled, or None for a case that does not train with SGD."""
    if "optim.name=sgd" not in args:
        return None
    out = []
    for item in args:
        if item.startswith("optim.lr="):
            item = f"optim.lr={2 * float(item.split('=', 1)[1])}"
        elif item.startswith("optim.lr_overrides="):
            name, value = item.split("=", 1)[1].strip("{}").split(":")
            item = f"optim.lr_overrides={{{name.strip()}: {2 * float(value)}}}"
        out.append(item)
    return out


def variants(recipe: str, extra: list[str]) -> dict[str, tuple[list[str], int, int]]:
    """kind -> (overrides, batch per micro-step, micro-steps), for 1-process runs."""
    args = [*RECIPES[recipe], *extra]
    out = {"reference": (args, 2 * BATCH, 1), "accumulate_2": (args, BATCH, 2), "bug_half_batch": (args, BATCH, 1)}
    doubled = doubled_learning_rates(args)
    if doubled is not None:
        out["bug_2x_gradient"] = (doubled, 2 * BATCH, 1)
    if any(item.startswith("optim.grad_clip=") for item in args):
        out["bug_clip_skipped"] = ([a for a in args if not a.startswith("optim.grad_clip=")], 2 * BATCH, 1)
    return out


def train_many(cases: list[list[str]], folder: Path, launcher: list[str], env: dict) -> float:
    """Seconds to train `cases` one after another in one launch (tests/helpers.py: run_many)."""
    started = time.perf_counter()
    run_many(launcher, [{"argv": ["train", *case]} for case in cases], folder, env, timeout=7200)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--recipes", nargs="+", default=[r for r in RECIPES if r != "unrolled_hinge"])
    parser.add_argument("--extra", nargs="*", default=[], help="overrides added to every case (a trial variant)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "equivalence_bounds.json")
    args = parser.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true", ACCELERATE_USE_CPU="true",
               PYTHONUNBUFFERED="1")
    folder = Path(tempfile.mkdtemp(prefix="equivalence-bounds-"))
    single, ddp, ddp4, runs = [], [], [], {}
    for recipe in args.recipes:
        for seed in args.seeds:
            for kind, (overrides, batch, micro) in variants(recipe, args.extra).items():
                run_dir = folder / f"{recipe}-{seed}-{kind}"
                runs[recipe, seed, kind] = run_dir
                single.append([*overrides, f"run.dir={run_dir}", f"train.seed={seed}", f"train.batch_size={batch}",
                               f"train.grad_accum={micro}", *COMMON])
            run_dir = folder / f"{recipe}-{seed}-ddp_2"
            runs[recipe, seed, "ddp_2"] = run_dir
            ddp.append([*RECIPES[recipe], *args.extra, f"run.dir={run_dir}", f"train.seed={seed}", f"train.batch_size={BATCH}",
                        *COMMON])
            run_dir = folder / f"{recipe}-{seed}-ddp_4"
            runs[recipe, seed, "ddp_4"] = run_dir
            ddp4.append([*RECIPES[recipe], *args.extra, f"run.dir={run_dir}", f"train.seed={seed}",
                         f"train.batch_size={BATCH // 2}", *COMMON])
    seconds = train_many(single, folder, [sys.executable], env)
    for processes, cases in ((2, ddp), (4, ddp4)):
        seconds += train_many(cases, folder, [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                                              str(processes), "--master_addr", "127.0.0.1", "--master_port", "29533"],
                              env)
    table = {}
    for recipe in args.recipes:
        differences: dict[str, list[float]] = {}
        for seed in args.seeds:
            reference = final_players(runs[recipe, seed, "reference"])
            for kind in [k for k in ("accumulate_2", "ddp_2", "ddp_4", "bug_2x_gradient", "bug_half_batch",
                                     "bug_clip_skipped") if (recipe, seed, k) in runs]:
                differences.setdefault(kind, []).append(
                    relative_difference(reference, final_players(runs[recipe, seed, kind])))
        floor = max(max(differences[k]) for k in ("accumulate_2", "ddp_2", "ddp_4"))
        bugs = {k: min(v) for k, v in differences.items() if k.startswith("bug_")}
        bound = BOUNDS.get(recipe, float("nan"))  # a new case has none yet: see suggested_bound
        table[recipe] = {"floor": floor, "bugs": bugs, "per_seed": differences, "bound": bound,
                         "floor_margin": bound / floor if floor else float("inf"),
                         "bug_margin": min(bugs.values()) / bound,
                         "suggested_bound": (floor * min(bugs.values())) ** 0.5}
        print(f"{recipe}: floor {floor:.2e} (x{table[recipe]['floor_margin']:.0f} below {bound:g}); smallest bug "
              + ", ".join(f"{k[4:]} {v:.2e}" for k, v in bugs.items())
              + f" (x{table[recipe]['bug_margin']:.0f} above)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"seeds": args.seeds, "extra": args.extra, "steps": STEPS, "batch": BATCH,
                                    "seconds": seconds, "cases": table}, indent=1))
    print("\n| case | round-off floor (max of DDP 2 x b and 4 x b/2, 2 x b accumulated; seeds "
          f"{', '.join(map(str, args.seeds))}) | 2x gradient | a rank's gradients missing | clip skipped | "
          f"bound | floor margin | bug margin |\n|---|---|---|---|---|---|---|---|")
    for recipe, row in table.items():
        bugs = row["bugs"]
        cells = [f"{bugs[k]:.2e}" if k in bugs else "-" for k in ("bug_2x_gradient", "bug_half_batch",
                                                                    "bug_clip_skipped")]
        print(f"| {recipe} | {row['floor']:.2e} | {' | '.join(cells)} | {row['bound']:g} | {row['floor_margin']:.0f}x | "
              f"{row['bug_margin']:.0f}x |")
    print(f"equivalence_bounds: {seconds:.0f} s of runs; folder {folder}")
    bad = [r for r, row in table.items() if row["floor_margin"] < 10 or row["bug_margin"] < 10]
    if bad:
        print(f"equivalence_bounds: within 10x of the bound: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
