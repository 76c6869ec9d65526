#!/usr/bin/env bash
# Create ./.venv if missing and install gendist into it (idempotent; a no-op when already installed).
# TORCH_SPEC selects the torch build, installed first so that no dependency pulls a multi-GB CUDA build:
#   CPU (default): TORCH_SPEC="torch==2.13.0"; GPU: e.g. TORCH_SPEC="torch==2.13.0" with the CUDA index of your site.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check "$TORCH_SPEC"
# DeepSpeed builds its C++/CUDA ops just in time when they are used; DS_BUILD_OPS=0 skips building them now.
# Everything else is resolved with torch held at the installed build: a package that depends on torch (torchvision,
# for the Inception features) then takes its release for this torch instead of replacing it with another build.
.venv/bin/python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > .venv/torch-pin.txt
DS_BUILD_OPS=0 .venv/bin/python -m pip install -q --disable-pip-version-check -c .venv/torch-pin.txt -e ".[test]"
# On a CPU-only machine DeepSpeed's collectives use its shared-memory op, built just in time by the first
# launch (about 40 s on 2 cores, inside that launch's start-up). Build it now, once per environment, so no
# launch stalls on it; on GPU machines DeepSpeed uses NCCL and this builds nothing.
.venv/bin/python - <<'PY' >/dev/null 2>&1 || echo "setup_env: DeepSpeed's CPU shm op was not prebuilt; the first DeepSpeed launch builds it" >&2
import torch
if not torch.cuda.is_available():
    from deepspeed.accelerator import get_accelerator
    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        builder.load()
PY
# Real image sets ship as Debian packages (data.source=fashion_mnist | emoji): installed here when apt-get can
# (as root, or with passwordless sudo); without them everything else works and those sources say what to install.
IMAGE_PACKAGES="dataset-fashion-mnist fonts-noto-color-emoji"
if command -v apt-get >/dev/null 2>&1 && ! dpkg -s $IMAGE_PACKAGES >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo -n"; fi
  { DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $IMAGE_PACKAGES \
      || { $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $IMAGE_PACKAGES; }; } >/dev/null 2>&1 \
    || echo "setup_env: could not install $IMAGE_PACKAGES; data.source=fashion_mnist and emoji need them: apt-get install $IMAGE_PACKAGES" >&2
fi
