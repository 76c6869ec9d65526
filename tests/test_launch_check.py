"""What a launcher asked for, read from its command line or GENDIST_EXPECTED_WORLD_SIZE, against the world
a process joined (a multi-machine launch that split into separate worlds stops with one line)."""
import os
import subprocess
import sys

import pytest

from gendist.errors import UserError
from gendist.launch_check import ENV_EXPECTED, accelerate_request, check_world
from helpers import ROOT


def test_accelerate_command_lines_are_read_up_to_the_training_module():
    config = str(ROOT / "launch/cpu-deepspeed-zero2-2machines.yaml")
    assert accelerate_request(["python", "-m", "accelerate.commands.launch", "--config_file", config, "-m",
                               "gendist", "train", "x.yaml", "--num_processes", "9"]) == {"num_processes": 2,
                                                                                          "num_machines": 2}
    assert accelerate_request(["accelerate", "launch", "--num_machines", "2", "--num_processes=4", "train.py",
                               "--num_processes", "9"]) == {"num_processes": 4, "num_machines": 2}
    assert accelerate_request(["accelerate", "launch", "--multi_gpu", "-m", "gendist"]) is None  # all GPUs: no count
    assert accelerate_request(["python", "-m", "deepspeed.launcher.launch", "--module", "gendist"]) is None


def test_an_explicit_expected_world_size_is_checked(monkeypatch):
    monkeypatch.setenv(ENV_EXPECTED, "4")
    check_world(4)
    with pytest.raises(UserError, match=r"asked for 4 processes \(GENDIST_EXPECTED_WORLD_SIZE=4\) but this process "
                                        r"joined a world of 2"):
        check_world(2)


@pytest.mark.parametrize("strategy, launch", [("ddp", "gpu-ddp-multinode.yaml"), ("fsdp", "gpu-fsdp.yaml"),
                                              ("zero2", "gpu-deepspeed-zero2.yaml"), ("zero3", "gpu-deepspeed-zero3.yaml")])
def test_slurm_submit_dry_run_renders_one_launcher_per_node(strategy, launch, capsys):
    from gendist.cli import main

    assert main(["slurm", "submit", "configs/gan_ring.yaml", "--nodes", "4", "--gpus-per-node", "8", "--strategy",
                 strategy, "--time", "02:00:00", "--dry-run", "train.max_steps=50"]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --nodes=4" in script and "#SBATCH --gpus-per-node=8" in script and "#SBATCH --time=02:00:00" in script
    assert "#SBATCH --signal=TERM@120" in script and "#SBATCH --requeue" in script
    assert f"launch/{launch}" in script and '--machine_rank "$SLURM_NODEID"' in script
    assert "GENDIST_EXPECTED_WORLD_SIZE=$((SLURM_NNODES * 8))" in script
    assert "train.max_steps=50" in script and "ckpt.requeue=true" in script and "{{" not in script


@pytest.mark.parametrize("args, fragment", [
    (["--nodes", "0"], "--nodes must be >= 1"),
    (["--time", "soon"], "--time must be a SLURM time"),
    (["--signal", "term;rm"], "--signal must be a signal name"),
    (["model.nonsense=1"], "unknown key 'model.nonsense'"),
    (["--grace", "0"], "--grace must be >= 1"),
])
def test_slurm_submit_bad_input_is_one_line(args, fragment, capsys):
    from gendist.cli import main

    assert main(["slurm", "submit", "configs/gan_ring.yaml", "--dry-run", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err


@pytest.mark.parametrize("nodes", ["1", "3"])
def test_slurm_scripts_pass_awkward_overrides_through_unchanged(nodes, capsys, tmp_path):
    """Quotes and $ in an override reach gendist as written (bash parses the script; nothing is expanded)."""
    import shlex

    from gendist.cli import main

    awkward = 'run.name=a"b $HOME c'
    assert main(["slurm", "submit", "configs/gan_ring.yaml", "--nodes", nodes, "--dry-run", awkward]) == 0
    script = tmp_path / "job.sbatch"
    script.write_text(capsys.readouterr().out)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert shlex.quote(awkward) in script.read_text()


@pytest.mark.parametrize("launched, code", [(True, 0), (True, 2), (False, 0)])
def test_a_launched_worker_exits_after_python_exit_work_without_native_teardown(launched, code):
    """A launched worker (LOCAL_RANK set) leaves with os._exit after its atexit handlers and flushes ran, so
    a native teardown abort cannot turn a finished run into a failed job; a plain process exits normally."""
    script = ("import atexit, sys\n"
              "atexit.register(lambda: print('atexit handler ran', flush=True))\n"
              "print('unflushed output', end='')\n"
              "from gendist.cli import exit_without_native_teardown\n"
              f"exit_without_native_teardown({code})\n"
              "print('after: a plain process goes on', end='')\n")
    env = {key: value for key, value in os.environ.items() if key != "LOCAL_RANK"}
    if launched:
        env["LOCAL_RANK"] = "0"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == (code if launched else 0), result.stderr
    if launched:
        assert result.stdout == "unflushed outputatexit handler ran\n"
    else:
        assert result.stdout == "unflushed outputafter: a plain process goes onatexit handler ran\n"
