"""Fault tolerance: corrupted and half-written checkpoints, NaN steps, exact resume after SIGKILL,
preemption signals through the launcher, a dead rank, malformed input."""
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gendist.checkpoint import CheckpointWriter, find_resumable, save_torch
from helpers import ROOT, accelerate_command, free_port, gendist_command, kill_tree, make_env, process_tree, \
    read_metrics, run

QUIET = ["log.wandb=false", "log.progress=false", "log.sample_every=0", "eval.num_samples=200"]


# -- checkpoint validation ---------------------------------------------------------------------------------
def write_checkpoint(root: Path, step: int) -> Path:
    writer = CheckpointWriter(root, step)
    folder = writer.begin()
    save_torch(folder / "optim.pt", {"w": __import__("torch").randn(512, 64)})
    (folder / "players").mkdir()
    (folder / "players" / "g.safetensors").write_bytes(os.urandom(4096))
    return writer.commit({"step": step}, keep=5)


def test_bit_flips_and_truncations_are_always_detected(tmp_path, capsys):
    root = tmp_path / "checkpoints"
    older, newest = write_checkpoint(root, 10), write_checkpoint(root, 20)
    rng = random.Random(0)
    files = [p for p in newest.rglob("*") if p.is_file() and p.name != "manifest.json"]
    for trial in range(60):
        path = rng.choice(files)
        original = path.read_bytes()
        if trial % 2:
            position = rng.randrange(len(original))
            damaged = bytearray(original)
            damaged[position] ^= 1 << rng.randrange(8)
            path.write_bytes(bytes(damaged))
        else:
            path.write_bytes(original[:rng.randrange(len(original))])
        assert find_resumable(root) == older, f"trial {trial}: damage in {path.name} went unnoticed"
        path.write_bytes(original)
        assert find_resumable(root) == newest
    assert "skipping checkpoint step_00000020" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("point", ["files_written", "manifest_written", "renamed"])
def test_kill_during_checkpoint_write_resumes_from_previous_good(point, tmp_path):
    env = make_env(tmp_path / "cache")
    run_dir = tmp_path / "run"
    args = gendist_command("train", "configs/gan_ring.yaml", f"run.dir={run_dir}", "train.max_steps=60",
                           "ckpt.every=20", "log.every=10", *QUIET)
    killed = run(args, dict(env, GENDIST_FAULT_SAVE=f"{point}@40"), check=False)
    assert killed.returncode == -signal.SIGKILL
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000020"
    resumed = run(args, env)
    assert "resumed from" in resumed.stdout and "(step 20)" in resumed.stdout
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000060"


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["single", "zero2"])
def test_injected_nan_steps_are_skipped_and_counted(launcher, tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", "configs/gan_ring.yaml", f"run.dir={run_dir}", "train.max_steps=40",
            "train.inject_nan_steps=[5, 6, 7]", "log.every=10", *QUIET]
    command = gendist_command(*args) if launcher == "single" else accelerate_command(
        free_port(), *args, config="launch/cpu-deepspeed-zero2.yaml")
    run(command, make_env(tmp_path / "cache"))
    last = [m for m in read_metrics(run_dir) if "discriminator/loss" in m][-1]
    assert last["skipped/discriminator/nonfinite"] == 3.0
    assert isinstance(last["discriminator/loss"], float) and last["step"] == 40


@pytest.mark.slow
def test_too_many_bad_steps_stop_with_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    result = run(gendist_command("train", "configs/gan_ring.yaml", f"run.dir={run_dir}", "train.max_steps=40",
                                 "train.inject_nan_steps=[3, 4, 5, 6]", "train.max_bad_steps=2", *QUIET),
                 make_env(tmp_path / "cache"), check=False)
    assert result.returncode == 3, result.stderr
    assert "non-finite steps in a row" in result.stdout
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000005"


# -- exact resume ------------------------------------------------------------------------------------------
def losses_by_step(run_dir):
    return {m["step"]: {k: v for k, v in m.items() if k.endswith("/loss")}
            for m in read_metrics(run_dir) if "generator/loss" in m}


def data_keys(run_dir):
    return {path.name: path.read_text() for path in sorted((run_dir / "data_keys").glob("*.jsonl"))}


