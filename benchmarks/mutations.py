"""Mutation check of the test suite: inject a known bug, run the tests meant to catch it, expect a failure,
restore the file. Every mutation must make at least one of its tests fail; the table this prints is the one
in benchmarks/RESULTS.md ("Tests that fail when a feature breaks").

    python benchmarks/mutations.py                 # all mutations
    python benchmarks/mutations.py --only ema_not_restored missing_grad_accum_division

Files are restored even when interrupted (try/finally); run it on a clean work tree (it refuses otherwise).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str  # the bug, in words
    path: str
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest node ids / -k expressions that must fail


MUTATIONS = [
    Mutation("zero3_restarts_from_step_0", "a relaunch under ZeRO-3 ignores its checkpoint and restarts at step 0",
             "gendist/engine/run.py",
             "folder = broadcast_object(find_resumable(run_dir / \"checkpoints\") if dist_info.is_main else None)",
             "folder = broadcast_object(find_resumable(run_dir / \"checkpoints\") if dist_info.is_main else None)\n"
             "    folder = None if trainer.strategy.name == \"deepspeed\" and getattr(trainer.strategy, \"stage\", 0) == 3 else folder",
             ("tests/test_fault_tolerance.py::test_resume_after_sigkill_reproduces_the_uninterrupted_run[zero3]",)),
    Mutation("missing_grad_accum_division", "backward does not divide the loss by train.grad_accum",
             "gendist/engine/strategies/base.py", "loss = loss / self.config.train.grad_accum", "loss = loss",
             ("tests/test_engine.py::test_accumulation_equals_the_double_batch_with_sgd",
              "tests/test_strategies.py::test_accumulation_matches_double_batch_and_syncs_once_per_step[ddp]")),
    Mutation("gradients_summed_across_ranks", "DDP sums gradients over ranks instead of averaging them",
             "gendist/engine/strategies/ddp.py", "return default_hooks.allreduce_hook(state, bucket)",
             "import torch.distributed as dist\n"
             "        return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda f: f.value()[0])",
             ("tests/test_strategies.py::test_two_ranks_match_one_rank_with_double_batch[torchrun-gan_sgd]",)),
    Mutation("ema_not_restored", "the EMA generator is not loaded on resume (it restarts at the current weights)",
             "gendist/engine/trainer.py", "self.ema[name].load_full_state(load_tensors(ema_path))", "pass",
             ("tests/test_fault_tolerance.py::test_resume_after_sigkill_reproduces_the_uninterrupted_run[single-fp16-ema]",)),
    Mutation("grad_scaler_not_restored", "the fp16 GradScaler state is not loaded on resume",
             "gendist/engine/strategies/base.py", "            scaler.load_state_dict(state[\"scalers\"][name])\n\n    def local_parameters",
             "            pass\n\n    def local_parameters",
             ("tests/test_fault_tolerance.py::test_resume_after_sigkill_reproduces_the_uninterrupted_run[single-fp16-ema]",)),
    Mutation("loader_position_not_restored", "the data loader restarts its epoch on resume",
             "gendist/engine/trainer.py", "self.loader.load_state_dict(rank_state[\"loader\"])", "pass",
             ("tests/test_fault_tolerance.py::test_resume_after_sigkill_reproduces_the_uninterrupted_run[single-fp16-ema]",)),
    Mutation("wgan_clip_skipped_zero3", "WGAN weight clipping is skipped under ZeRO-3",
             "gendist/engine/strategies/deepspeed.py",
             "        optimizer = self.engines[name].optimizer\n        for group in",
             "        if self.stage == 3:\n            return\n        optimizer = self.engines[name].optimizer\n        for group in",
             ("tests/test_strategies.py::test_two_ranks_match_one_rank_with_double_batch[zero3-wgan_clip]",)),
    Mutation("nonfinite_step_applied", "a step with non-finite gradients is applied instead of skipped",
             "gendist/engine/strategies/base.py", "            optimizer.found_inf = found_inf.reshape(())",
             "            optimizer.found_inf = torch.zeros((), device=self.device)",
             ("tests/test_fault_tolerance.py::test_too_many_bad_steps_stop_with_the_last_good_weights",
              "tests/test_fault_tolerance.py::test_injected_nan_steps_are_skipped_and_counted[single-generator]")),
    Mutation("iw_estimate_is_the_elbo", "the importance-weighted estimate averages log-weights (the ELBO)",
             "gendist/recipes/vae.py", "return {\"objective\": importance_weighted_bound(log_weights),",
             "return {\"objective\": log_weights.mean(0),",
             ("tests/test_vae.py", "tests/test_cli.py::test_vae_digits_trains_and_reports_elbo")),
    Mutation("deepspeed_clipping_dropped", "DeepSpeed engines are built without gradient clipping",
             "gendist/engine/strategies/deepspeed.py", "\"gradient_clipping\": config.optim.grad_clip,",
             "\"gradient_clipping\": 0.0,",
             ("tests/test_strategies.py::test_two_ranks_match_one_rank_with_double_batch[zero2-gan_sgd_clip]",)),
    Mutation("lr_override_ignored", "optim.lr_overrides is ignored (every player gets optim.lr)",
             "gendist/engine/strategies/base.py", "lr = optim.lr_overrides.get(member, optim.lr_overrides.get(name, optim.lr))",
             "lr = optim.lr",
             ("tests/test_engine.py",)),
    Mutation("checkpoint_not_verified", "checkpoints are used without checking their manifest",
             "gendist/checkpoint.py", "        problem = verify(folder)\n", "        problem = None\n",
             ("tests/test_fault_tolerance.py::test_a_damaged_file_in_a_written_checkpoint_falls_back_loudly",)),
    Mutation("fsdp_ema_not_saved", "the sharded EMA is not written into checkpoints",
             "gendist/engine/trainer.py", "                writer.add_tensors(ema_file(name), ema_state)",
             "                pass",
             ("tests/test_fault_tolerance.py::test_resume_after_sigkill_reproduces_the_uninterrupted_run[fsdp-ema]",)),
]


def run_tests(tests: tuple[str, ...]) -> tuple[bool, str, float]:
    """(some test failed, the failing test's summary line, seconds)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests], cwd=ROOT,
                            env=env, capture_output=True, text=True)
    failed = [line for line in result.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return result.returncode != 0, (failed[0] if failed else result.stdout.strip().splitlines()[-1]), \
        time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="mutation names")
    args = parser.parse_args()
    if subprocess.run(["git", "diff", "--quiet"], cwd=ROOT).returncode != 0:
        print("mutations: the work tree has uncommitted changes; commit or stash them first", file=sys.stderr)
        return 2
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    rows, survived = [], []
    for mutation in chosen:
        path = ROOT / mutation.path
        original = path.read_text()
        if original.count(mutation.old) != 1:
            print(f"mutations: {mutation.name}: the text to replace occurs {original.count(mutation.old)} times "
                  f"in {mutation.path}; update the mutation", file=sys.stderr)
            return 2
        try:
            path.write_text(original.replace(mutation.old, mutation.new))
            caught, line, seconds = run_tests(mutation.tests)
        finally:
            path.write_text(original)
        print(f"{mutation.name}: {'caught' if caught else 'SURVIVED'} in {seconds:.0f} s: {line}", flush=True)
        rows.append(f"| {mutation.what} | `{mutation.path}` | {'caught' if caught else '**survived**'}: "
                    f"{line.replace('|', '/')} |")
        if not caught:
            survived.append(mutation.name)
    print("\n| injected bug | where | outcome (first failing test) |\n|---|---|---|")
    print("\n".join(rows))
    if survived:
        print(f"mutations: survived (no test failed): {', '.join(survived)}", file=sys.stderr)
        return 1
    print(f"mutations: all {len(rows)} injected bugs were caught")
    return 0


if __name__ == "__main__":
    sys.exit(main())
