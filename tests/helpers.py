"""Shared helpers for integration tests: run the real CLI in subprocesses."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(GENDIST_CACHE=str(cache), WANDB_MODE="offline", WANDB_SILENT="true", ACCELERATE_USE_CPU="true",
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def gendist_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gendist", *args]


def accelerate_command(port: int, *args: str, config: str = "launch/cpu-ddp.yaml", extra: tuple = ()) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / config),
            "--main_process_port", str(port), *extra, "-m", "gendist", *args]


def run(command: list[str], env: dict, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} exited {result.returncode}\nstdout:\n{result.stdout[-3000:]}\n"
                             f"stderr:\n{result.stderr[-5000:]}")
    return result


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc), parents first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    tree, stack = [], [pid]
    while stack:
        current = stack.pop()
        tree.append(current)
        stack.extend(children.get(current, []))
    return tree


def kill_tree(pid: int, signum: int) -> None:
    """Signal a launcher and every worker it started (launchers put workers in their own process groups)."""
    for member in process_tree(pid):
        try:
            os.kill(member, signum)
        except ProcessLookupError:
            pass
