"""One prepared check of every CUDA path of gendist, and the step time against a hand-written loop on the GPU.

    bash benchmarks/gpu_check.sh [--dry-run] [--only NAME ...] [--no-write] [--budget-s 480]

On a machine with a CUDA device it runs, one after another (each a real `gendist` process):
- every family (GAN with the resnet architecture at 32x32x3, VAE, BiGAN, CycleGAN) in bf16 autocast and in
  fp16 with torch's GradScaler;
- every strategy in one process: FSDP2 (fully_shard, NCCL), DeepSpeed ZeRO-1/2/3 (its fused CUDA paths, its own
  fp16 loss scaler), fused Adam on the device;
- train.compile on and off, and train.channels_last;
- evaluation featurized on the device (a `gendist classifier train` classifier as the feature space);
- the step time of the resnet GAN at 32x32x3, batch 64: gendist eager and compiled against
  benchmarks/handwritten.py (the same networks, a plain loop) eager and compiled.
Each check passes when its process exits 0 and its metrics are finite. Writes the "gpu-check" section of
benchmarks/RESULTS.md (--no-write: print only).

--dry-run (any machine, no GPU needed; what CI runs): every check's config and overrides are loaded and
validated exactly as `gendist train` would, every command line is printed, nothing is trained or written.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _results import command_line, machine, publish  # noqa: E402
from step_overhead import RGB32, write_rgb32  # noqa: E402

QUIET = ["log.sample_every=0", "log.wandb=false", "log.progress=false", "ckpt.every=0"]
RESNET32 = ["configs/gan_digits.yaml", "model.arch=resnet", f"data.source=npz:{RGB32}", "train.batch_size=64",
            "train.ema_decay=0"]
SHORT = ["train.max_steps=30", "log.every=10", "eval.num_samples=500", *QUIET]
CLASSIFIER = Path(tempfile.gettempdir()) / "gendist-gpu-check-classifier"


@dataclass
class Check:
    name: str
    what: str
    argv: list[str]  # gendist arguments (train CONFIG key=value ...), or a benchmark script with `script`
    script: str = ""  # benchmarks/<script>: run with `argv` as its arguments instead of gendist
    env: dict = field(default_factory=dict)


def checks() -> list[Check]:
    plan = []
    families = {"gan": RESNET32,
                "vae": ["configs/vae_digits.yaml", "vae.eval_samples=16", "vae.prior_samples=0", "vae.gap_steps=0"],
                "bigan": ["configs/bigan_digits.yaml"],
                "cyclegan": ["configs/cyclegan_digits_inverted.yaml"]}
    for family, args in families.items():
        for precision in ("bf16", "fp16"):
            plan.append(Check(f"{family}_{precision}", f"{family}, {precision} autocast"
                              + (" + GradScaler" if precision == "fp16" else ""),
                              ["train", *args, f"precision={precision}", *SHORT]))
    strategies = {"fsdp": ["dist.strategy=fsdp"], "zero1": ["dist.strategy=deepspeed", "dist.zero_stage=1"],
                  "zero2": ["dist.strategy=deepspeed", "dist.zero_stage=2"],
                  "zero3": ["dist.strategy=deepspeed", "dist.zero_stage=3"]}
    for strategy, args in strategies.items():
        base = ["configs/gan_digits.yaml", "model.arch=stylegan2", "train.ema_decay=0"] if strategy in ("fsdp", "zero3") \
            else RESNET32  # (spectral norm needs whole weights: the sharded strategies train the stylegan2 GAN)
        # fp16 where its loss scaling is the strategy's own (FSDP: torch's GradScaler on DTensor gradients;
        # ZeRO-2: DeepSpeed's scaler); ZeRO-1 and ZeRO-3 share ZeRO-2's scaler
        for precision in ("bf16", "fp16") if strategy in ("fsdp", "zero2") else ("bf16",):
            plan.append(Check(f"{strategy}_{precision}", f"{strategy} (1 process), {precision}",
                              ["train", *base, *args, f"precision={precision}", *SHORT]))
    plan.append(Check("compile_r1", "train.compile with lazy R1 (an eager phase), bf16",
                      ["train", *RESNET32, "train.compile=true", "gan.r1_gamma=1.0", "gan.r1_every=4", "precision=bf16",
                       *SHORT]))
    plan.append(Check("compile_zero2", "train.compile under DeepSpeed ZeRO-2, stylegan2",
                      ["train", "configs/gan_digits.yaml", "model.arch=stylegan2", "train.ema_decay=0",
                       "dist.strategy=deepspeed", "dist.zero_stage=2", "train.compile=true", *SHORT]))
    plan.append(Check("channels_last", "train.channels_last, compiled, bf16",
                      ["train", *RESNET32, "train.channels_last=true", "train.compile=true", "precision=bf16", *SHORT]))
    plan.append(Check("classifier", "gendist classifier train on the device (digits)",
                      ["classifier", "train", "--data", "digits", "--out", str(CLASSIFIER), "--epochs", "5"]))
    plan.append(Check("eval_features", "evaluation in classifier features on the device",
                      ["train", "configs/gan_digits.yaml", f"eval.features=classifier:{CLASSIFIER}", *SHORT]))
    speed = ["--config", "gan_digits", "--steps", "220", "--warmup", "20", "--log-every", "20", "--device", "cuda",
             "--set", "model.arch=resnet", f"data.source=npz:{RGB32}", "train.batch_size=64", "train.ema_decay=0"]
    plan.append(Check("hand_eager", "hand-written loop, resnet GAN 32x32x3, eager", speed, script="handwritten.py"))
    plan.append(Check("hand_compiled", "hand-written loop, compiled", [*speed, "--compile"], script="handwritten.py"))
    step = ["train", *RESNET32, "train.max_steps=220", "log.every=20", "eval.num_samples=500", "eval.metrics=[mmd]",
            *QUIET]
    plan.append(Check("gendist_eager", "gendist, the same GAN, eager", step))
    plan.append(Check("gendist_compiled", "gendist, compiled", [*step, "train.compile=true"]))
    return plan


def validate(check: Check) -> None:
    """What `gendist train` checks before it starts: the config file, every key and value, the combinations."""
    if check.argv[0] != "train":
        return
    from gendist.config import load_config

    load_config(ROOT / check.argv[1], [arg for arg in check.argv[2:] if "=" in arg] + ["run.dir=/nonexistent"])


def run_check(check: Check, folder: Path, timeout: float) -> dict:
    run_dir = folder / check.name
    if check.script:
        command = [sys.executable, str(ROOT / "benchmarks" / check.script), *check.argv]
    else:
        command = [sys.executable, "-m", "gendist", *check.argv] + ([f"run.dir={run_dir}"] if check.argv[0] == "train" else [])
    started = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=ROOT, env={**os.environ, **check.env}, capture_output=True, text=True,
                                timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "seconds": timeout, "note": f"timed out after {timeout:.0f} s"}
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        return {"ok": False, "seconds": seconds, "note": tail[:200]}
    out = {"ok": True, "seconds": seconds, "note": ""}
    if check.script:
        out["rate"] = json.loads(result.stdout.strip().splitlines()[-1])["rate"]
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        lines = [json.loads(line) for line in metrics.read_text().splitlines()]
        values = [v for line in lines for k, v in line.items() if k.endswith("/loss") and isinstance(v, float)]
        if not values or not all(math.isfinite(v) for v in values):
            out.update(ok=False, note="non-finite or missing losses")
        elapsed = {line["step"]: line["time/elapsed_s"] for line in lines if "time/elapsed_s" in line}
        if 20 in elapsed and 220 in elapsed:
            out["rate"] = 200 / (elapsed[220] - elapsed[20])
        skipped = {k: v for k, v in lines[-1].items() if k.startswith("skipped/")}
        if skipped:
            out["note"] = ", ".join(f"{k} {v:g}" for k, v in skipped.items())
    return out


def report(results: dict[str, dict], plan: list[Check], device: str, seconds: float) -> str:
    lines = ["## GPU check: every CUDA path once (issue 26)", "",
             f"Device: {device}. Machine: {machine()}. Command: `{command_line()}` ({seconds:.0f} s).", "",
             "| check | what | outcome | seconds | note |", "|---|---|---|---|---|"]
    for check in plan:
        found = results.get(check.name)
        if found is None:
            lines.append(f"| {check.name} | {check.what} | not run (budget) | | |")
            continue
        rate = f"{found['rate']:.1f} it/s; " if "rate" in found else ""
        lines.append(f"| {check.name} | {check.what} | {'pass' if found['ok'] else '**FAIL**'} | "
                     f"{found['seconds']:.0f} | {rate}{found['note']} |")
    rates = {name: found["rate"] for name, found in results.items() if "rate" in found}
    if {"gendist_eager", "hand_eager"} <= set(rates):
        lines += ["", f"Step time, resnet GAN 32x32x3, batch 64, steps 20-220: gendist eager "
                  f"{rates['gendist_eager']:.1f} it/s, hand-written {rates['hand_eager']:.1f} it/s "
                  f"(gendist ÷ hand {rates['gendist_eager'] / rates['hand_eager']:.2f})"
                  + (f"; compiled: gendist {rates['gendist_compiled']:.1f}, hand {rates['hand_compiled']:.1f} it/s"
                     if {"gendist_compiled", "hand_compiled"} <= set(rates) else "") + "."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="validate and print every check; run nothing")
    parser.add_argument("--only", nargs="*", help="check names (default: all)")
    parser.add_argument("--budget-s", type=float, default=480, help="stop starting checks after this many seconds")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    plan = checks()
    names = {check.name for check in plan}
    if args.only:
        unknown = sorted(set(args.only) - names)
        if unknown:
            print(f"gpu_check: --only: no check named {', '.join(unknown)} (checks: {', '.join(sorted(names))})",
                  file=sys.stderr)
            return 2
        plan = [check for check in plan if check.name in args.only]
    if args.dry_run:
        from gendist.errors import UserError

        for check in plan:
            try:
                validate(check)
            except UserError as error:
                print(f"gpu_check: check {check.name}: {error}", file=sys.stderr)
                return 2
            program = f"benchmarks/{check.script}" if check.script else "gendist"
            print(f"{check.name}: {program} {' '.join(check.argv)}")
        print(f"gpu_check: dry run: {len(plan)} checks validated")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here: run it on a GPU machine, or with --dry-run to validate it",
              file=sys.stderr)
        return 2
    os.environ.pop("ACCELERATE_USE_CPU", None)
    write_rgb32()
    device = f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    started = time.perf_counter()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for check in plan:
            left = args.budget_s - (time.perf_counter() - started)
            if left < 10:
                break
            results[check.name] = run_check(check, Path(tmp), timeout=left)
            found = results[check.name]
            print(f"{check.name}: {'pass' if found['ok'] else 'FAIL'} in {found['seconds']:.0f} s {found['note']}",
                  file=sys.stderr, flush=True)
    publish("gpu-check", report(results, plan, device, time.perf_counter() - started), not args.no_write)
    return 0 if all(found["ok"] for found in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
