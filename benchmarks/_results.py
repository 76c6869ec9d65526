"""Shared by the benchmarks: the machine and versions, medians, and writing a section of RESULTS.md."""
from __future__ import annotations

import platform
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def machine() -> str:
    """CPU model, cores and the versions that matter, on one line."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    import torch

    versions = [f"Python {platform.python_version()}", f"torch {torch.__version__}"]
    for name in ("accelerate", "deepspeed", "lightning", "webdataset"):
        try:
            versions.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores; " + ", ".join(versions)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def command_line() -> str:
    return "python " + " ".join([str(Path(sys.argv[0]).relative_to(ROOT)) if Path(sys.argv[0]).is_absolute()
                                 else sys.argv[0], *sys.argv[1:]])


def steady_rate(metrics: Path, first: int, last: int) -> float:
    """Steps/s of a gendist run between two of its logged steps (its own clock: start-up excluded)."""
    import json

    elapsed = {line["step"]: line["time/elapsed_s"] for line in map(json.loads, metrics.read_text().splitlines())
               if "time/elapsed_s" in line}
    return (last - first) / (elapsed[last] - elapsed[first])


def publish(name: str, text: str, write: bool) -> None:
    """Print a benchmark's section and (unless --no-write) put it into RESULTS.md."""
    print(text)
    if write:
        write_section(name, text)


def write_section(name: str, text: str) -> None:
    """Replace (or append) the block between `<!-- BEGIN name -->` and `<!-- END name -->` in RESULTS.md,
    so rerunning a benchmark refreshes its own figures and nothing else."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    current = RESULTS.read_text() if RESULTS.is_file() else "# Benchmark results\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    updated = pattern.sub(lambda _: block, current) if pattern.search(current) else current.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(updated)
