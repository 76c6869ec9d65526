"""What a launcher asked for, read from its command line or GENDIST_EXPECTED_WORLD_SIZE, against the world
a process joined (a multi-machine launch that split into separate worlds stops with one line)."""
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
