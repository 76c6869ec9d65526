#!/usr/bin/env bash
# Quick start: set up ./.venv, prepare the 8-Gaussian ring as webdataset shards, train a GAN on it,
# evaluate it and draw samples. Extra arguments are passed to `gendist train` (e.g. train.max_steps=500).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH" WANDB_SILENT=true
gendist data prepare --source ring --out data/ring
gendist train configs/gan_ring.yaml data.source= data.dir=data/ring run.dir=runs/quickstart "$@"
gendist eval runs/quickstart
gendist sample runs/quickstart --n 2500 --out runs/quickstart/samples/final.png
echo "quickstart: run folder runs/quickstart (config.yaml, metrics.jsonl, samples/, checkpoints/, wandb/)"
