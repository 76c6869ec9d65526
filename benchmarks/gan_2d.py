"""GAN losses x 2-D benchmarks x seeds: trains each combination, evaluates 2,500 samples, prints a Markdown
table of mean ± std over seeds (modes covered, high-quality fraction, MMD² against held-out data).

    python benchmarks/gan_2d.py --losses nonsaturating hinge wgan_gp --benchmarks ring grid swissroll \
        --seeds 0 1 2 3 4 [--steps 10000] [--jobs 2] [--json out.json] [--check-modes 7.5 --check-hq 0.9]

Each run is `gendist train configs/gan_<benchmark>.yaml <the loss's overrides>` (the "r1" recipe: its own
`configs/r1_<benchmark>.yaml`) in its own process with one
thread (`--jobs` run side by side), then `gendist eval --json`. The ring has 8 modes (std 0.01), the grid 25
(std 0.05); a sample is high quality within 3 std of a mode. The swiss roll has no modes: MMD² and
precision/recall only.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Each loss is a list of overrides on top of configs/gan_<benchmark>.yaml.
LOSSES: dict[str, list[str]] = {
    "nonsaturating": ["gan.loss=nonsaturating"],
    "minimax": ["gan.loss=minimax"],
    "hinge": ["gan.loss=hinge"],
    "wgan": ["gan.loss=wgan", "gan.n_critic=5", "optim.name=rmsprop", "optim.lr=5e-5", "gan.clip_value=0.01"],
    "wgan_gp": ["gan.loss=wgan_gp", "gan.n_critic=5", "gan.gp_weight=0.1", "optim.lr=1e-4",
                "optim.betas=[0.5,0.9]"],
    "fgan_js": ["gan.loss=fgan", "gan.divergence=jensen_shannon"],
    "nonsaturating_r1": ["gan.loss=nonsaturating", "gan.r1_gamma=1.0", "gan.r1_every=4"],
    "pacgan2": ["gan.loss=nonsaturating", "gan.pack=2"],
    "unrolled5": ["gan.loss=nonsaturating", "gan.unroll_steps=5"],
    "r1": [],  # configs/r1_<benchmark>.yaml: the best recipe (non-saturating + lazy R1 + linear decay, 20k steps)
}


OWN_CONFIG = {"r1"}  # losses that ship configs/<loss>_<benchmark>.yaml; the rest share configs/gan_<benchmark>.yaml


def config_for(loss: str, benchmark: str) -> str:
    return f"configs/{loss}_{benchmark}.yaml" if loss in OWN_CONFIG else f"configs/gan_{benchmark}.yaml"


def one_run(loss: str, benchmark: str, seed: int, steps: int | None, workdir: Path, extra: list[str]) -> dict:
    run_dir = workdir / f"{loss}-{benchmark}-{seed}"
    overrides = [f"run.dir={run_dir}", f"train.seed={seed}", "log.wandb=false", "log.progress=false",
                 "log.sample_every=0", "ckpt.every=0", *LOSSES[loss], *extra]
    if steps:
        overrides.append(f"train.max_steps={steps}")
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_SILENT="true")
    command = [sys.executable, "-m", "gendist", "train", config_for(loss, benchmark), *overrides]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:]
        return {"loss": loss, "benchmark": benchmark, "seed": seed, "seconds": seconds, "failed": " ".join(tail)}
    out = subprocess.run([sys.executable, "-m", "gendist", "eval", str(run_dir), "--json"], cwd=ROOT, env=env,
                         check=True, capture_output=True, text=True).stdout
    return {"loss": loss, "benchmark": benchmark, "seed": seed, "seconds": seconds,
            **json.loads(out.strip().splitlines()[-1])}


def mean_std(values: list[float], digits: int) -> str:
    if not values:
        return "–"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


def table(results: list[dict]) -> str:
    lines = ["| loss | benchmark | seeds | modes | high quality | MMD² | precision | recall | s/run |",
             "|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["loss"], r["benchmark"]) for r in results}, key=lambda k: (k[1], list(LOSSES).index(k[0])))
    for loss, benchmark in keys:
        group = [r for r in results if r["loss"] == loss and r["benchmark"] == benchmark]
        done = [r for r in group if "failed" not in r]
        modes = [r["modes_covered"] for r in done if "modes_covered" in r]
        total = done[0].get("num_modes", "") if done else ""
        lines.append(
            f"| {loss} | {benchmark} | {len(done)}/{len(group)} | "
            f"{mean_std(modes, 1) + f' / {total}' if modes else '–'} | "
            f"{mean_std([r['hq_fraction'] for r in done if 'hq_fraction' in r], 3)} | "
            f"{mean_std([r['mmd2'] for r in done], 4)} | {mean_std([r['precision'] for r in done], 3)} | "
            f"{mean_std([r['recall'] for r in done], 3)} | {statistics.mean([r['seconds'] for r in group]):.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    parser.add_argument("--benchmarks", nargs="+", default=["ring", "grid", "swissroll"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=None, help="override train.max_steps of every config")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides for every run")
    parser.add_argument("--json", type=Path, help="also write every run's metrics here")
    parser.add_argument("--check-modes", type=float, help="exit 1 unless every (loss, benchmark) with modes "
                                                          "averages at least this many modes")
    parser.add_argument("--check-hq", type=float, help="exit 1 unless the mean high-quality fraction is at least this")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(loss, benchmark, seed) for benchmark in args.benchmarks for loss in args.losses for seed in args.seeds]
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda job: one_run(*job, args.steps, Path(tmp), args.set), jobs))
    print(table(results))
    for failed in (r for r in results if "failed" in r):
        print(f"FAILED {failed['loss']} {failed['benchmark']} seed {failed['seed']}: {failed['failed']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    ok = not any("failed" in r for r in results)
    for loss, benchmark in {(r["loss"], r["benchmark"]) for r in results}:
        group = [r for r in results if r["loss"] == loss and r["benchmark"] == benchmark and "modes_covered" in r]
        if not group:
            continue
        modes = statistics.mean(r["modes_covered"] for r in group)
        hq = statistics.mean(r["hq_fraction"] for r in group)
        if args.check_modes is not None and modes < args.check_modes:
            print(f"CHECK FAILED {loss}/{benchmark}: {modes:.2f} modes < {args.check_modes}")
            ok = False
        if args.check_hq is not None and hq < args.check_hq:
            print(f"CHECK FAILED {loss}/{benchmark}: high quality {hq:.3f} < {args.check_hq}")
            ok = False
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
