"""`gendist slurm submit`: render slurm/train.sbatch.template (or, for one node,
slurm/train_single_node.sbatch.template) for a config and submit it with sbatch.

The job runs one `accelerate launch` per node through srun (DDP, FSDP or DeepSpeed, from the launch config
of `--strategy`), sets ckpt.requeue=true so that a preempted or timed-out job checkpoints, requeues itself once
and resumes, and exports GENDIST_EXPECTED_WORLD_SIZE = nodes x processes per node so that a launch that does
not join one world stops at once. `--dry-run` prints the script instead of submitting it.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from gendist.errors import UserError

# The repository (or GENDIST_HOME, e.g. /opt/gendist in the docker image) holds slurm/ and launch/.
ROOT = Path(os.environ.get("GENDIST_HOME") or Path(__file__).resolve().parents[1])
TEMPLATE = ROOT / "slurm" / "train.sbatch.template"  # multi-node: one launcher per node through srun
SINGLE_NODE_TEMPLATE = ROOT / "slurm" / "train_single_node.sbatch.template"
STRATEGIES = {"ddp": ("gpu-ddp-multinode.yaml", "cpu-ddp.yaml"), "fsdp": ("gpu-fsdp.yaml", "cpu-fsdp.yaml"),
              "zero1": ("gpu-deepspeed-zero1.yaml", "cpu-deepspeed-zero1.yaml"),
              "zero2": ("gpu-deepspeed-zero2.yaml", "cpu-deepspeed-zero2.yaml"),
              "zero3": ("gpu-deepspeed-zero3.yaml", "cpu-deepspeed-zero3.yaml")}
TIME_FORMAT = re.compile(r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$")


def render(args, config_path: Path, run_dir: Path, overrides: list[str]) -> str:
    """The sbatch script for these arguments (placeholders {{name}} of the template filled in)."""
    processes = args.processes_per_node if args.cpu else args.gpus_per_node
    launch = ROOT / "launch" / STRATEGIES[args.strategy][1 if args.cpu else 0]
    environment = ["export ACCELERATE_USE_CPU=true OMP_NUM_THREADS=1"] if args.cpu else []
    extra = [f"#SBATCH --partition={args.partition}"] if args.partition else []
    if not args.cpu:
        extra.append(f"#SBATCH --gpus-per-node={args.gpus_per_node}")
    values = {
        "job_name": args.job_name or f"gendist-{run_dir.name}", "nodes": str(args.nodes),
        "processes_per_node": str(processes), "strategy": args.strategy + (" on CPUs" if args.cpu else " on GPUs"),
        "cpus_per_task": str(args.cpus_per_task or (processes if args.cpu else 8 * processes)),
        "time": args.time, "output": str(run_dir / "slurm" / "slurm-%j.out"), "extra_sbatch": "\n".join(extra),
        "signal": args.signal, "grace": str(args.grace), "workdir": shlex.quote(str(Path.cwd())),
        "environment": "\n".join(environment) or "# (environment: as submitted)", "port": str(args.port), "python": shlex.quote(sys.executable),
        "launch_config": shlex.quote(str(launch)), "config": shlex.quote(str(config_path)),
        "overrides": " ".join(shlex.quote(item) for item in [*overrides, f"run.dir={run_dir}", "ckpt.requeue=true"]),
    }
    single = args.template == "single" or (args.template == "auto" and args.nodes == 1)
    text = (SINGLE_NODE_TEMPLATE if single else TEMPLATE).read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def check_arguments(args) -> None:
    if args.nodes < 1:
        raise UserError(f"--nodes must be >= 1, got {args.nodes}")
    if (args.gpus_per_node if not args.cpu else args.processes_per_node) < 1:
        raise UserError("--gpus-per-node (or --processes-per-node with --cpu) must be >= 1")
    if not TIME_FORMAT.match(args.time):
        raise UserError(f"--time must be a SLURM time such as 04:00:00, 30 or 1-00:00:00, got {args.time!r}")
    if args.template == "single" and args.nodes != 1:
        raise UserError(f"--template single runs on one node; got --nodes {args.nodes}")
    if args.grace < 1:
        raise UserError(f"--grace must be >= 1 second, got {args.grace}")
    if not re.fullmatch(r"[A-Z0-9]+", args.signal):
        raise UserError(f"--signal must be a signal name such as TERM or USR1, got {args.signal!r}")


def submit(args) -> int:
    """Validate the config, render the script into RUN_DIR/slurm/, and submit it (or print it)."""
    from gendist.config import load_config

    check_arguments(args)
    if not TEMPLATE.is_file():
        raise UserError(f"no SLURM template at {TEMPLATE}: set GENDIST_HOME to the gendist repository (it holds "
                        "slurm/ and launch/)")
    config = load_config(args.config, args.overrides)  # a bad key or value stops here, with one line
    run_dir = Path(config.run.dir).resolve()
    script = render(args, Path(args.config).resolve(), run_dir, args.overrides)
    if args.dry_run:
        print(script, end="")
        return 0
    if shutil.which("sbatch") is None:
        raise UserError("sbatch is not on PATH: run this on a SLURM login node (or use --dry-run to see the script)")
    folder = run_dir / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"job-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"
    path.write_text(script)
    result = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"sbatch refused {path}: {result.stderr.strip() or result.stdout.strip()}")
    job = result.stdout.strip().split(";")[0]
    print(f"gendist: submitted job {job} ({path}); output in {folder}/slurm-{job}.out")
    return 0
