"""Start-up: `gendist --help`, and `gendist train` from launch to its first logged step (W&B off).

    python benchmarks/startup.py [--repeats 5] [--no-write]

The first logged step is the first line of RUN/metrics.jsonl (log.every=1), polled every 5 ms; the data
are prepared by an untimed first run, as a user's second run finds them. Writes the "startup" section.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import ROOT, command_line, machine, median, publish


def help_seconds() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gendist", "--help"], cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - started


HAND = """
import torch
from torch import nn
generator = nn.Sequential(nn.Linear(2, 128), nn.ReLU(), nn.Linear(128, 2))
optimizer = torch.optim.Adam(generator.parameters())
generator(torch.randn(256, 2)).pow(2).mean().backward()
optimizer.step()
print(float(next(generator.parameters()).detach().sum()), flush=True)
"""
# what every torch program that builds a torch.optim optimizer pays before its first step
FLOOR = """
import torch
import torch._dynamo
print("imported", flush=True)
"""


def seconds_to_first_line(code: str) -> float:
    """From launch to the first line the script prints (not to its exit: interpreter teardown of torch takes
    about half a second more and is not start-up; gendist's rows stop at the first logged step too)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               env=dict(os.environ, OMP_NUM_THREADS="1"), text=True)
    line = process.stdout.readline()
    elapsed = time.perf_counter() - started
    process.wait()
    if not line:
        raise SystemExit(f"the reference script exited {process.returncode} before printing")
    return elapsed


def first_step_seconds(cache: Path, config: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp, "run", "metrics.jsonl")
        env = dict(os.environ, OMP_NUM_THREADS="1", GENDIST_CACHE=str(cache))
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "gendist", "train", f"configs/{config}.yaml",
                                    f"run.dir={tmp}/run", "train.max_steps=2", "log.every=1", "log.wandb=false",
                                    "log.progress=false", "log.sample_every=0", "ckpt.every=0",
                                    "eval.num_samples=200"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        while not (metrics.is_file() and metrics.stat().st_size):
            if process.poll() is not None:
                raise SystemExit(f"gendist train {config} exited {process.returncode} before logging a step")
            time.sleep(0.005)
        elapsed = time.perf_counter() - started
        process.kill()  # the rest of the run (its final evaluation) is not what is measured
        process.wait()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--configs", default="gan_ring,gan_digits,vae_digits")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    configs = args.configs.split(",")
    with tempfile.TemporaryDirectory() as cache:
        for config in configs:
            first_step_seconds(Path(cache), config)  # prepares the data
        helps = [help_seconds() for _ in range(args.repeats)]
        hand = median([seconds_to_first_line(HAND) for _ in range(args.repeats)])
        floor = median([seconds_to_first_line(FLOOR) for _ in range(args.repeats)])
        firsts = {config: median([first_step_seconds(Path(cache), config) for _ in range(args.repeats)])
                  for config in configs}
    lines = ["## Start-up (issue 14)", "", f"Machine: {machine()}. Command: `{command_line()}`. Medians of "
             f"{args.repeats}; one thread; data already prepared; W&B off.", "",
             "| what | seconds | target |", "|---|---|---|", f"| `gendist --help` | {median(helps):.3f} | < 0.3 |"]
    lines += [f"| `gendist train configs/{config}.yaml` to its first logged step | {seconds:.2f} | < 2 |"
              for config, seconds in firsts.items()]
    lines += [f"| a minimal hand-written torch loop (an MLP, Adam) to its first step | {hand:.2f} | |",
              f"| `import torch; import torch._dynamo` alone (the floor of any torch.optim program) | {floor:.2f} | |",
              "", "Of a gendist run's start, `import torch` and torch.optim's first optimizer, which imports "
              "`torch._dynamo` (every torch optimizer does, through `torch._disable_dynamo` on its methods and "
              "`torch._dynamo.graph_break()` in `step`), take the floor row; gendist adds the difference "
              "(its own imports, config, data, networks, one step and the metrics line). Every row stops at the "
              "first printed step, not at process exit."]
    text = "\n".join(lines)
    publish("startup", text, not args.no_write)


if __name__ == "__main__":
    main()
