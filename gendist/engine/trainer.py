"""The training loop: phases, accumulation, precision, NaN guard, EMA, and the step-boundary hooks
(metrics, samples, checkpoints, evaluation, stop requests)."""
from __future__ import annotations

import contextlib
import json
import os
import random
import signal
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import xxhash
from tqdm import tqdm

from gendist.checkpoint import CheckpointWriter, ema_file, load_tensors, load_torch, rank_file
from gendist.config import RunConfig, lr_scale
from gendist.data.binarize import binarize
from gendist.distributed import DistInfo, any_rank, reduce_mean
from gendist.engine.compiled import CompileWatch, maybe_eager, runs_eager
from gendist.engine.ema import EMA
from gendist.engine.local_tables import LocalTable, load_table_states
from gendist.engine.noise import StepNoise
from gendist.engine.strategies import StepResult, Strategy
from gendist.errors import UserError
from gendist.recipes.base import Batch, Phase, Recipe, unit_of
from gendist.tracking import truncate_jsonl


LAUNCHER_DIED = -1  # stop_signal value when the launcher process is gone
# Steps between stop-request checks when several processes run: the check is a collective (every rank must
# stop at the same step), so it is not paid every step; a preemption grace period is many steps long.
STOP_CHECK_EVERY = 10


def build_local_tables(recipe, loader, config: RunConfig, device: torch.device) -> dict[str, LocalTable]:
    """The recipe's per-datapoint tables, each holding the rows of the samples this rank's loader reads."""
    specs = recipe.local_tables() if hasattr(recipe, "local_tables") else {}
    if not specs:
        return {}
    if config.data.split_mode != "owner":
        raise UserError(f"config: per-datapoint state ({', '.join(specs)}) needs data.split_mode=owner (a stable "
                        f"sample-to-rank assignment), got {config.data.split_mode}")
    # the owner-mode loader found this rank's sample ids in its start-up scan
    return {name: LocalTable(name, spec, loader.owned_ids, device) for name, spec in specs.items()}


class TrainingDiverged(RuntimeError):
    """More than `train.max_bad_steps` non-finite steps in a row."""


