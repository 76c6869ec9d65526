"""Real multi-process runs over gloo: `accelerate launch` with 2 CPU processes; kill -9 and resume."""
import signal
import subprocess
import time

import pytest
import torch

from helpers import ROOT, accelerate_command, free_port, gendist_command, kill_tree, make_env, read_metrics, run

pytestmark = pytest.mark.slow
QUIET = ["log.wandb=false", "log.progress=false", "log.sample_every=0", "eval.num_samples=500"]


def rank_digests(checkpoint):
    return {path.name: torch.load(path, weights_only=True)["param_digest"]
            for path in sorted(checkpoint.glob("rank_*.pt"))}


def test_ddp_two_processes_end_identical(tmp_path):
    env = make_env(tmp_path / "cache")
    run_dir = tmp_path / "ddp"
    result = run(accelerate_command(free_port(), "train", "configs/gan_ring.yaml", f"run.dir={run_dir}",
                                    "train.max_steps=40", "train.batch_size=64", "log.every=10", "ckpt.every=20",
                                    *QUIET), env)
    assert "strategy ddp on 2 process(es)" in result.stdout
    digests = rank_digests(run_dir / "checkpoints" / "step_00000040")
    assert len(digests) == 2 and len(set(digests.values())) == 1, digests
    assert [m["step"] for m in read_metrics(run_dir) if "generator/loss" in m] == [10, 20, 30, 40]


def wait_for_checkpoint(run_dir, process, timeout=120):
    latest = run_dir / "checkpoints" / "latest"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if latest.is_file() and process.poll() is None:
            return latest.read_text()
        assert process.poll() is None, "training finished before it could be killed"
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


# (DDP, FSDP, ZeRO-2/3 kills: tests/test_fault_tolerance.py::test_resume_after_sigkill_reproduces_the_uninterrupted_run)
@pytest.mark.parametrize("launcher", ["single"])
def test_sigkill_after_checkpoint_resumes_from_it(tmp_path, launcher):
    env = make_env(tmp_path / "cache")
    run_dir = tmp_path / "run"
    args = ["train", "configs/gan_ring.yaml", f"run.dir={run_dir}", "train.max_steps=600", "ckpt.every=100",
            "log.every=50", *QUIET]
    configs = {"ddp": "launch/cpu-ddp.yaml", "zero2": "launch/cpu-deepspeed-zero2.yaml"}
    command = gendist_command(*args) if launcher == "single" else accelerate_command(
        free_port(), *args, config=configs[launcher])
    # Warm the data cache first so the kill lands in training, not in data preparation.
    run(gendist_command(*args[:3], "train.max_steps=1", f"run.dir={tmp_path / 'warm'}", *QUIET), env)
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        saved = wait_for_checkpoint(run_dir, process)
    finally:
        kill_tree(process.pid, signal.SIGKILL)  # the launcher and its workers: nothing gets to clean up
        process.wait()
    saved_step = int((run_dir / "checkpoints" / "latest").read_text().split("_")[1])
    assert saved_step >= int(saved.split("_")[1]) and saved_step < 600
    result = run(command, env)
    assert f"resumed from {run_dir / 'checkpoints' / f'step_{saved_step:08d}'} (step {saved_step})" in result.stdout
    steps = [m["step"] for m in read_metrics(run_dir) if "generator/loss" in m]
    assert steps == list(range(50, 601, 50))  # each step logged once, none lost, none duplicated


def test_two_machines_on_loopback_end_identical(tmp_path):
    """2 "machines" x 1 process: two accelerate launchers with --machine_rank 0 and 1 on 127.0.0.1."""
    env = make_env(tmp_path / "cache")
    run_dir = tmp_path / "multinode"
    port = free_port()
    args = ["train", "configs/gan_ring.yaml", f"run.dir={run_dir}", "train.max_steps=30", "log.every=10",
            "ckpt.every=0", *QUIET]
    machines = [subprocess.Popen(accelerate_command(port, *args, config="launch/cpu-ddp-2machines.yaml",
                                                    extra=("--machine_rank", str(rank))),
                                 env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for rank in (0, 1)]
    outputs = [machine.communicate(timeout=300)[0] for machine in machines]
    assert [machine.returncode for machine in machines] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "strategy ddp on 2 process(es)" in outputs[0]
    digests = rank_digests(run_dir / "checkpoints" / "step_00000030")
    assert len(digests) == 2 and len(set(digests.values())) == 1
