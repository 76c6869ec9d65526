"""Sharding memory: parameter + optimizer bytes held per rank under ddp, fsdp, zero1, zero2 and zero3, measured
against the textbook prediction; prints a Markdown section and writes it to benchmarks/results/sharding_memory.md.

    python benchmarks/sharding_memory.py            # gan_ring + the largest shipped network, 2 and 4 ranks
    python benchmarks/sharding_memory.py --quick    # 2 ranks only (1.3-3.6 min on 2 CPU cores)

Each measurement is a short real training run (`accelerate launch --config_file launch/cpu-<strategy>.yaml -m
gendist train CONFIG train.max_steps=4 log.every=2 ...`); the figure is the trainer's own
`memory/state_bytes_this_rank` from metrics.jsonl (parameters + fp32 master copies + optimizer state held by a
rank between steps, as rank 0 counts its own storages: the trainer logs rank 0's value; gradients and
communication buffers are not included). The largest network is found by building every configs/*.yaml
recipe with gendist's own API and counting its parameters.
`--source DIR` measures another checkout of gendist (e.g. an exported commit) with this script.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = {"ddp": "launch/cpu-ddp.yaml", "fsdp": "launch/cpu-fsdp.yaml", "zero1": "launch/cpu-deepspeed-zero1.yaml",
          "zero2": "launch/cpu-deepspeed-zero2.yaml", "zero3": "launch/cpu-deepspeed-zero3.yaml"}
STRATEGIES = ["ddp", "fsdp", "zero1", "zero2", "zero3"]
GAN_CONFIG = "configs/gan_ring.yaml"
# Few steps, no sample grids or checkpoints in between, the cheapest possible final evaluation (it always runs),
# no W&B. EMA off: ZeRO-3 refuses it, and the EMA copy is not part of the measured state anyway.
SHORT_RUN = ["log.wandb=false", "log.progress=false", "log.sample_every=0", "ckpt.every=0", "eval.every=0",
             "eval.num_samples=1", "eval.metrics=[]", "train.ema_decay=0"]

# Runs in a subprocess with the measured checkout on sys.path: every config's recipe, built by gendist itself.
COUNT_CODE = r"""
import glob, json, sys, torch
from gendist.config import load_config
from gendist.distributed import DistInfo
from gendist.engine.data_setup import resolve_data
from gendist.engine.units import build_units
from gendist.recipes import build_recipe

info = DistInfo(0, 1, 0, torch.device("cpu"))
rows = []
for path, overrides in json.loads(sys.argv[1]):
    config = load_config(path, overrides)
    spec = resolve_data(config, info)  # built-in sources are prepared once into the gendist cache
    torch.manual_seed(0)
    recipe = build_recipe(config, spec.info)
    units = build_units(recipe.build_networks(), recipe.units)
    rows.append({"config": path, "overrides": overrides, "recipe": config.model.recipe, "arch": config.model.arch,
                 "batch_size": config.train.batch_size, "pack": config.gan.pack,
                 "units": {name: sum(p.numel() for p in unit.parameters()) for name, unit in units.items()},
                 "layers": {name: sum(1 for m in unit.modules() if any(True for _ in m.parameters(recurse=False)))
                            for name, unit in units.items()},
                 "phases": [[phase.name, phase.trains] for phase in recipe.phases()]})
print("PARAMS " + json.dumps(rows))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_env(source: Path) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true", WANDB_SILENT="true",
               WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(source) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


TEARDOWN_ABORTS: list[str] = []  # commands whose training finished but a process aborted at interpreter exit
TEARDOWN_MESSAGE = "terminate called without an active exception"