class Trainer:
    def __init__(self, config: RunConfig, recipe: Recipe, strategy: Strategy, loader, dist_info: DistInfo,
                 run_dir: Path, loader_b=None, compile_watch: CompileWatch | None = None, channels_last: bool = False):
        self.config, self.recipe, self.strategy = config, recipe, strategy
        self.loader, self.dist, self.run_dir = loader, dist_info, run_dir
        self.loader_b = loader_b  # domain B of two-domain data: an independent, resumable stream
        self.phases: list[Phase] = recipe.phases()
        self.step = 0
        self.bad_steps_in_a_row: dict[str, int] = defaultdict(int)  # per phase: other phases may be fine
        self.skipped_steps: dict[str, int] = defaultdict(int)
        self.noise = StepNoise(config.train.seed, dist_info.device, dist_info.rank, dist_info.world_size,
                               config.train.grad_accum)
        # EMA of the sampling networks, each in its network's own layout (DeepSpeedStrategy refuses ZeRO-3)
        self.ema: dict[str, EMA] = {}
        if config.train.ema_decay > 0:
            self.ema = {name: self.new_ema(name) for name in recipe.ema_networks}
        unit_of_network = unit_of(recipe.units)
        self.ema_units = {unit_of_network[name] for name in self.ema}
        self.pending: dict[str, list[torch.Tensor]] = defaultdict(list)  # logged values since the last log line
        # (step, phase, fp16 overflow?, skip flag on the device) of each optimizer step since the last settle
        self.step_flags: list[tuple[int, str, bool, torch.Tensor]] = []
        self.optimizer_steps: dict[str, int] = defaultdict(int)  # since the last log line
        self.stop_signal: int | None = None
        self.nan_steps = set(config.train.inject_nan_steps)
        self.nan_phase = config.train.inject_nan_phase or self.phases[0].name
        if self.nan_steps and self.nan_phase not in {phase.name for phase in self.phases}:
            raise UserError(f"train.inject_nan_phase: this run has no phase '{self.nan_phase}' (phases: "
                            f"{', '.join(phase.name for phase in self.phases)})")
        self.keys_file = None  # opened by `open_data_keys` when log.data_keys is on
        # Launched workers (accelerate/torchrun) watch their launcher: if it dies they checkpoint and exit
        # instead of running on as orphans.
        self.launcher_pid = os.getppid() if dist_info.launched else None
        self._data_iter = None
        self._data_iter_b = None
        self.tables = build_local_tables(recipe, loader, config, dist_info.device)
        self.schedule_enabled = config.optim.schedule != "constant" or config.optim.warmup_steps > 0
        self.saving: CheckpointWriter | None = None  # an asynchronous save still being written
        self.compile_watch = compile_watch  # train.compile: graphs and graph breaks, reported at log lines
        self.channels_last = channels_last  # image batches go to the networks in channels-last format

    # -- one step ----------------------------------------------------------------------------------------
    def next_batch(self, phase: Phase, phase_index: int, repeat: int, micro: int) -> Batch:
        noise = self.noise.start(self.step, phase_index, repeat, micro)
        if not phase.uses_data:
            return Batch(self.config.train.batch_size, None, None, noise)
        if self._data_iter is None:
            self._data_iter = iter(self.loader)
        data = next(self._data_iter)
        if self.keys_file is not None and "idx" in data:
            self.keys_file.write(json.dumps({"step": self.step, "phase": phase.name, "repeat": repeat,
                                             "micro": micro, "idx": data["idx"].tolist()}) + "\n")
        device = self.dist.device
        x = data["x"].to(device, non_blocking=True)
        if self.config.data.binarize != "none":  # keyed by global sample id and the read (not by the micro-step,
            # which holds other rows at another world size or accumulation): world-size independent, resumable
            x = binarize(x, data["idx"], self.config.data.binarize, self.config.train.seed,
                         (self.step, phase_index, repeat))
        y = data["y"].to(device, non_blocking=True) if "y" in data else None
        x_b = None
        if self.loader_b is not None:
            if self._data_iter_b is None:
                self._data_iter_b = iter(self.loader_b)
            x_b = next(self._data_iter_b)["x"].to(device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
            x_b = x_b.contiguous(memory_format=torch.channels_last) if x_b is not None and x_b.dim() == 4 else x_b
        local = {name: table.rows(data["idx"]) for name, table in self.tables.items()} if self.tables else None
        return Batch(x.shape[0], x, y, noise, data.get("idx"), x_b, local)

    def run_phase(self, phase: Phase, phase_index: int) -> None:
        nets = self.strategy.phase_nets(phase)
        accum = self.config.train.grad_accum
        # train.compile: a phase that differentiates through a gradient, or reads weights itself
        # (torch.func), runs its networks eager; the others use the graphs compiled for their role
        with maybe_eager(self.compile_watch is not None and runs_eager(phase)):
            self._run_repeats(phase, phase_index, nets, accum)

    def _run_repeats(self, phase: Phase, phase_index: int, nets, accum: int) -> None:
        for repeat in range(phase.repeat):
            for micro in range(accum):
                batch = self.next_batch(phase, phase_index, repeat, micro)
                # Ordering: the last micro-step syncs gradients; earlier ones only accumulate locally.
                with self.strategy.sync_context(phase, sync=micro == accum - 1):
                    with self.strategy.autocast():
                        outputs = phase.loss(nets, batch, self.step)
                    if repeat == 0 and phase.name == self.nan_phase and self.step in self.nan_steps:
                        outputs = {**outputs, "loss": outputs["loss"] * float("nan")}  # fault injection
                    self.strategy.backward(phase, outputs["loss"])
                if batch.local:  # per-datapoint rows: their own update, rescaled to the per-sample loss's gradient
                    for name, table in self.tables.items():
                        table.step(batch.idx, batch.local[name], batch.size * accum)
                self.accumulate(phase, outputs)  # tensors only: no host sync inside micro-steps
            self.after_step(phase, self.strategy.step(phase))

    def accumulate(self, phase: Phase, outputs: dict[str, torch.Tensor]) -> None:
        for key, value in outputs.items():  # kept on the device; averaged at the next log step
            self.pending[f"{phase.name}/{key}"].append(value.detach())

    def new_ema(self, name: str) -> EMA:
        """An EMA of network `name` starting at its current weights, with the run's decay and ramp-up."""
        return EMA(self.strategy.networks[name], self.config.train.ema_decay, self.config.train.ema_rampup)

    def after_step(self, phase: Phase, result: StepResult) -> None:
        """Record the step's skip flag (read at the next settle) and update the EMA, which a skipped step
        leaves unchanged on the device."""
        self.optimizer_steps[phase.trains] += 1
        self.step_flags.append((self.step, phase.name, result.overflow, result.skipped))
        if result.grad_norm is not None:
            self.pending[f"{phase.name}/grad_norm"].append(result.grad_norm)
        if phase.trains in self.ema_units:
            for name, ema in self.ema.items():
                ema.update(self.strategy.networks[name], result.skipped, self.step + 1)

    def settle(self) -> None:
        """Read the skip flags of the steps since the last call (one host sync, at log steps and saves), count
        skipped steps and non-finite streaks per phase, and stop a run whose streak passed
        train.max_bad_steps. Skipped steps never changed the weights, so the state at this point is good."""
        if not self.step_flags:
            return
        records, self.step_flags = self.step_flags, []
        flags = torch.cat([flag.reshape(1).to(self.dist.device) for *_, flag in records]).tolist()
        diverged = None
        for (step, phase, overflow, _), skipped in zip(records, flags):
            if not skipped:
                self.bad_steps_in_a_row[phase] = 0
                continue
            self.skipped_steps[f"{phase}/{'overflow' if overflow else 'nonfinite'}"] += 1
            if overflow:  # fp16 overflow is routine: the scaler lowers its scale
                continue
            self.bad_steps_in_a_row[phase] += 1
            if diverged is None and self.bad_steps_in_a_row[phase] > self.config.train.max_bad_steps:
                diverged = (self.bad_steps_in_a_row[phase], phase, step)
        if diverged is not None:
            count, phase, step = diverged
            raise TrainingDiverged(f"{count} non-finite steps in a row (phase '{phase}', step {step}); raise "
                                   f"train.max_bad_steps or lower optim.lr")

    def train_step(self) -> None:
        if self.schedule_enabled:
            self.strategy.set_lr_scale(lr_scale(self.config.optim, self.step, self.config.train.max_steps))
        for index, phase in enumerate(self.phases):
            if self.step % phase.every == 0:
                self.run_phase(phase, index)
        self.step += 1
        if hasattr(self.recipe, "end_step"):  # recipe state that adapts between steps (ADA's p); may be a collective
            self.recipe.end_step(self.step, self.config.train.batch_size * self.config.train.grad_accum
                                 * self.dist.world_size, reduce_mean)

    # -- loop --------------------------------------------------------------------------------------------
    def fit(self, hooks) -> str:
        """Train until max_steps or a stop request; returns "done" or "stopped"."""
        max_steps = self.config.train.max_steps
        progress = tqdm(total=max_steps, initial=self.step, disable=not (self.dist.is_main and self.config.log.progress),
                        dynamic_ncols=True, unit="step", mininterval=1.0)
        try:
            while self.step < max_steps:
                self.train_step()
                progress.update(1)
                hooks.after_step(self, progress)
                if self.launcher_pid is not None and os.getppid() != self.launcher_pid:
                    self.stop_signal = self.stop_signal or LAUNCHER_DIED
                if self.dist.world_size > 1 and self.step % STOP_CHECK_EVERY:
                    continue
                if any_rank(self.stop_signal is not None):
                    hooks.on_stop(self)
                    return "stopped"
        finally:
            progress.close()
        return "done"

    def pop_metrics(self) -> dict[str, float]:
        """Mean of each logged value since the last call, averaged over ranks (one collective, one sync)."""
        self.settle()
        means = {name: torch.stack(values).float().mean() for name, values in self.pending.items()}
        # parameter/optimizer (and per-datapoint) bytes each rank holds: averaged over ranks with the rest
        means["memory/state_bytes_this_rank"] = torch.tensor(float(self.strategy.local_state_bytes()))
        if self.tables:
            means["memory/local_table_bytes_this_rank"] = torch.tensor(float(sum(t.nbytes() for t in self.tables.values())))
            means["memory/local_table_rows_this_rank"] = torch.tensor(float(sum(len(t.ids) for t in self.tables.values())))
        reduced = reduce_mean(means)
        self.pending.clear()
        reduced.update({f"skipped/{k}": float(v) for k, v in self.skipped_steps.items()})
        syncs = self.strategy.gradient_syncs
        if syncs:  # all-reduce calls per optimizer step of each unit (1 = no redundant sync)
            reduced.update({f"sync/{name}_allreduce_per_step": syncs[name] / steps
                            for name, steps in self.optimizer_steps.items()})
            syncs.clear()
        self.optimizer_steps.clear()
        reduced.update({f"amp/{name}_loss_scale": scale for name, scale in self.strategy.loss_scales().items()})
        if self.loader.skipped:  # bad shards/samples passed over under data.on_error=skip (this rank)
            reduced["data/skipped_this_rank"] = float(self.loader.skipped)
        reduced.update({f"lr/{name}": lr for name, lr in self.strategy.learning_rates().items()})
        if self.compile_watch is not None:  # this rank's counts (every rank compiles the same graphs)
            reduced.update(self.compile_watch.metrics(self.step))
        return reduced

    def open_data_keys(self) -> None:
        """Per-rank record of consumed sample ids; lines from steps after the resumed checkpoint are dropped."""
        path = self.run_dir / "data_keys" / f"rank_{self.dist.rank:05d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        truncate_jsonl(path, after_step=self.step - 1)
        self.keys_file = open(path, "a")

    def install_signal_handlers(self, signals: list[int]) -> None:
        """Turn a preemption signal into a stop request handled at the next step boundary."""
        def request_stop(signum, frame):
            self.stop_signal = signum

        for signum in signals:
            signal.signal(signum, request_stop)

    # -- state -------------------------------------------------------------------------------------------
    def save(self, root: Path, extra_state: dict, asynchronous: bool = False) -> Path:
        """Checkpoint every stateful component (a collective). `asynchronous`: copy the state to host memory
        and write it in the background (strategies whose files are all staged); `wait_for_save` joins it."""
        self.settle()  # skip counts and streaks are part of the state
        self.wait_for_save()  # one save in flight at a time, committed in step order
        if self.keys_file is not None:
            self.keys_file.flush()
        writer = CheckpointWriter(root, self.step, self.dist.rank, self.dist.world_size, self.config.dist.timeout_s)
        writer.begin()
        self.strategy.save(writer, self.dist.is_main)
        for name, ema in self.ema.items():
            ema_state = ema.full_state()  # collective under FSDP
            if self.dist.is_main:
                writer.add_tensors(ema_file(name), ema_state)
        rank_state = {"torch_rng": torch.get_rng_state(), "python_rng": list(random.getstate()[1]),
                      "numpy_rng": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
                      "numpy_rng_pos": int(np.random.get_state()[2]),
                      "loader": self.loader.state_dict(), "param_digest": self.param_digest()}
        if self.loader_b is not None:
            rank_state["loader_b"] = self.loader_b.state_dict()
        if hasattr(self.recipe, "state_dict"):  # per-rank recipe state (CycleGAN's history pools)
            rank_state["recipe"] = self.recipe.state_dict()
        if self.tables:  # this rank's rows of each per-datapoint table, with their sample ids
            rank_state["tables"] = {name: table.state_dict() for name, table in self.tables.items()}
        writer.add_torch(rank_file(self.dist.rank), rank_state)
        state = {"step": self.step, "bad_steps_in_a_row": dict(self.bad_steps_in_a_row),
                 "skipped_steps": dict(self.skipped_steps), "world_size": self.dist.world_size,
                 "strategy": self.strategy.name, **extra_state}
        if hasattr(self.recipe, "shared_state"):  # the same on every rank: kept across world-size changes
            state["recipe_shared"] = self.recipe.shared_state()
        if asynchronous and self.strategy.supports_async_save:
            writer.commit_async(state, self.config.ckpt.keep)
            self.saving = writer
            return writer.final
        return writer.commit(state, self.config.ckpt.keep)

    def wait_for_save(self) -> None:
        """Block until the asynchronous save in flight (if any) is written and committed."""
        if self.saving is not None:
            writer, self.saving = self.saving, None
            writer.wait()

    def param_digest(self) -> str:
        """Checksum (xxh3-128) of this rank's local parameters: equal on every rank for replicated strategies
        (checked by tests and useful when debugging desynchronized replicas)."""
        digest = xxhash.xxh3_128()
        for key, local in self.strategy.local_parameters():
            digest.update(key.encode())
            digest.update(local.detach().float().cpu().contiguous().numpy())  # the buffer itself: no copy
        return digest.hexdigest()

    def load(self, folder: Path, trainer_state: dict) -> None:
        self.strategy.load(folder)
        for name in self.ema:
            ema_path = folder / ema_file(name)
            if ema_path.is_file():
                self.ema[name].load_full_state(load_tensors(ema_path))
            else:  # EMA switched on for a run that had none: start the average at the current weights
                self.ema[name] = self.new_ema(name)
        self.step = int(trainer_state["step"])
        self.bad_steps_in_a_row.update(trainer_state.get("bad_steps_in_a_row", {}))
        self.skipped_steps.update(trainer_state.get("skipped_steps", {}))
        if "recipe_shared" in trainer_state and hasattr(self.recipe, "load_shared_state"):
            self.recipe.load_shared_state(trainer_state["recipe_shared"])
        for name, table in self.tables.items():  # any world size: each rank takes the rows it owns now
            table.load_state_dicts(load_table_states(folder, name))
        own_file = folder / rank_file(self.dist.rank)
        if trainer_state.get("world_size") == self.dist.world_size and own_file.is_file():
            rank_state = load_torch(own_file)
            torch.set_rng_state(rank_state["torch_rng"])
            random.setstate((3, tuple(rank_state["python_rng"]), None))
            np.random.set_state(("MT19937", rank_state["numpy_rng"].numpy().astype(np.uint32),
                                 int(rank_state["numpy_rng_pos"])))
            self.loader.load_state_dict(rank_state["loader"])
            if self.loader_b is not None:
                self.loader_b.load_state_dict(rank_state["loader_b"])
            if "recipe" in rank_state:
                self.recipe.load_state_dict(rank_state["recipe"])
        else:  # a different world size: weights and optimizers carry over, data order restarts the epoch
            print(f"gendist: WARNING: checkpoint was written by {trainer_state.get('world_size')} processes, "
                  f"this run has {self.dist.world_size}: data position and RNG restart", flush=True)

    @contextlib.contextmanager
    def sampling(self):
        """Networks every rank can call for sample grids and evaluation: the units as the strategy holds
        them (sharded ones run collective forwards; nothing is gathered or copied), in eval mode, with each
        EMA swapped into its network's parameters on every rank's own shard (the network's buffers are its
        own). Training weights, modes and the RNG are restored on exit. Every rank must enter it."""
        strategy = self.strategy
        modes = {name: unit.training for name, unit in strategy.units.items()}
        saved: dict[str, list[torch.Tensor]] = {}
        try:
            with torch.no_grad():
                strategy.release_sampling()
                for name, ema in self.ema.items():
                    params = list(strategy.networks[name].parameters())
                    saved[name] = [param.detach().clone() for param in params]
                    for param, average in zip(params, ema.params):
                        param.copy_(average.to(param.dtype))
            for unit in strategy.units.values():
                unit.eval()
            with torch.no_grad(), torch.random.fork_rng(devices=[]), strategy.sampling_autocast(), \
                    maybe_eager(self.compile_watch is not None):  # no graphs for other batch sizes / modes
                yield strategy.sampling_nets()
        finally:
            with torch.no_grad():
                strategy.release_sampling()
                for name, values in saved.items():
                    for param, value in zip(strategy.networks[name].parameters(), values):
                        param.copy_(value)
            for name, unit in strategy.units.items():
                unit.train(modes[name])
