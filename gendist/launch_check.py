"""Did this process join the world its launcher asked for?

A multi-machine launch that silently splits (each machine training alone) writes one run folder from two
independent jobs and corrupts it. Seen with `accelerate launch` + DeepSpeed on several machines: without
`deepspeed_multinode_launcher: standard` accelerate hands off to DeepSpeed's pdsh launcher, which with no
hostfile starts each machine's processes as a world of their own. gendist compares the world it joined with
what was asked for and stops with one line when they differ:
- `GENDIST_EXPECTED_WORLD_SIZE`, when set (the SLURM templates set it to nodes x processes per node);
- otherwise the `accelerate launch` command among this process's ancestors: its `--num_processes` (the total
  over machines) and `--num_machines`, or the values in its `--config_file`.
"""
from __future__ import annotations

import os
from pathlib import Path

from gendist.errors import UserError

ENV_EXPECTED = "GENDIST_EXPECTED_WORLD_SIZE"


def _flag(argv: list[str], name: str) -> str | None:
    for index, item in enumerate(argv):
        if item == name and index + 1 < len(argv):
            return argv[index + 1]
        if item.startswith(name + "="):
            return item.split("=", 1)[1]
    return None


def accelerate_request(argv: list[str]) -> dict[str, int] | None:
    """{num_processes, num_machines} an `accelerate launch` command line asks for (None if not one)."""
    start = next((i for i, a in enumerate(argv) if "accelerate" in a), None)
    if start is None or "launch" not in " ".join(argv[start:start + 2]):
        return None  # `accelerate launch ...` or `python -m accelerate.commands.launch ...`
    # the launcher's own arguments end where the training script or `-m module` begins
    rest = argv[start + 1:]
    end = next((i for i, a in enumerate(rest) if a in ("-m", "--module") or a.endswith(".py")), len(rest))
    launch_args = rest[:end]
    request: dict[str, int] = {}
    config_file = _flag(launch_args, "--config_file")
    if config_file and Path(config_file).is_file():
        import yaml

        try:
            values = yaml.safe_load(Path(config_file).read_text()) or {}
        except yaml.YAMLError:
            values = {}
        for key in ("num_processes", "num_machines"):
            if isinstance(values.get(key), int):
                request[key] = values[key]
    for key in ("num_processes", "num_machines"):
        value = _flag(launch_args, f"--{key}")
        if value is not None and value.isdigit():
            request[key] = int(value)
    if launch_args and ("--multi_gpu" in launch_args or "--use_deepspeed" in launch_args) and "num_processes" not in request:
        return None  # accelerate decides the count from the hardware: nothing to hold it to
    return request or None


def launcher_request() -> tuple[int, str] | None:
    """(expected world size, where it comes from), or None when nothing says."""
    explicit = os.environ.get(ENV_EXPECTED, "")
    if explicit.isdigit() and int(explicit) > 0:
        return int(explicit), f"{ENV_EXPECTED}={explicit}"
    try:
        import psutil

        process = psutil.Process().parent()
        while process is not None:
            try:
                argv = process.cmdline()
            except (psutil.Error, OSError):
                break
            request = accelerate_request(argv)
            if request and "num_processes" in request:
                machines = request.get("num_machines", 1)
                return request["num_processes"], (f"accelerate launch --num_machines {machines} "
                                                  f"--num_processes {request['num_processes']}")
            process = process.parent()
    except ImportError:  # psutil comes with accelerate; without it only the environment variable is checked
        return None
    return None


def check_world(world_size: int) -> None:
    """One-line error when the world this process joined is not the one its launcher asked for."""
    request = launcher_request()
    if request is None or request[0] == world_size:
        return
    expected, source = request
    raise UserError(f"the launcher asked for {expected} processes ({source}) but this process joined a world "
                    f"of {world_size}: the machines did not join one job. With DeepSpeed on several machines "
                    "set deepspeed_multinode_launcher: standard in the accelerate config (see "
                    "launch/cpu-deepspeed-zero2-2machines.yaml); check main_process_ip/port and --machine_rank")