def run_checked(command: list[str], source: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a command in the measured checkout; a failure ends the benchmark with its output. A run that printed
    'gendist: done.' (training, its metrics and final checkpoint are complete) and then lost a process to the
    C++ teardown abort gendist knows from DeepSpeed and eval is kept and listed in the report."""
    result = subprocess.run(command, cwd=source, env=bench_env(source), capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        output = result.stdout + result.stderr
        if "gendist: done." in output and TEARDOWN_MESSAGE in output:
            TEARDOWN_ABORTS.append(shlex.join(command))
            print(f"# WARNING: a process aborted at exit after the run finished ({TEARDOWN_MESSAGE}): "
                  f"{shlex.join(command)}", file=sys.stderr, flush=True)
            return result
        raise SystemExit(f"command failed ({result.returncode}): {shlex.join(command)}\n"
                         f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return result


def teardown_note(aborts: list[str]) -> list[str]:
    if not aborts:
        return []
    return [f"- Note: {len(aborts)} run(s) finished training (\"gendist: done.\", outputs complete and used) but then "
            f"lost a process at interpreter exit (\"{TEARDOWN_MESSAGE}\", SIGABRT): "
            + "; ".join(f"`{command}`" for command in aborts)]


def count_parameters(source: Path, items: list[tuple[str, list[str]]]) -> list[dict]:
    """Parameters of each (config, overrides) as gendist builds it: per unit, with the number of parameterized
    modules (FSDP groups / ZeRO-3 fetch units) and the recipe's phases."""
    out = run_checked([sys.executable, "-c", COUNT_CODE, json.dumps(items)], source).stdout
    line = next(line for line in out.splitlines() if line.startswith("PARAMS "))
    return json.loads(line[len("PARAMS "):])


def shipped_configs(source: Path) -> list[str]:
    return sorted(str(path.relative_to(source)) for path in (source / "configs").glob("*.yaml"))


def train_command(strategy: str, config: str, overrides: list[str], processes: int = 2,
                  script: list[str] | None = None) -> list[str]:
    """`python -m gendist train` (single) or `accelerate launch --config_file launch/cpu-<strategy>.yaml`
    (`script` replaces `-m gendist`, e.g. with a counting wrapper)."""
    target = script or ["-m", "gendist"]
    if strategy == "single":
        return [sys.executable, *target, "train", config, *overrides]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", LAUNCH[strategy],
            "--num_processes", str(processes), "--main_process_port", str(free_port()), *target, "train", config,
            *overrides]


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def machine_lines(source: Path, label: str = "") -> list[str]:
    cpu, logical = "unknown", os.cpu_count()
    try:
        text = Path("/proc/cpuinfo").read_text()
        cpu = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
        logical = sum(1 for line in text.splitlines() if line.startswith("processor"))
    except (OSError, StopIteration):
        pass
    versions = []
    for package in ("torch", "accelerate", "deepspeed"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} (not installed)")
    commit = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True)
    if commit.returncode == 0:
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--", "gendist"],
                               capture_output=True, text=True).stdout.strip()
        revision = commit.stdout.strip() + (" + uncommitted changes under gendist/" if dirty else "")
    else:
        revision = f"{source} (not a git checkout)"
    if label:
        revision += f"; {label}"
    try:
        load = "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "load average unknown"
    return [f"- Machine: {cpu}, {logical} logical CPUs (os.cpu_count() = {os.cpu_count()}), {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}; {load} when the benchmark started",
            f"- Software: {', '.join(versions)}", f"- gendist measured: {revision}"]


# -- prediction ------------------------------------------------------------------------------------------------

def predicted_bytes(strategy: str, params: int, world: int) -> float:
    """Parameters P in fp32 (4 bytes) + Adam's two fp32 moments (8 bytes), as the textbook has it."""
    if strategy in ("single", "ddp"):
        return 12 * params
    if strategy in ("zero1", "zero2"):
        return 4 * params + 8 * params / world
    return 12 * params / world  # zero3, fsdp


def explained_bytes(strategy: str, params: int, world: int) -> float:
    """The prediction plus what DeepSpeed's code adds: ZeRO-1/2 keep a separate fp32 master copy of the rank's
    partition (`single_partition_of_fp32_groups`, a clone even when the model is fp32)."""
    if strategy in ("zero1", "zero2"):
        return 4 * params + 12 * params / world
    return predicted_bytes(strategy, params, world)


def measure(strategy: str, config: str, world: int, steps: int, workdir: Path, source: Path) -> dict:
    run_dir = workdir / f"{Path(config).stem}-{strategy}-{world}"
    overrides = [f"run.dir={run_dir}", f"train.max_steps={steps}", f"log.every={max(1, steps // 2)}", *SHORT_RUN]
    command = train_command(strategy, config, overrides, world)
    started = time.perf_counter()
    run_checked(command, source)
    seconds = time.perf_counter() - started
    records = [r for r in read_metrics(run_dir) if "memory/state_bytes_this_rank" in r]
    values = [r["memory/state_bytes_this_rank"] for r in records]
    return {"strategy": strategy, "config": config, "world": world, "bytes": values[-1],
            "stable": len(set(values)) == 1, "seconds": seconds, "command": command}


def fmt_bytes(value: float) -> str:
    return f"{value:,.0f}"


def render(args, machine: list[str], models: list[dict], largest: dict, results: list[dict], seconds: float) -> str:
    mode = "quick mode" if args.quick else "full run"
    lines = [f"## Sharding memory ({mode})", ""]
    lines += machine + teardown_note(TEARDOWN_ABORTS)
    lines += [f"- Command: `{shlex.join(['python', 'benchmarks/sharding_memory.py', *sys.argv[1:]])}` "
              f"({seconds / 60:.1f} min in all)",
              "- Each row is one run: `ACCELERATE_USE_CPU=true OMP_NUM_THREADS=1 python -m accelerate.commands.launch "
              "--config_file launch/cpu-<strategy>.yaml --num_processes N -m gendist train CONFIG "
              f"run.dir=... train.max_steps={args.steps} log.every={max(1, args.steps // 2)} {' '.join(SHORT_RUN)}`; "
              "measured = the trainer's `memory/state_bytes_this_rank` (parameters, fp32 master copies and optimizer "
              "state held by a rank between steps, as rank 0 counts its own storages - the trainer logs rank 0's "
              "value, not a mean; no gradients, no communication buffers).",
              "- Prediction for P fp32 parameters and Adam on N ranks: DDP 4P + 8P = 12P; ZeRO-1 and ZeRO-2 "
              "4P + 8P/N (ZeRO-2 also partitions gradients, which exist only during backward and are not in this "
              "figure); ZeRO-3 and FSDP (4P + 8P)/N. \"Explained\" adds DeepSpeed's own fp32 master partition of "
              "ZeRO-1/2 (4P/N, see the notes).", ""]
    lines += ["Parameters of every shipped config, counted on the networks gendist builds (configs whose networks are "
              "the same size on one row):", "", "| configs | recipe / arch | parameters | per unit |",
              "|---|---|---:|---|"]
    groups: dict[tuple, list[str]] = {}
    for model in sorted(models, key=lambda m: -sum(m["units"].values())):
        key = (model["recipe"], model["arch"], tuple(model["units"].items()))
        groups.setdefault(key, []).append(Path(model["config"]).name)
    for (recipe, arch, units), names in groups.items():
        per_unit = ", ".join(f"{name} {count:,}" for name, count in units)
        lines.append(f"| {', '.join(names)} | {recipe} / {arch} | {sum(c for _, c in units):,} | {per_unit} |")
    lines += ["", f"Largest shipped network: **{largest['config']}** ({sum(largest['units'].values()):,} parameters: "
              + ", ".join(f"{n} {c:,}" for n, c in largest["units"].items()) + ").", ""]
    lines += ["| config | P | strategy | ranks | measured bytes/rank | predicted | measured ÷ predicted | "
              "explained | measured ÷ explained |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    params = {m["config"]: sum(m["units"].values()) for m in models}
    for row in results:
        p = params[row["config"]]
        pred = predicted_bytes(row["strategy"], p, row["world"])
        expl = explained_bytes(row["strategy"], p, row["world"])
        flag = "" if row["stable"] else " (changed between log steps)"
        lines.append(f"| {Path(row['config']).stem} | {p:,} | {row['strategy']} | {row['world']} | "
                     f"{fmt_bytes(row['bytes'])}{flag} | {fmt_bytes(pred)} | {row['bytes'] / pred:.3f} | "
                     f"{fmt_bytes(expl)} | {row['bytes'] / expl:.4f} |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="2 ranks only (CI-sized: 1.3-3.6 min on 2 cores, idle to loaded)")
    parser.add_argument("--worlds", type=int, nargs="+", help="ranks per run (default 2 4; --quick: 2)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per run (default 4)")
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES, choices=STRATEGIES)
    parser.add_argument("--source", type=Path, default=ROOT, help="gendist checkout to measure (default: this one)")
    parser.add_argument("--source-label", default="", help="what --source is (e.g. 'git archive of abc1234')")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sharding_memory.md")
    args = parser.parse_args()
    args.source = args.source.resolve()
    worlds = args.worlds or ([2] if args.quick else [2, 4])
    started = time.perf_counter()
    machine = machine_lines(args.source, args.source_label)
    models = count_parameters(args.source, [(config, []) for config in shipped_configs(args.source)])
    largest = max(models, key=lambda m: sum(m["units"].values()))
    configs = [GAN_CONFIG] + ([largest["config"]] if largest["config"] != GAN_CONFIG else [])
    results = []
    with tempfile.TemporaryDirectory(prefix="gendist-memory-") as tmp:
        for config in configs:
            for world in worlds:
                for strategy in args.strategies:
                    row = measure(strategy, config, world, args.steps, Path(tmp), args.source)
                    print(f"# {Path(config).stem} {strategy} x{world}: {row['bytes']:,.0f} bytes/rank "
                          f"({row['seconds']:.1f} s)", file=sys.stderr, flush=True)
                    results.append(row)
    text = render(args, machine, models, largest, results, time.perf_counter() - started)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
