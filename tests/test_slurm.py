"""gendist against a real SLURM: Debian's slurmctld + slurmd + munge on this machine (slurm/local-cluster.sh).

The jobs are rendered by `gendist slurm submit --cpu` from slurm/train.sbatch.template: one `accelerate launch`
of 2 CPU processes through srun. In CI (CI=true) the cluster must come up (these tests never skip there);
elsewhere they skip, with the reason, when no cluster answers and this is not root.
"""
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from helpers import ROOT, free_port, make_env, read_metrics

pytestmark = pytest.mark.slow
RUN = ["log.wandb=false", "log.progress=false", "eval.num_samples=200", "log.sample_every=0"]
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                "BOOT_FAIL", "DEADLINE"}


def cluster_answers() -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and bool(re.search(r"idle|mixed|allocated", out.stdout))


@pytest.fixture(scope="module")
def cluster():
    if cluster_answers():
        yield
        return
    in_ci = os.environ.get("CI", "").lower() == "true"
    if os.geteuid() != 0 and not in_ci:
        pytest.skip("no SLURM cluster answers sinfo and this is not root: start one with "
                    "`sudo bash slurm/local-cluster.sh up` to run these tests")
    result = subprocess.run(["bash", str(ROOT / "slurm/local-cluster.sh"), "up"], capture_output=True, text=True,
                            timeout=600)
    if result.returncode != 0 or not cluster_answers():
        message = f"local SLURM cluster did not come up: {result.stdout[-1000:]} {result.stderr[-2000:]}"
        if in_ci:
            pytest.fail(message)
        pytest.skip(message)
    yield
    subprocess.run(["bash", str(ROOT / "slurm/local-cluster.sh"), "down"], capture_output=True, timeout=120)


def submit(env: dict, run_dir: Path, *args: str) -> str:
    result = subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "gendist", "slurm", "submit", "configs/gan_ring.yaml",
                             "--cpu", "--processes-per-node", "2", "--port", str(free_port()), f"run.dir={run_dir}",
                             *RUN, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return re.search(r"submitted job (\d+)", result.stdout).group(1)


def job_field(job: str, field: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    match = re.search(rf"\b{field}=(\S+)", out)
    return match.group(1) if match else ""


def release_if_held(job: str) -> None:
    """A requeued job waits (BeginTime, about 2 minutes) before it may start again; start it now."""
    if job_field(job, "JobState") == "PENDING" and job_field(job, "Reason") == "BeginTime":
        subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], capture_output=True)


def wait_for_end(job: str, timeout: float = 400) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        release_if_held(job)
        state = job_field(job, "JobState")
        if state in FINAL_STATES:
            return state
        time.sleep(2)
    subprocess.run(["scancel", job], capture_output=True)
    raise AssertionError(f"job {job} did not end within {timeout} s (state {job_field(job, 'JobState')})")


def logged_steps(run_dir: Path) -> list[int]:
    if not (run_dir / "metrics.jsonl").is_file():
        return []
    return [m["step"] for m in read_metrics(run_dir) if "generator/loss" in m]


def job_output(run_dir: Path, job: str) -> str:
    return (run_dir / "slurm" / f"slurm-{job}.out").read_text()


def test_sbatch_of_the_single_node_template_trains_with_two_processes(cluster, tmp_path):
    env = make_env(tmp_path / "cache")
    run_dir = tmp_path / "run"
    job = submit(env, run_dir, "--time", "00:10:00", "train.max_steps=100", "log.every=50", "ckpt.every=50")
    assert wait_for_end(job) == "COMPLETED", job_output(run_dir, job)[-3000:]
    output = job_output(run_dir, job)
    assert "training gan with strategy ddp on 2 process(es)" in output
    assert (run_dir / "checkpoints" / "step_00000100" / "manifest.json").is_file()
    assert logged_steps(run_dir) == [50, 100]
    assert (run_dir / "eval.json").is_file()


def test_a_preempted_job_checkpoints_requeues_once_and_finishes_from_the_saved_step(cluster, tmp_path):
    """The preemption signal (scancel --signal=TERM, what SLURM sends the job's steps before preempting it)
    reaches the training processes through srun and the launcher; they checkpoint at the next step boundary,
    rank 0 requeues the job, and the requeued job resumes there and finishes: every step logged once."""
    env = make_env(tmp_path / "cache")
    run_dir = tmp_path / "run"
    job = submit(env, run_dir, "--time", "00:10:00", "train.max_steps=600", "log.every=50", "ckpt.every=0")
    deadline = time.monotonic() + 180
    while len(logged_steps(run_dir)) < 4:  # training is under way (step >= 200)
        assert time.monotonic() < deadline and job_field(job, "JobState") in ("PENDING", "RUNNING"), \
            job_output(run_dir, job)[-3000:] if (run_dir / "slurm" / f"slurm-{job}.out").exists() else job
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=TERM", job], check=True)
    assert wait_for_end(job) == "COMPLETED", job_output(run_dir, job)[-3000:]
    output = job_output(run_dir, job)
    saved = int(re.search(r"stop requested \(signal 15\): checkpointing step (\d+)", output).group(1))
    assert f"SLURM job {job} requeued" in output and "(restart 1)" in output
    assert f"resumed from {run_dir / 'checkpoints' / f'step_{saved:08d}'} (step {saved})" in output
    assert 200 <= saved < 600
    assert logged_steps(run_dir) == list(range(50, 601, 50))  # no gap, no restart from 0


def test_a_job_at_its_time_limit_is_requeued_and_resumes(cluster, tmp_path):
    """--time 1 minute with the signal 45 s before it (SLURM sends it within about 30 s of that): the first
    allocation checkpoints and requeues, and the requeued job resumes from that step and trains on (the test
    then cancels it rather than waiting for its own limit). Through the multi-node template, on this node."""
    env = make_env(tmp_path / "cache")
    run_dir = tmp_path / "run"
    job = submit(env, run_dir, "--template", "multi", "--time", "00:01:00", "--grace", "45",
                 "train.max_steps=1000000", "log.every=100", "ckpt.every=0")
    output_file = run_dir / "slurm" / f"slurm-{job}.out"
    deadline = time.monotonic() + 300
    saved = None
    while time.monotonic() < deadline:
        release_if_held(job)
        output = output_file.read_text() if output_file.is_file() else ""
        found = re.findall(r"stop requested \(signal 15\): checkpointing step (\d+)", output)
        saved = int(found[0]) if found else None
        steps = logged_steps(run_dir)
        if saved is not None and "(restart 1)" in output and steps and steps[-1] >= saved + 300:
            break
        assert job_field(job, "JobState") not in FINAL_STATES, output[-3000:]
        time.sleep(1)
    subprocess.run(["scancel", job], capture_output=True)
    wait_for_end(job, timeout=120)  # nothing of it left running for the next test
    output = output_file.read_text()
    assert saved is not None and f"SLURM job {job} requeued" in output, output[-3000:]
    assert f"resumed from {run_dir / 'checkpoints' / f'step_{saved:08d}'} (step {saved})" in output
    steps = logged_steps(run_dir)
    assert steps[-1] >= saved + 300, steps[-5:]  # went on from there, never from 0
    assert steps == list(range(100, steps[-1] + 1, 100))
