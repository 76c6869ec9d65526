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
@pytest.mark.one_process
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


def launch_two_machines(config: str, args: list[str], env: dict, port: int) -> list[tuple[int, str]]:
    """Two accelerate launchers on 127.0.0.1 with --machine_rank 0 and 1: (exit code, output) of each."""
    machines = [subprocess.Popen(accelerate_command(port, *args, config=config, extra=("--machine_rank", str(rank))),
                                 env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for rank in (0, 1)]
    return [(machine.wait(timeout=300), machine.communicate()[0]) for machine in machines]


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_on_two_machines_trains_one_job(stage, tmp_path):
    """2 "machines" x 1 process under DeepSpeed ZeRO-2/3 (deepspeed_multinode_launcher: standard) join one world
    of 2: ZeRO-2 ends with identical replicas; ZeRO-3's gathered weights equal a 1-machine x 2-process run's."""
    env = make_env(tmp_path / "cache")
    args = ["train", "configs/gan_ring.yaml", "train.max_steps=20", "log.every=10", "ckpt.every=20", *QUIET]
    run_dir = tmp_path / "two_machines"
    results = launch_two_machines(f"launch/cpu-deepspeed-zero{stage}-2machines.yaml", [*args, f"run.dir={run_dir}"],
                                  env, free_port())
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    assert "training gan with strategy deepspeed on 2 process(es)" in results[0][1]
    assert [m["step"] for m in read_metrics(run_dir) if "generator/loss" in m] == [10, 20]  # one job logged
    checkpoint = run_dir / "checkpoints" / "step_00000020"
    digests = rank_digests(checkpoint)
    assert len(digests) == 2
    if stage == 2:
        assert len(set(digests.values())) == 1, digests
    else:
        reference = tmp_path / "one_machine"
        run(accelerate_command(free_port(), *args, f"run.dir={reference}",
                               config=f"launch/cpu-deepspeed-zero{stage}.yaml"), env)
        from safetensors.torch import load_file

        for path in sorted((checkpoint / "players").glob("*.safetensors")):
            got, expected = load_file(path), load_file(reference / "checkpoints" / "step_00000020" / "players" / path.name)
            assert all(torch.equal(got[key], expected[key]) for key in expected), path.name


def test_a_launch_that_splits_into_separate_worlds_stops_with_one_line(tmp_path):
    """accelerate's default DeepSpeed multi-machine launcher (pdsh) without a hostfile starts each machine as a
    world of its own: both would train alone into one run folder. gendist sees that the launcher asked for 2
    processes, stops before writing anything, and says how to fix it."""
    import os

    env = make_env(tmp_path / "cache")
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"  # DeepSpeed's `deepspeed` runner
    config = tmp_path / "pdsh.yaml"
    config.write_text("\n".join(line for line in (ROOT / "launch/cpu-deepspeed-zero2.yaml").read_text().splitlines()
                                if "deepspeed_multinode_launcher" not in line))
    run_dir = tmp_path / "split"
    port = free_port()
    machines = [subprocess.Popen(accelerate_command(port, "train", "configs/gan_ring.yaml", f"run.dir={run_dir}",
                                                    "train.max_steps=20", *QUIET, config=str(config),
                                                    extra=("--num_machines", "2", "--num_processes", "2",
                                                           "--main_process_ip", "127.0.0.1", "--machine_rank", str(rank))),
                                 env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for rank in (0, 1)]
    outputs = [machine.communicate(timeout=300)[0] for machine in machines]
    for machine, output in zip(machines, outputs):
        errors = [line for line in output.splitlines() if line.startswith("gendist: error:")]
        assert errors and "asked for 2 processes" in errors[0] and "joined a world of 1" in errors[0], output[-3000:]
        assert "deepspeed_multinode_launcher: standard" in errors[0]
        # the launchers print their own traceback for a child that exited 2; none comes from gendist's code
        assert not [line for line in output.splitlines() if line.strip().startswith('File "') and "/gendist/" in line]
    assert not run_dir.exists()  # stopped before anything was written
