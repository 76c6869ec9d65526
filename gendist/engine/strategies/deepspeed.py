"""DeepSpeed with one `deepspeed.initialize` engine per trained unit.

Accelerate's multi-model DeepSpeed support is experimental, needs `transformers` and trains one model, so
gendist builds the engines itself: each unit gets its own optimizer (a parameter group per network),
ZeRO partition, loss scaler (fp16) and clipping. A phase calls its trained unit's networks through the
unit's engine (`engine(member, ...)`) and the others as plain modules with requires_grad=False, so a frozen
ZeRO-3 discriminator still gathers its parameters for the generator's forward/backward but never receives
or reduces a gradient ("parameter already reduced" cannot happen).
The micro-step boundary is set explicitly on every backward, so DeepSpeed's own counter never disagrees
with the trainer's accumulation loop.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from gendist.config import RunConfig
from gendist.distributed import DistInfo
from gendist.checkpoint import ENGINES_DIR, CheckpointWriter, engine_dir
from gendist.engine.strategies.base import StepResult, Strategy, build_optimizer, reject_weight_readers, unique_bytes
from gendist.errors import UserError
from gendist.recipes.base import Phase

ENGINE_TAG = "state"


def build_deepspeed_config(config: RunConfig, stage: int) -> dict:
    """DeepSpeed config from gendist's, optionally overlaid by the launcher's DeepSpeed config file."""
    ds_config = {
        "train_micro_batch_size_per_gpu": config.train.batch_size,
        "gradient_accumulation_steps": config.train.grad_accum,
        # Persistence threshold 0: ZeRO-3 partitions every parameter (by default parameters under 1e5
        # elements stay whole on every rank, which for GAN-sized layers means no sharding at all).
        "zero_optimization": {"stage": stage, **({"stage3_param_persistence_threshold": 0} if stage == 3 else {})},
        "zero_allow_untested_optimizer": True,  # the client optimizer is torch's Adam/AdamW/SGD
        "gradient_clipping": config.optim.grad_clip,
        "fp16": {"enabled": config.precision == "fp16", "initial_scale_power": 16, "loss_scale_window": 500},
        "bf16": {"enabled": config.precision == "bf16"},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if path and path != "none":
        try:
            user = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise UserError(f"DeepSpeed config file '{path}' unreadable: {error}") from None
        for key, value in user.items():
            if value != "auto" and key not in ("train_batch_size", "train_micro_batch_size_per_gpu",
                                               "gradient_accumulation_steps"):
                ds_config[key] = value
    return ds_config


def sized_buckets(ds_config: dict, unit: nn.Module) -> dict:
    """A copy of `ds_config` whose ZeRO-1/2 reduce and all-gather buckets hold at most the unit's parameter
    count: DeepSpeed's default (5e8 elements) allocates a 2 GB fp32 buffer on every backward whatever the
    model's size (seen here for a 67k-parameter GAN). Values from the user's DeepSpeed file are kept."""
    sized = json.loads(json.dumps(ds_config))
    zero = sized.setdefault("zero_optimization", {})
    if zero.get("stage") in (1, 2):
        count = -(-sum(p.numel() for p in unit.parameters()) // 4096) * 4096  # DeepSpeed wants aligned sizes
        for key in ("reduce_bucket_size", "allgather_bucket_size"):
            zero.setdefault(key, int(min(5e8, max(4096, count))))
    return sized


def share_zero3_master_partition(zero_optimizer) -> None:
    """Let ZeRO-3's fp32 master partition share storage with the parameter partition when both are fp32.

    DeepSpeed means to do exactly this (stage3.py: "we don't need another copy of the weights") but tests
    `tensor.device == self.device` with `self.device` a string, which is never equal, so in fp32 training
    every rank keeps two identical copies of its partition (2 extra bytes per parameter per rank of a
    2-rank job: 0.67x instead of 0.5x DDP's state). Same dtype, shape and device: pointing the master's
    storage at the partition keeps every reference DeepSpeed holds, and its copy back after each step
    becomes a copy onto itself.
    """
    masters = getattr(zero_optimizer, "fp32_partitioned_groups_flat", [])
    partitions = getattr(zero_optimizer, "fp16_partitioned_groups_flat", [])
    for master, partition in zip(masters, partitions):
        if (partition is not None and master.dtype == partition.dtype and master.shape == partition.shape
                and master.device == partition.device and master.data_ptr() != partition.data_ptr()):
            master.data = partition.data


class DeepSpeedStrategy(Strategy):
    name = "deepspeed"
    fused_optimizers = ()  # ZeRO steps the torch optimizer on its own flat partitions and skips itself

    def __init__(self, config: RunConfig, dist_info: DistInfo, stage: int):
        super().__init__(config, dist_info)
        self.stage = stage
        if stage == 3 and config.train.ema_decay > 0:  # checked before DeepSpeed is even imported
            raise UserError("train.ema_decay is not supported with DeepSpeed ZeRO-3 yet; "
                            "use dist.zero_stage=2 or dist.strategy=fsdp (sharded EMA)")
        self.engines: dict[str, "deepspeed.DeepSpeedEngine"] = {}  # noqa: F821
        self._boundary = True
        self._loss_finite: dict[str, torch.Tensor] = {}

    def setup(self, units: dict[str, nn.Module], phases: list[Phase]) -> None:
        reject_weight_readers(phases, f"{self.name} with ZeRO-3", sharded=self.stage == 3)
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo" if self.device.type == "cpu" else "nccl")
        from deepspeed.accelerator import get_accelerator

        from gendist.engine.strategies.deepspeed_checkpoint import use_weights_only_loader

        if self.config.precision == "fp16" and not get_accelerator().is_fp16_supported():
            raise UserError(f"precision=fp16 with DeepSpeed needs fp16 support on {self.device.type} (on CPU: "
                            "oneDNN fp16, i.e. AVX512-FP16/AMX), which this machine lacks; use precision=bf16, or "
                            "dist.strategy=ddp (torch's GradScaler)")
        trained = {phase.trains for phase in phases}
        ds_config = build_deepspeed_config(self.config, self.stage)
        for name, unit in units.items():
            unit.to(self.device)
            if name in trained:
                optimizer = build_optimizer(self.config, name, unit)
                engine, optimizer, _, _ = deepspeed.initialize(model=unit, optimizer=optimizer,
                                                               config=sized_buckets(ds_config, unit))
                use_weights_only_loader(engine)  # resuming never unpickles code (deepspeed_checkpoint.py)
                if self.stage == 3:
                    share_zero3_master_partition(engine.optimizer)
                    # A network's own parameters (a Gaussian VAE's log-variance) are fetched by its forward's
                    # hook only; its other methods (encode, elbo_estimate) run inside the unit's forward
                    # (Member routes them there), so the unit fetches them too.
                    for network in engine.module.values():
                        for param in network.parameters(recurse=False):
                            deepspeed.zero.register_external_parameter(engine.module, param)
                self.engines[name] = engine
                self.wrapped[name] = engine
                self.optimizers[name] = optimizer
                unit = engine.module
            self.register(name, unit)

    def sync_context(self, phase: Phase, sync: bool):
        self._boundary = sync
        self.engines[phase.trains].set_gradient_accumulation_boundary(sync)
        return super().sync_context(phase, sync)

    def backward(self, phase: Phase, loss: torch.Tensor) -> None:
        name = phase.trains
        finite = torch.isfinite(loss.detach())
        self._loss_finite[name] = finite if name not in self._loss_finite else self._loss_finite[name] & finite
        self.engines[name].backward(loss)  # the engine divides by gradient_accumulation_steps
        if not self._boundary:
            self.engines[name].step()  # advances DeepSpeed's micro-step; no update before the boundary

    def step(self, phase: Phase) -> StepResult:
        name = phase.trains
        engine = self.engines[name]
        engine.step()
        loss_finite = bool(self._loss_finite.pop(name, torch.tensor(True)))
        # DeepSpeed skips a step whose gradients hold inf/NaN itself (checked: losses after injected NaN steps
        # match DDP's exactly). Its was_step_applied() flag can lag one step behind in fp32/bf16, so there we
        # count from the loss; in fp16 the flag is the loss scaler's overflow verdict for this very step.
        applied = bool(engine.was_step_applied()) if self.config.precision == "fp16" else loss_finite
        overflow = self.config.precision == "fp16" and not applied
        if phase.clamp_weights and applied:
            self.clamp_weights(name, phase.clamp_weights)
        # DeepSpeed decides on the host itself (its overflow check reads the flag back); its norm may be the
        # previous step's value when it skipped the norm, so only clipped runs report it
        norm = engine.get_global_grad_norm() if self.config.optim.grad_clip else None
        return StepResult(skipped=torch.tensor([0.0 if applied else 1.0]), overflow=overflow,
                          grad_norm=None if norm is None else torch.as_tensor(float(norm)))

    def loss_scales(self) -> dict[str, float]:
        """DeepSpeed's own fp16 loss scaler of each engine (empty unless precision=fp16)."""
        if self.config.precision != "fp16":
            return {}
        return {name: float(getattr(engine.optimizer, "loss_scale", getattr(engine.optimizer, "cur_scale", 0.0)))
                for name, engine in self.engines.items()}

    @torch.no_grad()
    def clamp_weights(self, name: str, limit: float) -> None:
        """Clamp the fp32 master partitions DeepSpeed steps (else the next step would copy unclamped values
        back) and the module's parameters (ZeRO-1/2: whole tensors; ZeRO-3: each rank's partition)."""
        optimizer = self.engines[name].optimizer
        for group in (getattr(optimizer, "single_partition_of_fp32_groups", None)
                      or getattr(optimizer, "fp32_partitioned_groups_flat", None) or []):
            group.clamp_(-limit, limit)
        for param in self.units[name].parameters():
            partition = getattr(param, "ds_tensor", None)
            (partition if partition is not None else param).clamp_(-limit, limit)

    def sampling_autocast(self):
        """DeepSpeed keeps bf16/fp16 parameters in the engine's module: sample under autocast to match."""
        return self.autocast()

    def unit_state(self, name: str) -> dict[str, torch.Tensor]:
        """Full fp32-shaped weights; under ZeRO-3 gathered from the shards (a collective on every rank)."""
        unit = self.units[name]
        if self.stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(unit.parameters()), modifier_rank=None):
                return {k: v.detach().float().cpu().clone() for k, v in unit.state_dict().items()}
        return {k: v.detach().float().cpu() for k, v in unit.state_dict().items()}

    supports_async_save = False  # DeepSpeed writes its engines' files itself, synchronously

    def save(self, writer: CheckpointWriter, is_main: bool) -> None:
        """Each engine into its own sub-folder (every rank writes its partition), plus full weights."""
        for name, engine in self.engines.items():
            engine.save_checkpoint(str(engine_dir(writer.folder, name)), tag=ENGINE_TAG, save_latest=False)
        self.save_networks(writer, is_main)

    def load(self, folder: Path) -> None:
        """Each engine's state, read weights-only: a file holding any other pickled object is a UserError on
        every rank, and nothing in it runs (deepspeed_checkpoint.py)."""
        from gendist.engine.strategies.deepspeed_checkpoint import check_engine_files

        check_engine_files(folder / ENGINES_DIR)
        for name, engine in self.engines.items():
            path, _ = engine.load_checkpoint(str(engine_dir(folder, name)), tag=ENGINE_TAG,
                                             load_optimizer_states=True, load_lr_scheduler_states=True)
            if path is None:
                raise UserError(f"checkpoint {folder}: no DeepSpeed state for '{name}' (was it saved with "
                                "another strategy? resume with that strategy)")

    def local_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """ZeRO-3: the rank's partition (`ds_tensor`); stages 1-2: the whole parameter."""
        return [(f"{network}.{key}", getattr(value, "ds_tensor", value))
                for network in sorted(self.networks) for key, value in self.networks[network].named_parameters()]

    def local_state_bytes(self) -> int:
        """Parameters (the ZeRO-3 partition `ds_tensor` when partitioned), fp32 master partitions and the
        inner optimizer's state held by this rank."""
        params = [p for unit in self.units.values() for p in unit.parameters()]
        tensors = params + [p.ds_tensor for p in params if hasattr(p, "ds_tensor")]  # gathered (if any) + partition
        for engine in self.engines.values():
            zero = engine.optimizer
            for attribute in ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups"):
                tensors += list(getattr(zero, attribute, []) or [])
            inner = getattr(zero, "optimizer", zero)
            tensors += [v for state in inner.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
        return unique_bytes(tensors)
