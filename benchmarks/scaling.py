"""Scaling: measured steps/s of gan_ring on 1 vs 2 processes (DDP over gloo), the collectives each strategy issues
per step (counted), a communication model fitted on this machine and checked against the measurements, and the
model's projection to 8/64/512 GPUs. Prints a Markdown section and writes it to benchmarks/results/scaling.md.

    python benchmarks/scaling.py                 # batch 64/256/1024/4096 per process, 3 alternating repeats
    python benchmarks/scaling.py --quick         # batch 64 and 4096, 1 repeat, shorter runs (~2.5 min, 2 cores)

(a) steps/s: for each batch size per process and 1 or 2 processes, a short run (S steps) and a long run (5S
steps) of `gendist train configs/gan_ring.yaml`; it/s = (5S - S) / (t_long - t_short), t = `time/elapsed_s` of
the run's last step in metrics.jsonl (the trainer's clock starts after start-up: process launch, imports, data,
strategy set-up and resume are not in it; the final checkpoint and evaluation come after it). The median over
`--repeats` repeats whose order alternates (1 then 2 processes, then 2 then 1, ...).
(b) collectives: each strategy trains a few steps under a wrapper (this script, `--count-worker`) that counts
every torch.distributed collective call and its payload made inside `Trainer.train_step` and in the training
loop between steps, per rank.
(c) all-reduce time on this machine: 2 processes (torch.multiprocessing, gloo, 127.0.0.1, 1 thread each) time
all-reduces of several sizes; t(B) = alpha + B / beta is fitted and the DDP step time is predicted as the
1-process step time + the step's all-reduces, then compared with the measured 2-process step time.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sharding_memory import (GAN_CONFIG, LAUNCH, ROOT, SHORT_RUN, TEARDOWN_ABORTS, count_parameters,  # noqa: E402
                             machine_lines, read_metrics, run_checked, shipped_configs, teardown_note, train_command)

BATCH_SIZES = [64, 256, 1024, 4096]
QUICK_BATCH_SIZES = [64, 4096]  # the latency-bound and the compute-bound end
HYPOTHETICAL_HIDDEN = 3535  # gan_ring's MLPs (depth 3) widened: ~25M parameters each, ~50M in all
COUNT_STRATEGIES = ["ddp", "zero1", "zero2", "zero3", "fsdp"]
QUICK_COUNT_STRATEGIES = ["ddp", "zero2", "zero3", "fsdp"]  # zero1 runs the same DeepSpeed code path as zero2
STOP_CHECK = {"every": 1}  # gendist's stop-flag all-reduce runs every this many steps (set in main)
ALLREDUCE_SIZES = [4, 1024, 16384, 65536, 134664, 262144, 1048576, 4194304]


# == (b) counting collectives: the worker ==========================================================================

COLLECTIVES = ["all_reduce", "all_reduce_coalesced", "all_gather", "all_gather_into_tensor", "all_gather_single",
               "_all_gather_base", "all_gather_coalesced", "reduce_scatter", "reduce_scatter_tensor",
               "reduce_scatter_single", "_reduce_scatter_base", "reduce", "broadcast", "all_to_all",
               "all_to_all_single", "barrier", "gather", "scatter", "send", "recv", "isend", "irecv",
               "all_gather_object", "broadcast_object_list"]
KIND = {"all_reduce": "all_reduce", "all_reduce_coalesced": "all_reduce", "reduce": "reduce",
        "all_gather": "all_gather", "all_gather_into_tensor": "all_gather", "all_gather_single": "all_gather",
        "_all_gather_base": "all_gather", "all_gather_coalesced": "all_gather", "reduce_scatter": "reduce_scatter",
        "reduce_scatter_tensor": "reduce_scatter", "reduce_scatter_single": "reduce_scatter",
        "_reduce_scatter_base": "reduce_scatter", "broadcast": "broadcast"}


def _tensor_bytes(value) -> int:
    import torch

    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(item) for item in value)
    return 0


def _payload(name: str, args: tuple, kwargs: dict) -> int:
    """Logical size of a collective: the full (gathered / pre-scatter) tensor for all-gather and reduce-scatter,
    the tensor itself for all-reduce, reduce and broadcast."""
    def arg(index: int, *keys: str):
        for key in keys:
            if key in kwargs:
                return kwargs[key]
        return args[index] if len(args) > index else None

    if name in ("all_gather_into_tensor", "all_gather_single", "_all_gather_base"):
        return _tensor_bytes(arg(0, "output_tensor", "output"))
    if name in ("all_gather", "all_gather_coalesced"):
        return _tensor_bytes(arg(0, "tensor_list", "output_tensor_lists"))
    if name in ("reduce_scatter_tensor", "reduce_scatter_single", "_reduce_scatter_base"):
        return _tensor_bytes(arg(1, "input", "input_tensor"))
    if name == "reduce_scatter":
        return _tensor_bytes(arg(1, "input_list"))
    return _tensor_bytes(arg(0, "tensor", "tensors", "object_list"))


def count_worker(out: str, gendist_args: list[str]) -> None:
    """Run `gendist <args>` in this process with every torch.distributed collective wrapped and counted.
    Installed before gendist and DeepSpeed import anything (DeepSpeed's comm backend keeps references to
    torch.distributed's functions from its initialization on); nested calls count once (outermost)."""
    import torch.distributed as dist
    import torch.distributed.distributed_c10d as c10d

    local = threading.local()
    region = {"name": None}
    calls: dict = collections.defaultdict(collections.Counter)
    payload: dict = collections.defaultdict(collections.Counter)
    progress = {"steps": 0}

    def wrap(name, function):
        def wrapper(*args, **kwargs):
            depth = getattr(local, "depth", 0)
            if depth == 0 and region["name"] is not None:
                calls[region["name"]][name] += 1
                payload[region["name"]][name] += _payload(name, args, kwargs)
            local.depth = depth + 1
            try:
                return function(*args, **kwargs)
            finally:
                local.depth = depth
        wrapper._gendist_counted = True
        return wrapper

    for name in COLLECTIVES:
        for module in (dist, c10d):
            function = getattr(module, name, None)
            if function is not None and not getattr(function, "_gendist_counted", False):
                setattr(module, name, wrap(name, function))

    from gendist.engine import run as run_module
    from gendist.engine import trainer as trainer_module

    train_step, fit, after_step = (trainer_module.Trainer.train_step, trainer_module.Trainer.fit,
                                   run_module.Hooks.after_step)

    def counted_train_step(self):
        region["name"] = "step"
        try:
            return train_step(self)
        finally:
            region["name"] = "loop"
            progress["steps"] += 1

    def counted_after_step(self, trainer, bar):  # log steps' metric reduction, checkpoints: not per-step traffic
        region["name"] = None
        try:
            return after_step(self, trainer, bar)
        finally:
            region["name"] = "loop"

    def counted_fit(self, hooks):
        region["name"] = "loop"
        try:
            return fit(self, hooks)
        finally:
            region["name"] = None
            rank = dist.get_rank() if dist.is_initialized() else 0
            Path(f"{out}.rank{rank}.json").write_text(json.dumps(
                {"steps": progress["steps"], "calls": calls, "bytes": payload}))

    trainer_module.Trainer.train_step = counted_train_step
    trainer_module.Trainer.fit = counted_fit
    run_module.Hooks.after_step = counted_after_step
    sys.argv = ["gendist", *gendist_args]
    from gendist.cli import entry_point

    entry_point()


def count_collectives(strategy: str, steps: int, workdir: Path, source: Path) -> dict:
    """Collectives per training step of gan_ring under `strategy` (2 ranks), from rank 0's counts."""
    run_dir = workdir / f"count-{strategy}"
    out = workdir / f"count-{strategy}"
    overrides = [f"run.dir={run_dir}", f"train.max_steps={steps}", f"log.every={steps}", *SHORT_RUN]
    command = train_command(strategy, GAN_CONFIG, overrides, 2,
                            script=[str(Path(__file__).resolve()), "--count-worker", str(out)])
    run_checked(command, source)
    data = json.loads(Path(f"{out}.rank0.json").read_text())
    per_step = collections.defaultdict(lambda: {"calls": 0.0, "bytes": 0.0})
    for where in ("step", "loop"):
        for name, count in data["calls"].get(where, {}).items():
            key = (where, KIND.get(name, name))
            per_step[key]["calls"] += count / data["steps"]
            per_step[key]["bytes"] += data["bytes"][where][name] / data["steps"]
    return {"strategy": strategy, "steps": data["steps"], "per_step": dict(per_step),
            "command": shlex.join(command)}


# == (c) all-reduce microbenchmark ===================================================================================

def _allreduce_worker(rank: int, world: int, port: int, sizes: list[int], block_s: float, rounds: int,
                      out: str) -> None:
    """Per size: the number of back-to-back all-reduces that takes about `block_s` (agreed over ranks); then
    `rounds` rounds over all sizes (interleaved, so load that comes and goes touches every size alike), each a
    timed block after a barrier; the figure is the median block's time per all-reduce."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    tensors = {size: torch.ones(max(1, size // 4), dtype=torch.float32) for size in sizes}
    reps = {}
    for size, tensor in tensors.items():
        for _ in range(5):
            dist.all_reduce(tensor)
        dist.barrier()
        started = time.perf_counter()
        for _ in range(5):
            dist.all_reduce(tensor)
        count = torch.tensor([max(3, int(block_s / max((time.perf_counter() - started) / 5, 1e-7)))])
        dist.broadcast(count, 0)  # every rank makes the same number of calls
        reps[size] = int(count)
    blocks = collections.defaultdict(list)
    for _ in range(rounds):
        for size, tensor in tensors.items():
            dist.barrier()
            started = time.perf_counter()
            for _ in range(reps[size]):
                dist.all_reduce(tensor)
            blocks[size].append((time.perf_counter() - started) / reps[size])
    if rank == 0:
        Path(out).write_text(json.dumps({tensor.numel() * 4: statistics.median(blocks[size])
                                         for size, tensor in tensors.items()}))
    dist.destroy_process_group()


def allreduce_benchmark(sizes: list[int], block_s: float, rounds: int, workdir: Path) -> dict[int, float]:
    import torch.multiprocessing as mp

    from sharding_memory import free_port

    out = workdir / "allreduce.json"
    os.environ["OMP_NUM_THREADS"] = "1"
    mp.spawn(_allreduce_worker, args=(2, free_port(), sizes, block_s, rounds, str(out)), nprocs=2, join=True)
    return {int(k): v for k, v in json.loads(out.read_text()).items()}


def fit_alpha_beta(times: dict[int, float]) -> tuple[float, float]:
    """Least squares t = alpha + B / beta (seconds, bytes/s), each point weighted by 1/t (relative error), so the
    small messages that fix alpha count as much as the large ones that fix beta."""
    import numpy as np

    sizes = np.array(sorted(times), dtype=float)
    values = np.array([times[int(s)] for s in sizes])
    weights = 1.0 / values
    design = np.stack([np.ones_like(sizes), sizes], axis=1) * weights[:, None]
    (alpha, inverse_beta), *_ = np.linalg.lstsq(design, values * weights, rcond=None)
    return float(alpha), float(1.0 / inverse_beta)


# == (a) timing ====================================================================================================

def step_counts(batch: int, quick: bool) -> tuple[int, int]:
    """(short, long) steps: the long run steps for about 1.2 s (quick) or 4 s on one process here."""
    estimate = 0.006 + 16e-6 * batch  # seconds per step, measured roughly on this 2-core machine
    target = 1.2 if quick else 4.0
    short = max(6, round(target / estimate / 5))
    return short, 5 * short


def timed_run(processes: int, batch: int, steps: int, log_every: int, workdir: Path, source: Path,
              tag: str) -> dict[int, float]:
    run_dir = workdir / tag
    overrides = [f"run.dir={run_dir}", f"train.batch_size={batch}", f"train.max_steps={steps}",
                 f"log.every={log_every}", *SHORT_RUN]
    strategy = "single" if processes == 1 else "ddp"
    run_checked(train_command(strategy, GAN_CONFIG, overrides, processes), source)
    return {r["step"]: r["time/elapsed_s"] for r in read_metrics(run_dir) if "time/elapsed_s" in r}


def measure_throughput(batches: list[int], repeats: int, quick: bool, workdir: Path, source: Path) -> dict:
    samples = collections.defaultdict(list)  # (processes, batch) -> [(two-run it/s, in-run it/s)]
    for repeat in range(repeats):
        order = (1, 2) if repeat % 2 == 0 else (2, 1)
        for batch in batches:
            short, long = step_counts(batch, quick)
            for processes in order:
                runs = ("short", "long") if repeat % 2 == 0 else ("long", "short")
                elapsed = {}
                for kind in runs:
                    steps = short if kind == "short" else long
                    elapsed[kind] = timed_run(processes, batch, steps, short, workdir, source,
                                              f"t{repeat}-{processes}-{batch}-{kind}")
                two_run = (long - short) / (elapsed["long"][long] - elapsed["short"][short])
                in_run = (long - short) / (elapsed["long"][long] - elapsed["long"][short])
                samples[(processes, batch)].append((two_run, in_run))
                print(f"# batch {batch} x {processes} proc: {two_run:.1f} it/s (in-run {in_run:.1f})",
                      file=sys.stderr, flush=True)
    return {key: {"it_s": statistics.median(v[0] for v in values),
                  "it_s_in_run": statistics.median(v[1] for v in values),
                  "all": [v[0] for v in values]} for key, values in samples.items()}


# == the model =====================================================================================================

def formula_collectives(strategy: str, pg: int, pd: int) -> list[tuple[str, float, float]]:
    """(kind, payload bytes, calls) of one gendist GAN step (n_critic = 1, fp32 gradients and parameters).

    D phase: G forward (frozen), D forward on real and on fake (two calls), backward through D.
    G phase: G forward, D forward (frozen), backward through D (input gradients only) and G.
    DDP: one all-reduce of the trained unit's gradients per phase (frozen units are called unwrapped).
    ZeRO-1/2 (DeepSpeed 0.19 defaults, use_multi_rank_bucket_allreduce=True): the gradient bucket is
    all-reduced (not reduce-scattered) and each rank keeps its partition; after the step the updated
    partitions are all-gathered; plus one scalar all-reduce per step (gradient norm / overflow).
    ZeRO-3 and FSDP (reshard after forward): every forward and every backward through a unit gathers its
    parameters (frozen units too): G 3 times (D-phase forward, G-phase forward and backward), D 6 times
    (2 forwards + 2 backwards in the D phase, 1 + 1 in the G phase); the trained unit's gradients are
    reduce-scattered. Every strategy adds gendist's stop-flag all-reduce (4 bytes) every STOP_CHECK["every"]
    steps (`Trainer.fit`; read from the measured gendist, 1 where it has no STOP_CHECK_EVERY).
    Call counts for DDP follow its buckets (first 1 MiB, then 25 MiB); the sharded strategies' call counts are
    taken from the counted runs where given (see `calls_from_counts`)."""
    every = STOP_CHECK["every"]
    flag = [("all_reduce", 4.0 / every, 1.0 / every)]
    if strategy == "ddp":
        return [("all_reduce", 4.0 * p, ddp_buckets(4 * p)) for p in (pg, pd)] + flag
    if strategy in ("zero1", "zero2"):
        return ([("all_reduce", 4.0 * (pg + pd), 2.0), ("all_reduce", 8.0, 2.0), ("all_gather", 4.0 * (pg + pd), 2.0)]
                + flag)
    if strategy in ("zero3", "fsdp"):
        return [("all_gather", 4.0 * (3 * pg + 6 * pd), 36.0), ("reduce_scatter", 4.0 * (pg + pd), 8.0)] + flag
    raise ValueError(strategy)


def ddp_buckets(size: float) -> float:
    first = 1 << 20
    return 1.0 + (math.ceil((size - first) / (25 << 20)) if size > first else 0)


def calls_from_counts(strategy: str, entries: list[tuple[str, float, float]], counted: dict | None) -> list:
    """The sharded strategies' formula entries with the counted number of calls (the three networks projected
    share gan_ring's structure: 4 Linear layers per network), keeping the formula's bytes; counted collectives the
    formula lacks (ZeRO-3's small trace-check broadcasts and scalar all-reduces) are added with their counted
    size. DDP keeps its bucket formula (its call count depends on the unit's size)."""
    if counted is None or strategy == "ddp":
        return entries
    totals = collections.defaultdict(lambda: [0.0, 0.0])  # kind -> [calls, bytes] per step
    for (_, kind), value in counted["per_step"].items():
        totals[kind][0] += value["calls"]
        totals[kind][1] += value["bytes"]
    result = []
    for kind in dict.fromkeys([k for k, _, _ in entries] + list(totals)):
        small = [e for e in entries if e[0] == kind and e[1] <= 64]
        big = [e for e in entries if e[0] == kind and e[1] > 64]
        result += small
        counted_calls, counted_bytes = totals.get(kind, (0.0, 0.0))
        spare_calls = counted_calls - sum(c for *_, c in small)
        if big:
            formula_calls = sum(c for *_, c in big)
            calls = max(1.0, spare_calls) if kind in totals else formula_calls
            result += [(k, size, calls * c / formula_calls) for k, size, c in big]
        elif spare_calls > 0.5:
            result.append((kind, max(0.0, counted_bytes - sum(s for _, s, _ in small)), spare_calls))
    return result


class Interconnect:
    """Hierarchical cluster: `per_node` GPUs per node on NVLink, nodes joined by `node_bw` per node.

    Bandwidth terms (B = payload bytes, g = GPUs per node used, M = nodes):
      all-reduce      2(g-1)/g * B / nvlink_bw + 2(M-1)/M * B / node_bw   (reduce-scatter in the node, all-reduce
                      of each GPU's 1/g shard across nodes - the g shards share the node's link - all-gather)
      all-gather, reduce-scatter   (g-1)/g * B / nvlink_bw + (M-1)/M * B / node_bw
      broadcast       B / nvlink_bw (+ B / node_bw across nodes)
    Latency terms: launch + per step: all-reduce 2(g-1) NVLink steps + 2 ceil(log2 M) network steps (tree across
    nodes); all-gather, reduce-scatter and broadcast (g-1) NVLink steps + (M-1) network steps (ring)."""

    def __init__(self, node_bw: float, launch_s: float, nvlink_step_s: float, net_step_s: float,
                 per_node: int = 8, nvlink_bw: float = 450e9):
        self.nvlink_bw, self.node_bw, self.launch_s = nvlink_bw, node_bw, launch_s
        self.nvlink_step_s, self.net_step_s, self.per_node = nvlink_step_s, net_step_s, per_node

    def time(self, kind: str, size: float, gpus: int) -> float:
        g = min(gpus, self.per_node)
        m = math.ceil(gpus / self.per_node)
        if kind == "all_reduce":
            bandwidth = 2 * (g - 1) / g * size / self.nvlink_bw + 2 * (m - 1) / m * size / self.node_bw
            latency = 2 * (g - 1) * self.nvlink_step_s + 2 * math.ceil(math.log2(m)) * self.net_step_s
        elif kind in ("all_gather", "reduce_scatter", "reduce"):
            bandwidth = (g - 1) / g * size / self.nvlink_bw + (m - 1) / m * size / self.node_bw
            latency = (g - 1) * self.nvlink_step_s + (m - 1) * self.net_step_s
        else:  # broadcast
            bandwidth = size / self.nvlink_bw + (size / self.node_bw if m > 1 else 0.0)
            latency = (g - 1) * self.nvlink_step_s + (m - 1) * self.net_step_s
        return self.launch_s + latency + bandwidth


def gpu_compute_s(pg: int, pd: int, pack: int, batch: int, flops: float, floor_s: float) -> float:
    """One GAN step on one GPU: forward 2P FLOPs per sample, weight+input backward 4P, input-only backward 2P.
    G: 2 (D-phase forward) + 2 + 4 (G phase) = 8 P_G; D: 2x(2 + 4) (real and fake, D phase) + 2 + 2 (G phase)
    = 16 P_D per sample, D's per-sample share divided by the PacGAN pack. At least `floor_s` (kernel launches)."""
    return max(floor_s, batch * (8 * pg + 16 * pd / pack) / flops)


def project(strategy: str, pg: int, pd: int, pack: int, batch: int, gpus: int, net: Interconnect, flops: float,
            floor_s: float, counted: dict | None) -> dict:
    entries = calls_from_counts(strategy, formula_collectives(strategy, pg, pd), counted)
    comm = sum(calls * net.time(kind, size / calls, gpus) for kind, size, calls in entries)
    compute = gpu_compute_s(pg, pd, pack, batch, flops, floor_s)
    return {"compute": compute, "comm": comm, "eff_serial": compute / (compute + comm),
            "eff_overlap": compute / max(compute, comm)}


# == report ========================================================================================================

def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g}"


def number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 or value == int(value) else f"{value:.2g}"


def projection_table(args, models, counts, net: "Interconnect") -> list[str]:
    gan, largest, hypothetical = models
    header = "| network | P_G / P_D | batch/GPU | strategy | bytes/step | calls/step | compute ms |"
    rule = "|---|---|---:|---|---:|---:|---:|"
    for gpus in args.gpus:
        header += f" {gpus} GPUs: comm ms · eff. (no overlap / ideal) |"
        rule += "---|"
    lines = [header, rule]
    for model, label in ((gan, "gan_ring (shipped)"), (largest, f"{Path(largest['config']).stem} (largest shipped)"),
                         (hypothetical, f"hypothetical (gan_ring MLP, hidden {HYPOTHETICAL_HIDDEN})")):
        mg, md = model["units"]["generator"], model["units"]["discriminator"]
        batch = model["batch_size"]
        for strategy in ("ddp", "zero2", "zero3", "fsdp"):
            counted = counts.get(strategy) if counts else None
            entries = calls_from_counts(strategy, formula_collectives(strategy, mg, md), counted)
            row = (f"| {label} | {mg:,} / {md:,} | {batch} | {strategy if strategy != 'zero2' else 'zero1/2'} | "
                   f"{sum(s for _, s, _ in entries) / 1e6:.3g} MB | {sum(c for *_, c in entries):.0f} |")
            for index, gpus in enumerate(args.gpus):
                result = project(strategy, mg, md, model["pack"], batch, gpus, net, args.gpu_tflops * 1e12,
                                 args.gpu_floor_ms / 1e3, counted)
                if index == 0:
                    row += f" {ms(result['compute'])} |"
                row += f" {ms(result['comm'])} · {result['eff_serial']:.0%} / {result['eff_overlap']:.0%} |"
            lines.append(row)
    return lines


def render(args, machine, models, counts, allreduce, alpha, beta, throughput, net, seconds, command) -> str:
    gan, largest, hypothetical = models
    pg, pd = gan["units"]["generator"], gan["units"]["discriminator"]
    mode = "quick mode" if args.quick else "full run"
    lines = [f"## Scaling ({mode})", ""]
    lines += machine
    lines += [f"- Command: `{command}` ({seconds / 60:.1f} min in all)"]
    if args.replay:
        lines.append(f"- Rendered by `{shlex.join(['python', 'benchmarks/scaling.py', *sys.argv[1:]])}` from the "
                     "measurements of that command")
    lines.append("")

    if throughput:
        lines += ["### (a) Measured steps/s, gan_ring, 1 process vs 2 processes (DDP over gloo)", "",
                  "Runs: `python -m gendist train configs/gan_ring.yaml train.batch_size=B train.max_steps=S "
                  f"log.every=S_short {' '.join(SHORT_RUN)}` (1 process) and the same under `python -m "
                  "accelerate.commands.launch --config_file launch/cpu-ddp.yaml` (2 processes), with "
                  "ACCELERATE_USE_CPU=true OMP_NUM_THREADS=1. it/s = (S_long - S_short) / (t_long - t_short) with t "
                  "the `time/elapsed_s` logged at each run's last step (the trainer's clock, started after "
                  f"start-up); median of {args.repeats} alternating repeat(s). In-run = (S_long - S_short) / the "
                  "long run's own elapsed time between those two steps (a cross-check that needs one run).", "",
                  "| batch/process | steps (short/long) | 1 proc it/s | 2 procs it/s | 1 proc samples/s | "
                  "2 procs samples/s | speed-up (samples/s) | 2-proc efficiency | in-run it/s (1 / 2 procs) | "
                  "repeats it/s (1 / 2 procs) |", "|---:|---|---:|---:|---:|---:|---:|---:|---|---|"]
        for batch in args.batch_sizes:
            one, two = throughput[(1, batch)], throughput[(2, batch)]
            short, long = step_counts(batch, args.quick)
            lines.append(f"| {batch} | {short}/{long} | {one['it_s']:.1f} | {two['it_s']:.1f} | "
                         f"{one['it_s'] * batch:,.0f} | {two['it_s'] * 2 * batch:,.0f} | "
                         f"{two['it_s'] * 2 / one['it_s']:.2f} | {two['it_s'] / one['it_s']:.0%} | "
                         f"{one['it_s_in_run']:.1f} / {two['it_s_in_run']:.1f} | "
                         f"{', '.join(f'{v:.1f}' for v in one['all'])} / {', '.join(f'{v:.1f}' for v in two['all'])} |")
        lines.append("")

    if counts:
        lines += ["### (b) Collectives per training step, counted (gan_ring, 2 ranks)", "",
                  f"P_G = {pg:,}, P_D = {pd:,} (fp32: 4 bytes each). Counted on rank 0 by wrapping every "
                  "torch.distributed collective (`--count-worker`) over "
                  f"{next(iter(counts.values()))['steps']} steps; payload = the full logical tensor (gathered size "
                  "for all-gather, input size for reduce-scatter). \"step\" = inside `Trainer.train_step`, \"loop\" = "
                  f"between steps (gendist's stop-flag all-reduce, every {STOP_CHECK['every']} step(s)); log-step "
                  "metric reductions and checkpoints are "
                  "excluded. Formula: see the model below.", "",
                  "| strategy | where | collective | calls/step | payload bytes/step | formula bytes/step | "
                  "counted ÷ formula |", "|---|---|---|---:|---:|---:|---:|"]
        for strategy, data in counts.items():
            formula = collections.Counter()
            for kind, size, _ in formula_collectives(strategy, pg, pd):
                formula[kind] += size
            flag = 4.0 / STOP_CHECK["every"]
            for (where, kind), value in sorted(data["per_step"].items()):
                expected = flag if where == "loop" else formula[kind] - (flag if kind == "all_reduce" else 0)
                ratio = f"{value['bytes'] / expected:.4f}" if expected else "(not in formula)"
                lines.append(f"| {strategy} | {where} | {kind} | {value['calls']:.2f} | {number(value['bytes'])} | "
                             f"{number(expected)} | {ratio} |")
        lines.append("")

    t_fit = {size: alpha + size / beta for size in allreduce}
    lines += ["### (c) The model against this machine (2 processes, gloo, 127.0.0.1)", "",
              "All-reduce of B bytes (float32) between 2 processes: time per call in back-to-back blocks of about "
              f"{20 if args.quick else 50} ms, median of {7 if args.quick else 21} rounds interleaved over the sizes:",
              "",
              "| B (bytes) | measured (µs) | fit α + B/β (µs) | fit ÷ measured |", "|---:|---:|---:|---:|"]
    for size, value in sorted(allreduce.items()):
        lines.append(f"| {size:,} | {value * 1e6:.1f} | {t_fit[size] * 1e6:.1f} | {t_fit[size] / value:.2f} |")
    lines += ["", f"Fit (weighted by 1/t): α = {alpha * 1e6:.1f} µs, β = {beta / 1e6:.0f} MB/s (for N = 2 a ring "
              "all-reduce moves 2(N-1)/N·B = B bytes each way per rank, so β is also the per-direction bandwidth).",
              ""]
    if throughput:
        lines += [f"Predicted 2-process DDP step = measured 1-process step + 2 gradient all-reduces ({4 * pg:,} and "
                  f"{4 * pd:,} bytes) + 1/{STOP_CHECK['every']} stop-flag all-reduce (4 bytes), each α + B/β, not "
                  "overlapped (each unit is "
                  "a single DDP bucket, reduced after its backward; the next phase waits for it):", "",
                  "| batch/process | 1 proc ms/step (measured) | predicted comm ms/step | predicted 2-proc ms/step | "
                  "measured 2-proc ms/step | predicted ÷ measured | measured 2-proc − 1-proc ms/step |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        comm = sum(alpha + size / beta for size in (4 * pg, 4 * pd)) + (alpha + 4 / beta) / STOP_CHECK["every"]
        for batch in args.batch_sizes:
            one, two = 1 / throughput[(1, batch)]["it_s"], 1 / throughput[(2, batch)]["it_s"]
            lines.append(f"| {batch} | {ms(one)} | {ms(comm)} | {ms(one + comm)} | {ms(two)} | "
                         f"{(one + comm) / two:.2f} | {ms(two - one)} |")
        lines.append("")

    lines += ["### Projection: 8, 64 and 512 GPUs (model on paper)", "",
              f"Interconnect: {net.per_node} GPUs per node on NVLink at {net.nvlink_bw / 1e9:.0f} GB/s per direction "
              f"per GPU; nodes joined at {net.node_bw / 1e9:.0f} GB/s per node per direction "
              f"({net.node_bw * 8 / 1e9:.0f} Gb/s: one 400 Gb/s NIC per node at the default); latency per collective "
              f"{net.launch_s * 1e6:.0f} µs launch + {net.nvlink_step_s * 1e6:.1f} µs per NVLink step + "
              f"{net.net_step_s * 1e6:.0f} µs per network step (all-reduce: 2(g-1) NVLink steps and 2·ceil(log2 M) "
              "network steps, a tree across M nodes; all-gather / reduce-scatter: (g-1) + (M-1), rings). "
              f"Compute: one GPU step = max({args.gpu_floor_ms} ms launch floor, batch × FLOPs/sample ÷ "
              f"{args.gpu_tflops:g} TFLOP/s), FLOPs/sample = 8 P_G + 16 P_D / pack (fp32, gendist's default). Weak "
              "scaling: batch per GPU fixed. Efficiency = compute ÷ step time, with no overlap (step = compute + "
              "communication: a phase's reduction precedes its optimizer step and the next phase calls the unit "
              "just stepped, so only the phase's own backward could hide it) and with ideal overlap "
              "(step = max(compute, communication)). Sharded strategies' call counts from the counted gan_ring runs "
              "(same 4-Linear MLPs).", ""]
    lines += projection_table(args, models, counts, net)
    if args.alt_node_gbs:
        alt = Interconnect(args.alt_node_gbs * 1e9, net.launch_s, net.nvlink_step_s, net.net_step_s, net.per_node,
                           nvlink_bw=net.nvlink_bw)
        lines += ["", f"The same with {args.alt_node_gbs:.0f} GB/s per node between nodes (8 x 400 Gb/s NICs, one per "
                  "GPU, as DGX H100-class nodes have):", ""]
        lines += projection_table(args, models, counts, alt)
    lines.append("")
    return "\n".join(lines)


def measure_all(args, count_strategies: list[str]) -> dict:
    """Everything measured on this machine, as JSON-able data (see --raw / --replay)."""
    started = time.perf_counter()
    machine = machine_lines(args.source, args.source_label)
    everything = count_parameters(args.source, [(config, []) for config in shipped_configs(args.source)]
                                  + [(GAN_CONFIG, [f"model.hidden={HYPOTHETICAL_HIDDEN}"])])
    shipped, hypothetical = everything[:-1], everything[-1]
    gan = next(m for m in shipped if m["config"] == GAN_CONFIG)
    largest = max(shipped, key=lambda m: sum(m["units"].values()))
    stop_every = int(run_checked([sys.executable, "-c", "import gendist.engine.trainer as t; "
                                  "print(getattr(t, 'STOP_CHECK_EVERY', 1))"], args.source).stdout.split()[-1])
    with tempfile.TemporaryDirectory(prefix="gendist-scaling-") as tmp:
        workdir = Path(tmp)
        print("# all-reduce microbenchmark", file=sys.stderr, flush=True)
        allreduce = allreduce_benchmark(ALLREDUCE_SIZES, 0.02 if args.quick else 0.05, 7 if args.quick else 21,
                                        workdir)
        counts = {}
        for strategy in count_strategies:
            counted = count_collectives(strategy, 10 if args.quick else 20, workdir, args.source)
            counted["per_step"] = {"/".join(key): value for key, value in counted["per_step"].items()}
            counts[strategy] = counted
            print(f"# counted {strategy}", file=sys.stderr, flush=True)
        throughput = None if args.no_timing else measure_throughput(args.batch_sizes, args.repeats, args.quick,
                                                                    workdir, args.source)
    return {"args": {"quick": args.quick, "repeats": args.repeats, "batch_sizes": args.batch_sizes},
            "stop_check_every": stop_every,
            "machine": machine, "models": [gan, largest, hypothetical], "counts": counts, "allreduce": allreduce,
            "throughput": {f"{p}x{b}": v for (p, b), v in throughput.items()} if throughput else None,
            "seconds": time.perf_counter() - started, "teardown_aborts": list(TEARDOWN_ABORTS),
            "command": shlex.join(["python", "benchmarks/scaling.py", *sys.argv[1:]])}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--count-worker":
        count_worker(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 64 and 4096, 1 repeat, shorter runs, 4 "
                        "strategies counted (~2.5 min on 2 idle cores)")
    parser.add_argument("--repeats", type=int, help="alternating repeats per point (default 3; --quick: 1)")
    parser.add_argument("--batch-sizes", type=int, nargs="+",
                        help=f"per process (default {' '.join(map(str, BATCH_SIZES))}; --quick: "
                             f"{' '.join(map(str, QUICK_BATCH_SIZES))})")
    parser.add_argument("--count-strategies", nargs="*", help="strategies whose collectives are counted "
                        f"(default {' '.join(COUNT_STRATEGIES)}; --quick: {' '.join(QUICK_COUNT_STRATEGIES)})")
    parser.add_argument("--no-timing", action="store_true", help="skip (a) and the comparison in (c)")
    parser.add_argument("--gpus", type=int, nargs="+", default=[8, 64, 512])
    parser.add_argument("--nvlink-gbs", type=float, default=450.0, help="NVLink GB/s per direction per GPU")
    parser.add_argument("--node-gbs", type=float, default=50.0, help="inter-node GB/s per node per direction")
    parser.add_argument("--alt-node-gbs", type=float, default=400.0,
                        help="a second projection with this inter-node GB/s per node (0: none)")
    parser.add_argument("--launch-us", type=float, default=5.0, help="fixed latency per collective (µs)")
    parser.add_argument("--nvlink-step-us", type=float, default=0.7, help="latency per NVLink step (µs)")
    parser.add_argument("--net-step-us", type=float, default=3.0, help="latency per inter-node step (µs)")
    parser.add_argument("--gpu-tflops", type=float, default=30.0, help="achieved fp32 TFLOP/s of one GPU")
    parser.add_argument("--gpu-floor-ms", type=float, default=1.0, help="launch-bound floor of one GPU step (ms)")
    parser.add_argument("--source", type=Path, default=ROOT, help="gendist checkout to measure (default: this one)")
    parser.add_argument("--source-label", default="", help="what --source is (e.g. 'git archive of abc1234')")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scaling.md")
    parser.add_argument("--raw", type=Path, help="also save the measurements as JSON here")
    parser.add_argument("--replay", type=Path, help="render from a --raw file (e.g. with other interconnect "
                        "assumptions) instead of measuring")
    args = parser.parse_args()
    args.source = args.source.resolve()
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.batch_sizes = args.batch_sizes or (QUICK_BATCH_SIZES if args.quick else BATCH_SIZES)
    count_strategies = args.count_strategies if args.count_strategies is not None else (
        QUICK_COUNT_STRATEGIES if args.quick else COUNT_STRATEGIES)
    for strategy in count_strategies:
        if strategy not in LAUNCH:
            raise SystemExit(f"--count-strategies: unknown strategy {strategy}")
    started = time.perf_counter()
    net = Interconnect(args.node_gbs * 1e9, args.launch_us * 1e-6, args.nvlink_step_us * 1e-6,
                       args.net_step_us * 1e-6, nvlink_bw=args.nvlink_gbs * 1e9)
    if args.replay:
        raw = json.loads(args.replay.read_text())
        for key in ("quick", "repeats", "batch_sizes"):
            setattr(args, key, raw["args"][key])
    else:
        raw = measure_all(args, count_strategies)
    if args.raw:
        args.raw.write_text(json.dumps(raw, indent=1))
    STOP_CHECK["every"] = raw.get("stop_check_every", 1)
    machine = raw["machine"] + teardown_note(raw.get("teardown_aborts", []))
    gan, largest, hypothetical = raw["models"]
    counts = {name: {**value, "per_step": {tuple(key.split("/")): v for key, v in value["per_step"].items()}}
              for name, value in raw["counts"].items()}
    allreduce = {int(k): v for k, v in raw["allreduce"].items()}
    alpha, beta = fit_alpha_beta(allreduce)
    throughput = {(int(k.split("x")[0]), int(k.split("x")[1])): v for k, v in raw["throughput"].items()} \
        if raw["throughput"] else None
    seconds = raw["seconds"] if args.replay else time.perf_counter() - started
    text = render(args, machine, (gan, largest, hypothetical), counts, allreduce, alpha, beta, throughput, net,
                  seconds, raw["command"])
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
