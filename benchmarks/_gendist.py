"""Run the gendist CLI from a benchmark script (in the repository root); a failure ends the benchmark with the
command's stderr."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def gendist(*args: str, env: dict) -> str:
    result = subprocess.run([sys.executable, "-m", "gendist", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise SystemExit(f"gendist {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout
