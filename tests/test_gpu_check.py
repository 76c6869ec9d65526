"""benchmarks/gpu_check.sh on a machine without a GPU: its dry run validates every check, bad arguments and a
missing device stop it with one line and exit 2 (the GPU run itself: benchmarks/RESULTS.md, "GPU check")."""
import subprocess

from helpers import ROOT


def gpu_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_dry_run_validates_every_cuda_path_it_would_run():
    """Catches a check whose config or override `gendist train` would refuse (a renamed key, a bad value), and a
    script that lost one of the paths it exists to run."""
    result = gpu_check("--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    names = [line.split(":")[0] for line in result.stdout.splitlines() if ": gendist " in line or ": benchmarks/" in line]
    for family in ("gan", "vae", "bigan", "cyclegan"):
        assert {f"{family}_bf16", f"{family}_fp16"} <= set(names), names
    assert {"fsdp_bf16", "zero1_bf16", "zero2_bf16", "zero2_fp16", "zero3_bf16", "compile_r1", "compile_zero2",
            "channels_last", "eval_features", "hand_eager", "gendist_eager", "gendist_compiled"} <= set(names), names
    assert f"gpu_check: dry run: {len(names)} checks validated" in result.stdout


def test_bad_arguments_and_a_missing_gpu_exit_2_with_one_line():
    """Catches a typo in --only running nothing (or everything) silently, and a GPU run started on a CPU."""
    for args, fragment in ((["--only", "nope"], "--only: no check named nope"), ([], "no CUDA device here")):
        result = gpu_check(*args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1 and fragment in lines[0], result.stderr
