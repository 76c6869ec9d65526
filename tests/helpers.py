"""Shared helpers for integration tests: run the real CLI in subprocesses."""
from __future__ import annotations

import json
import os
import socket
import signal
import subprocess
import sys
import time
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


def accelerate_launcher(port: int, config: str = "launch/cpu-ddp.yaml", extra: tuple = ()) -> list[str]:
    """`accelerate launch` with `config`, up to the program to launch."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / config),
            "--main_process_port", str(port), *extra]


def accelerate_command(port: int, *args: str, config: str = "launch/cpu-ddp.yaml", extra: tuple = ()) -> list[str]:
    return [*accelerate_launcher(port, config, extra), "-m", "gendist", *args]


def run_many(launcher: list[str], commands: list[dict], folder: Path, env: dict,
             timeout: float = 1200) -> subprocess.CompletedProcess:
    """Run `commands` ({"argv": gendist arguments, "stdout": file or None}) one after another in one launch of
    `launcher` (tests/run_many.py): one start-up for all of them."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"commands-{len(list(folder.glob('commands-*.json')))}.json"
    path.write_text(json.dumps(commands))
    return run([*launcher, str(ROOT / "tests" / "run_many.py"), str(path)], env, timeout=timeout)


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


def read_wandb_records(path: Path) -> list:
    """Records of an offline W&B run file. wandb >= 0.2x ships no Python reader for its (LevelDB-log style)
    format, so this small one follows it: 7-byte header, 32 KiB blocks, each record chunk = crc32 (4),
    length (2, little endian), type (1: full, 2: first, 3: middle, 4: last), payload."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pending, offset, block = [], b"", 7, 32768
    while offset + 7 <= len(data):
        if block - offset % block < 7:  # block trailer too small for a chunk header: skip to next block
            offset += block - offset % block
            continue
        length = int.from_bytes(data[offset + 4:offset + 6], "little")
        kind = data[offset + 6]
        payload = data[offset + 7:offset + 7 + length]
        offset += 7 + length
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def latest_step(run_dir) -> int | None:
    latest = run_dir / "checkpoints" / "latest"
    return int(latest.read_text().split("_")[1]) if latest.is_file() else None


def wait_for_step(run_dir, process, step, timeout=120, poll=0.05):
    deadline = time.time() + timeout
    metrics = run_dir / "metrics.jsonl"
    while time.time() < deadline:
        if last_logged_step(metrics) >= step:
            return
        assert process.poll() is None, "the run ended early"
        time.sleep(poll)
    raise AssertionError(f"step {step} not reached")


def last_logged_step(metrics: Path) -> int:
    """Step of the newest complete line; the line being written may be torn, so it is skipped."""
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    for line in reversed(lines):
        try:
            return int(json.loads(line).get("step", 0))
        except ValueError:
            continue
    return 0


def launch_and_kill_at_step(command, env, run_dir, target_step, log_path) -> None:
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            wait_for_step(run_dir, process, target_step, poll=0.01)
        finally:
            kill_tree(process.pid, signal.SIGKILL)
            process.wait()
