#!/usr/bin/env bash
# Set up ./.venv (see launch/setup_env.sh) and run the test suite: the fast tier (in-process unit tests,
# `-m "not slow"`), then the integration tier (real processes: CLI runs, 2-process DDP/FSDP/DeepSpeed over
# gloo, kill/resume; `-m slow`: the one-process tests two at a time, then the rest). Extra arguments go to a
# single pytest run instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup_env.sh
# bytecode of gendist and the tests written once: every test process imports them (0.1 s each without it)
.venv/bin/python -m compileall -q gendist tests benchmarks >/dev/null
export WANDB_SILENT=true WANDB_MODE=${WANDB_MODE:-offline} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

run_pytest() {
  local status=0
  .venv/bin/python -m pytest -q -ra "$@" || status=$?
  if [ "$status" -eq 5 ]; then
    echo "tests/run.sh: pytest collected no tests" >&2
  fi
  return "$status"
}

if [ "$#" -gt 0 ]; then
  run_pytest "$@"
  exit $?
fi
started=$SECONDS
fast=0
echo "== fast tier (unit tests) =="
run_pytest -m "not slow" --durations=5 || fast=$?
echo "== integration tier (real processes) =="
integration=0
# Tests marked one_process run at most one process at a time: two of them share the 2 cores (pytest-xdist;
# a module's tests stay on one worker, so its module fixtures run once). The multi-process ones run alone.
run_pytest -m "slow and one_process" -n 2 --dist loadscope --durations=10 || integration=$?
run_pytest -m "slow and not one_process" --durations=15 || integration=$?
echo "tests/run.sh: fast tier exit $fast, integration tier exit $integration, $((SECONDS - started)) s in all"
if [ "$fast" -ne 0 ]; then exit "$fast"; fi
exit "$integration"