def kill_at_step(command, env, run_dir, target_step):
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        wait_for_step(run_dir, process, target_step, poll=0.01)
    finally:
        kill_tree(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("launcher, tolerance", [("single", 0.0), ("ddp", 1e-6), ("zero2", 1e-6), ("zero3", 1e-6)])
def test_resume_after_sigkill_reproduces_the_uninterrupted_run(launcher, tolerance, tmp_path):
    env = make_env(tmp_path / "cache")
    configs = {"ddp": "launch/cpu-ddp.yaml", "zero2": "launch/cpu-deepspeed-zero2.yaml",
               "zero3": "launch/cpu-deepspeed-zero3.yaml"}

    def command(run_dir):
        args = ["train", "configs/gan_ring.yaml", f"run.dir={run_dir}", "train.max_steps=500", "ckpt.every=40",
                "log.every=1", "log.data_keys=true", "train.batch_size=64", *QUIET]
        if launcher == "single":
            return gendist_command(*args)
        return accelerate_command(free_port(), *args, config=configs[launcher])

    reference = tmp_path / "reference"
    run(command(reference), env)
    interrupted = tmp_path / "interrupted"
    for target in (150, 290, 430):
        kill_at_step(command(interrupted), env, interrupted, target + random.Random(target).randrange(15))
    run(command(interrupted), env)
    expected, got = losses_by_step(reference), losses_by_step(interrupted)
    assert sorted(got) == sorted(expected) == list(range(1, 501))
    for step, losses in expected.items():
        for key, value in losses.items():
            assert abs(got[step][key] - value) <= tolerance * max(1.0, abs(value)), (step, key)
    assert data_keys(interrupted) == data_keys(reference)


# -- preemption and dead ranks -----------------------------------------------------------------------------
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


def wait_gone(pids, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in pids):
            return time.time()
        time.sleep(0.05)
    raise AssertionError(f"processes {pids} still running after {timeout} s")


def _state(pid):
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


@pytest.mark.slow
@pytest.mark.parametrize("signum, to_group", [(signal.SIGUSR1, True), (signal.SIGTERM, False)],
                         ids=["sigusr1-group", "sigterm-launcher"])
def test_preemption_signal_checkpoints_and_relaunch_resumes(signum, to_group, tmp_path):
    """SIGUSR1 to the launcher's process group kills accelerate's launcher without forwarding (the workers
    notice their launcher is gone); SIGTERM to the launcher is forwarded to the workers. Either way the
    workers checkpoint at the next step boundary and a relaunch resumes there."""
    env = make_env(tmp_path / "cache")
    run_dir = tmp_path / "run"
    command = accelerate_command(free_port(), "train", "configs/gan_ring.yaml", f"run.dir={run_dir}",
                                 "train.max_steps=1500", "ckpt.every=1000", "log.every=10", *QUIET)
    launcher = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    wait_for_step(run_dir, launcher, 100)
    workers = process_tree(launcher.pid)[1:]
    (os.killpg if to_group else os.kill)(launcher.pid, signum)
    assert launcher.wait(timeout=60) != 0
    wait_gone(workers, timeout=60)  # the workers checkpoint and exit (code 75)
    saved = (run_dir / "checkpoints" / "latest").read_text()
    saved_step = int(saved.split("_")[1])
    assert 100 <= saved_step < 1000
    resumed = run(command, env)
    assert f"(step {saved_step})" in resumed.stdout


@pytest.mark.slow
def test_killing_one_rank_ends_the_job_within_60_seconds(tmp_path):
    env = make_env(tmp_path / "cache")
    run_dir = tmp_path / "run"
    command = accelerate_command(free_port(), "train", "configs/gan_ring.yaml", f"run.dir={run_dir}",
                                 "train.max_steps=100000", "ckpt.every=0", "log.every=10", *QUIET)
    launcher = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    try:
        wait_for_step(run_dir, launcher, 50)
        workers = process_tree(launcher.pid)[1:]
        killed_at = time.time()
        os.kill(workers[-1], signal.SIGKILL)
        output, _ = launcher.communicate(timeout=60)
        ended = wait_gone(workers, timeout=max(1.0, 60 - (time.time() - killed_at)))
    finally:
        kill_tree(launcher.pid, signal.SIGKILL)
    assert launcher.returncode != 0
    assert ended - killed_at < 60
    assert "exitcode  : -9" in output and "rank" in output  # the launcher names the dead rank
