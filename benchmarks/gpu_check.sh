#!/usr/bin/env bash
# One prepared check of every CUDA path of gendist (benchmarks/gpu_check.py says what it runs), <= 8 minutes on
# one GPU; writes the "gpu-check" section of benchmarks/RESULTS.md. Needs a CUDA build of torch and gendist's
# requirements in the Python it runs ($PYTHON, else ./.venv/bin/python, else python3).
#   bash benchmarks/gpu_check.sh             # on a GPU machine
#   bash benchmarks/gpu_check.sh --dry-run   # any machine: validates every check's config, runs nothing
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
export WANDB_MODE=${WANDB_MODE:-disabled} WANDB_SILENT=true PYTHONUNBUFFERED=1
exec "$python" benchmarks/gpu_check.py "$@"
