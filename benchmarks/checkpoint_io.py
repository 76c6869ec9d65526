"""Checkpoint speed: synchronous save against a plain write + fsync of the same bytes, the stall of an
asynchronous save (and the training steps that run while it is written), resume against a fresh start.

    python benchmarks/checkpoint_io.py [--hidden 2048] [--depth 4] [--repeats 3] [--no-write]

The state is a GAN on the ring with wide MLPs (default: about 25 M parameters, 100 MB of weights and
200 MB of Adam state), trained for a few steps so that the optimizer state exists; one process, one
thread. Writes the "checkpoint-io" section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import ROOT, command_line, machine, median, publish

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


def build(run_dir: Path, hidden: int, depth: int):
    from gendist.config import load_config
    from gendist.engine.run import build_trainer

    overrides = [f"run.dir={run_dir}", f"model.hidden={hidden}", f"model.depth={depth}", "train.batch_size=64",
                 "log.wandb=false", "ckpt.keep=100"]
    trainer, _ = build_trainer(load_config(ROOT / "configs" / "gan_ring.yaml", overrides))
    for _ in range(2):
        trainer.train_step()
    return trainer


def plain_write(folder: Path, target: Path) -> float:
    """Seconds to write the checkpoint's files' bytes (read into memory first) with write + fsync each."""
    payload = {path.relative_to(folder): path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    started = time.perf_counter()
    for relative, data in payload.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return time.perf_counter() - started


def measure_saves(trainer, root: Path, repeats: int) -> dict:
    sync, plain, stall, background, steps_during = [], [], [], [], []
    size = 0
    for repeat in range(repeats):
        trainer.step += 1  # a new step folder each time
        started = time.perf_counter()
        folder = trainer.save(root / "checkpoints", {})
        sync.append(time.perf_counter() - started)
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        plain.append(plain_write(folder, root / f"plain_{repeat}"))
        shutil.rmtree(root / f"plain_{repeat}")
        trainer.step += 1
        started = time.perf_counter()
        trainer.save(root / "checkpoints", {}, asynchronous=True)
        stall.append(time.perf_counter() - started)
        steps = 0
        while trainer.saving.thread.is_alive():  # training goes on while the state is written
            trainer.train_step()
            steps += 1
        trainer.wait_for_save()
        background.append(time.perf_counter() - started)
        steps_during.append(steps)
    return {"bytes": size, "sync_s": median(sync), "plain_s": median(plain), "stall_s": median(stall),
            "background_s": median(background), "steps_during": median(steps_during),
            "runs": {"sync": sync, "plain": plain, "stall": stall}}


def timed_run(run_dir: Path, hidden: int, depth: int, max_steps: int) -> float:
    """Wall seconds of a `gendist train` process that trains to `max_steps` (resuming if it can)."""
    command = [sys.executable, "-m", "gendist", "train", "configs/gan_ring.yaml", f"run.dir={run_dir}",
               f"model.hidden={hidden}", f"model.depth={depth}", "train.batch_size=64", f"train.max_steps={max_steps}",
               "log.wandb=false", "log.progress=false", "log.sample_every=0", "ckpt.every=0", "eval.metrics=[mmd]",
               "eval.num_samples=200", "log.every=1"]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return time.perf_counter() - started


def measure_resume(root: Path, hidden: int, depth: int, repeats: int) -> dict:
    fresh, resumed = [], []
    for repeat in range(repeats):
        run_dir = root / f"resume_{repeat}"
        fresh.append(timed_run(run_dir, hidden, depth, 1))  # start, one step, final checkpoint and evaluation
        resumed.append(timed_run(run_dir, hidden, depth, 2))  # start, resume, one step, checkpoint, evaluation
        shutil.rmtree(run_dir)
    return {"fresh_s": median(fresh), "resumed_s": median(resumed), "runs": {"fresh": fresh, "resumed": resumed}}


def report(saves: dict, resume: dict, hidden: int, depth: int, repeats: int) -> str:
    mb = saves["bytes"] / 1e6
    rows = [("synchronous save (serialize, checksum, write, fsync, commit)", saves["sync_s"]),
            ("plain write + fsync of the same bytes", saves["plain_s"]),
            ("asynchronous save: training stalled for", saves["stall_s"]),
            ("asynchronous save: written and committed after", saves["background_s"])]
    lines = ["## Checkpoint save, asynchronous save and resume (issue 14)", "",
             f"Machine: {machine()}. Command: `{command_line()}`. GAN on the ring with {depth} hidden layers of "
             f"{hidden} units: {mb:.0f} MB of checkpoint ({'weights, Adam state, RNG and data position'}), one "
             f"process, one thread, medians of {repeats}.", "",
             "| what | seconds | MB/s |", "|---|---|---|"]
    lines += [f"| {name} | {seconds:.3f} | {mb / seconds:,.0f} |" for name, seconds in rows]
    lines += ["", f"- save ÷ plain write (bytes/s): **{saves['plain_s'] / saves['sync_s']:.2f}** (target ≥ 0.8)",
              f"- asynchronous stall ÷ synchronous save: **{saves['stall_s'] / saves['sync_s']:.2f}** (target ≤ 0.2); "
              f"{saves['steps_during']:.0f} training steps ran while it was written",
              f"- resume ÷ fresh start (whole `gendist train` process to one more step, final checkpoint and a "
              f"small evaluation): {resume['resumed_s']:.2f} s ÷ {resume['fresh_s']:.2f} s = "
              f"**{resume['resumed_s'] / resume['fresh_s']:.2f}** (the resumed run also verifies every checksum "
              "and loads the checkpoint, and trains the same one step)",
              "", "Runs (s): " + "; ".join(f"{k} {[round(v, 3) for v in vs]}" for k, vs in
                                           {**saves["runs"], **resume["runs"]}.items())]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=ROOT / "benchmarks") as tmp:  # the disk checkpoints go to
        root = Path(tmp)
        saves = measure_saves(build(root / "run", args.hidden, args.depth), root / "run", args.repeats)
        resume = measure_resume(root, args.hidden, args.depth, args.repeats)
    text = report(saves, resume, args.hidden, args.depth, args.repeats)
    publish("checkpoint-io", text, not args.no_write)


if __name__ == "__main__":
    main()
