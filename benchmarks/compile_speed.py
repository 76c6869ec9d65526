"""train.compile and train.channels_last on this CPU (inductor): GAN step time at 32x32x3, eager against compiled,
channels-last off and on, 1 process and 2 processes (DDP, gloo), side by side in one run.

Every run is a real `gendist train` process tree (accelerate launch for 2 processes), one after another,
alternating the variants within each repeat; a run's rate is its steady-state steps/s from step --warmup
to its last step (its own clock: start-up, compilation and the final evaluation are outside). Also read
from each compiled run: graphs compiled by step --warmup and graphs compiled after it (recompilations; 0
expected), and the time from start-up to step --warmup (compilation included; inductor's on-disk cache is
warm after the first compiled run of a row, as it is for a user's second run).

    python benchmarks/compile_speed.py [--rows resnet,stylegan2] [--procs 1,2] [--repeats 2] [--steps 40]

Writes the "compile-speed" section of benchmarks/RESULTS.md (--no-write: print only).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _results import command_line, machine, median, publish, steady_rate
from step_overhead import RGB32, free_port, run, write_rgb32

# row -> overrides of configs/gan_digits.yaml: the shipped architectures at 32x32x3, batch 64 per process, no EMA
BASE = [f"data.source=npz:{RGB32}", "train.batch_size=64", "train.ema_decay=0"]
ROWS = {
    "resnet": ["model.arch=resnet", *BASE],
    "stylegan2": ["model.arch=stylegan2", *BASE],
}
VARIANTS = {  # name -> overrides
    "eager": ["train.compile=false", "train.channels_last=false"],
    "compiled": ["train.compile=true", "train.channels_last=false"],
    "eager_cl": ["train.compile=false", "train.channels_last=true"],
    "compiled_cl": ["train.compile=true", "train.channels_last=true"],
}


def gendist_run(overrides: list[str], steps: int, warmup: int, procs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        args = ["-m", "gendist", "train", "configs/gan_digits.yaml", *overrides, f"run.dir={tmp}/run",
                f"train.max_steps={steps}", f"log.every={warmup}", "ckpt.every=0", "log.sample_every=0",
                "log.progress=false", "log.wandb=false", "eval.num_samples=200", "eval.metrics=[mmd]"]
        if procs > 1:
            args = ["-m", "accelerate.commands.launch", "--config_file", "launch/cpu-ddp.yaml", "--num_processes",
                    str(procs), "--main_process_port", str(free_port()), *args]
        metrics = Path(tmp, "run", "metrics.jsonl")
        run([sys.executable, *args], timeout=1800, attempts=1)
        lines = {line["step"]: line for line in map(json.loads, metrics.read_text().splitlines())
                 if "time/elapsed_s" in line}  # training lines (not the evaluation's)
        result = {"rate": steady_rate(metrics, warmup, steps), "to_warmup_s": lines[warmup]["time/elapsed_s"]}
        if "compile/graphs" in lines[warmup]:
            result["graphs"] = lines[warmup]["compile/graphs"]
            result["recompiles_after_warmup"] = lines[steps]["compile/graphs"] - lines[warmup]["compile/graphs"]
            result["graph_breaks"] = lines[steps]["compile/graph_breaks"]
        return result


def measure(rows: list[str], procs_list: list[int], repeats: int, steps: int, warmup: int,
            variants: list[str]) -> dict:
    results: dict = {}
    for procs in procs_list:
        for row in rows:
            found = results[(procs, row)] = {name: [] for name in variants}
            for repeat in range(repeats):
                for name in variants:  # alternating: drift hits every variant alike
                    found[name].append(gendist_run([*ROWS[row], *VARIANTS[name]], warmup + steps, warmup, procs))
                    print(f"{procs} proc {row} repeat {repeat} {name}: {found[name][-1]}", file=sys.stderr, flush=True)
    return results


def report(results: dict, repeats: int, steps: int, warmup: int) -> str:
    lines = ["## torch.compile and channels-last on this CPU (issue 26)", "",
             f"Machine: {machine()}. Command: `{command_line()}`. `gendist train configs/gan_digits.yaml` with "
             "model.arch=resnet|stylegan2 on 32x32x3 images (the 1,797 digits tinted, benchmarks/step_overhead.py), "
             f"batch 64 per process, no EMA, one thread per process. Steady-state steps/s from step {warmup} to "
             f"step {warmup + steps}, median of {repeats} alternating runs. Graphs: compiled by step {warmup}; "
             f"recompiles: graphs compiled after step {warmup}. Start-up s: process start to step {warmup} "
             "(compilation included; inductor's cache warm after a row's first compiled run).", "",
             "| processes | arch | eager it/s | compiled it/s | compiled ÷ eager | eager channels-last it/s | "
             "compiled channels-last it/s | channels-last ÷ eager (eager; compiled) | graphs | recompiles after "
             f"step {warmup} | graph breaks | start-up s (eager; compiled) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (procs, row), found in results.items():
        rate = {name: median([r["rate"] for r in runs]) for name, runs in found.items()}
        compiled = found.get("compiled") or found.get("compiled_cl") or [{}]
        recompiles = max(r.get("recompiles_after_warmup", 0) for name in ("compiled", "compiled_cl")
                         for r in found.get(name, []))
        start = {name: median([r["to_warmup_s"] for r in runs]) for name, runs in found.items()}

        def cell(name: str, fmt: str = ".2f") -> str:
            return format(rate[name], fmt) if name in rate else ""

        def ratio(a: str, b: str) -> str:
            return f"{rate[a] / rate[b]:.2f}" if a in rate and b in rate else ""

        lines.append(f"| {procs} | {row} | {cell('eager')} | {cell('compiled')} | {ratio('compiled', 'eager')} | "
                     f"{cell('eager_cl')} | {cell('compiled_cl')} | {ratio('eager_cl', 'eager')}; "
                     f"{ratio('compiled_cl', 'compiled')} | {compiled[0].get('graphs', '')} | {recompiles:g} | "
                     f"{compiled[0].get('graph_breaks', '')} | {start.get('eager', float('nan')):.0f}; "
                     f"{start.get('compiled', float('nan')):.0f} |")
    lines += ["", "Per-run rates (it/s): " + "; ".join(
        f"{procs}p {row} " + ", ".join(f"{name} {[round(r['rate'], 3) for r in runs]}" for name, runs in found.items())
        for (procs, row), found in results.items())]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--procs", default="1,2")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40, help="measured steps after the warm-up")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--json", help="also write the raw runs here")
    args = parser.parse_args()
    for name in args.rows.split(","):
        if name not in ROWS:
            raise SystemExit(f"--rows: unknown row '{name}' (rows: {', '.join(ROWS)})")
    variants = args.variants.split(",")
    for name in variants:
        if name not in VARIANTS:
            raise SystemExit(f"--variants: unknown variant '{name}' (variants: {', '.join(VARIANTS)})")
    write_rgb32()
    results = measure(args.rows.split(","), [int(p) for p in args.procs.split(",")], args.repeats, args.steps,
                      args.warmup, variants)
    if args.json:
        Path(args.json).write_text(json.dumps({f"{p}|{r}": v for (p, r), v in results.items()}, indent=1))
    publish("compile-speed", report(results, args.repeats, args.steps, args.warmup), not args.no_write)


if __name__ == "__main__":
    main()
