"""Strategy: owns wrapping, optimizers, loss scaling, backward, step and gradient sync for each player.

The trainer never touches `.grad`, `DistributedDataParallel` or a DeepSpeed engine: it asks the strategy
for the modules a phase may call (`phase_nets`), runs the loss, and calls `backward` and `step`.
"""
from __future__ import annotations

import contextlib
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gendist.checkpoint import load_tensors, load_torch, save_tensors, save_torch
from gendist.config import RunConfig
from gendist.distributed import DistInfo
from gendist.errors import UserError
from gendist.recipes.base import Nets, Phase

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StepResult:
    """What one optimizer step of a phase did (its gradient norm after synchronization)."""

    applied: bool
    overflow: bool
    grad_norm: float


def build_optimizer(config: RunConfig, name: str, params) -> torch.optim.Optimizer:
    optim = config.optim
    lr = optim.lr_overrides.get(name, optim.lr)
    params = [p for p in params if p.requires_grad]
    if optim.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=optim.betas[0], weight_decay=optim.weight_decay)
    if optim.name == "rmsprop":  # betas[1] is RMSprop's smoothing constant alpha (0.99 in torch's default)
        return torch.optim.RMSprop(params, lr=lr, alpha=optim.betas[1], weight_decay=optim.weight_decay)
    cls = torch.optim.AdamW if optim.name == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)


def reject_weight_readers(phases: list[Phase], strategy: str, sharded: bool = True) -> None:
    """Sharded strategies hold only a slice of each weight between forwards and free the gathered weights
    after backward: a loss that reads weights itself, or differentiates through a gradient, cannot run."""
    if not sharded:
        return
    for phase in phases:
        if phase.reads_weights_of:
            raise UserError(f"dist.strategy={strategy}: phase '{phase.name}' reads the full weights of "
                            f"{', '.join(phase.reads_weights_of)} (e.g. model.unroll_steps), which this strategy "
                            "shards; use ddp or DeepSpeed ZeRO-1/2")
        if phase.double_backward:
            raise UserError(f"dist.strategy={strategy}: phase '{phase.name}' differentiates through a gradient "
                            "(model.gan_loss=wgan_gp or model.r1_gamma), which this strategy's sharded parameters "
                            "do not support; use ddp or DeepSpeed ZeRO-1/2")


class Strategy:
    """Single-process strategy; the distributed ones override `wrap` and `sync_context`."""

    name = "single"

    def __init__(self, config: RunConfig, dist_info: DistInfo):
        self.config = config
        self.dist = dist_info
        self.device = dist_info.device
        self.raw: dict[str, nn.Module] = {}  # unwrapped players (what checkpoints and sampling use)
        self.wrapped: dict[str, nn.Module] = {}  # what a phase that trains the player calls
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.scalers: dict[str, torch.amp.GradScaler] = {}  # one per phase: an overflow skips only that phase
        self.gradient_syncs: Counter[str] = Counter()  # all-reduce calls per player (DDP comm hook)

    # -- set-up ------------------------------------------------------------------------------------------
    def setup(self, players: dict[str, nn.Module], phases: list[Phase]) -> None:
        for name, module in players.items():
            module.to(self.device)
            self.raw[name] = module
        trained = {name for phase in phases for name in phase.trains}
        for name in players:
            if name in trained:
                self.wrapped[name] = self.wrap(name, self.raw[name])
                self.optimizers[name] = build_optimizer(self.config, name, self.raw[name].parameters())
        if self.config.precision == "fp16":
            for phase in phases:
                self.scalers[phase.name] = torch.amp.GradScaler(self.device.type)

    def wrap(self, name: str, module: nn.Module) -> nn.Module:
        return module

    def set_lr_scale(self, scale: float) -> None:
        """Every optimizer's learning rate = its configured (per-player) rate x `scale`."""
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                group.setdefault("base_lr", group["lr"])
                group["lr"] = group["base_lr"] * scale

    # -- one phase ---------------------------------------------------------------------------------------
    def phase_nets(self, phase: Phase) -> Nets:
        """Freeze every player the phase does not train; hand trained players out wrapped, others raw.

        Frozen players get no gradient (so no all-reduce, no 'parameter already reduced' under ZeRO) but
        still pass gradients to their inputs, which is what the generator step needs from the discriminator.
        """
        for name, module in self.raw.items():
            module.requires_grad_(name in phase.trains)
        return Nets({name: self.wrapped[name] if name in phase.trains else module
                     for name, module in self.raw.items()}, unwrapped=Nets(self.raw))

    def autocast(self):
        dtype = AUTOCAST_DTYPES.get(self.config.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def sync_context(self, phase: Phase, sync: bool):
        """Context for one micro-step's forward+backward; `sync=False` defers gradient all-reduce."""
        return contextlib.nullcontext()

    def backward(self, phase: Phase, loss: torch.Tensor) -> None:
        """Backward of one micro-step's loss, averaged over the accumulation micro-steps."""
        loss = loss / self.config.train.grad_accum
        scaler = self.scalers.get(phase.name)
        (scaler.scale(loss) if scaler else loss).backward()

    def step(self, phase: Phase) -> StepResult:
        """Unscale, clip, check for non-finite gradients, and step every player of the phase (or none)."""
        scaler = self.scalers.get(phase.name)
        optimizers = [self.optimizers[name] for name in phase.trains]
        if scaler:
            for optimizer in optimizers:
                scaler.unscale_(optimizer)
        norms = [self.clip_gradients(name) for name in phase.trains]
        total_norm = float(torch.stack(norms).norm())  # the one host sync per optimizer step
        finite = math.isfinite(total_norm)
        if scaler:  # GradScaler skips an optimizer whose gradients hold inf/NaN and lowers its scale
            for optimizer in optimizers:
                scaler.step(optimizer)
            scaler.update()
        elif finite:
            for optimizer in optimizers:
                optimizer.step()
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        if phase.clamp_weights and finite:
            for name in phase.trains:
                self.clamp_weights(name, phase.clamp_weights)
        return StepResult(applied=finite, overflow=bool(scaler) and not finite, grad_norm=total_norm)

    @torch.no_grad()
    def clamp_weights(self, name: str, limit: float) -> None:
        """Clamp a player's weights to [-limit, limit] (WGAN's Lipschitz constraint). Elementwise, so it acts
        on FSDP shards as on whole tensors, and every rank applies it to identical (synchronized) weights."""
        for param in self.raw[name].parameters():
            param.clamp_(-limit, limit)

    def clip_gradients(self, name: str) -> torch.Tensor:
        """Clip and return the gradient norm. Gradients are already synchronized, so every rank gets the
        same norm and makes the same skip decision without another collective."""
        max_norm = self.config.optim.grad_clip or float("inf")
        params = [p for p in self.raw[name].parameters() if p.grad is not None]
        if not params:
            return torch.zeros((), device=self.device)
        return torch.nn.utils.clip_grad_norm_(params, max_norm).detach().float()

    def loss_scales(self) -> dict[str, float]:
        """Current fp16 loss scale of each phase's scaler (empty unless precision=fp16); a host sync, so
        only read at log steps."""
        return {name: float(scaler.get_scale()) for name, scaler in self.scalers.items()}

    # -- state -------------------------------------------------------------------------------------------
    def model_state(self, name: str) -> dict[str, torch.Tensor]:
        """Full (unsharded) weights of a player, on CPU, identical on every rank."""
        return {key: value.detach().cpu() for key, value in self.raw[name].state_dict().items()}

    def save(self, folder: Path, is_main: bool) -> None:
        """Players as safetensors and optimizer/scaler state; replicated state is written by rank 0 only."""
        if not is_main:
            return
        for name in self.raw:
            save_tensors(folder / "players" / f"{name}.safetensors", self.model_state(name))
        save_torch(folder / "optim.pt", {"optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
                                        "scalers": {n: s.state_dict() for n, s in self.scalers.items()}})

    def load(self, folder: Path) -> None:
        for name, module in self.raw.items():
            module.load_state_dict(load_tensors(folder / "players" / f"{name}.safetensors"))
        state = load_torch(folder / "optim.pt")
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        for name, scaler in self.scalers.items():
            scaler.load_state_dict(state["scalers"][name])

    def local_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """(name, the part of the parameter this rank holds): whole for replicated strategies, the local
        shard of a DTensor under FSDP."""
        return [(f"{player}.{key}", value.to_local() if hasattr(value, "to_local") else value)
                for player in sorted(self.raw) for key, value in self.raw[player].named_parameters()]

    def local_state_bytes(self) -> int:
        """Bytes of parameters and optimizer state this rank holds (each storage counted once)."""
        tensors = [p for module in self.raw.values() for p in module.parameters()]
        tensors += [v for optimizer in self.optimizers.values() for state in optimizer.state.values()
                    for v in state.values() if isinstance(v, torch.Tensor)]
        return unique_bytes(tensors)


def unique_bytes(tensors) -> int:
    """Total bytes of distinct storages among `tensors`; DTensors count their local shard only."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        if local.numel() == 0:
            continue
        storage = local.untyped_storage()
        seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
    return sum(seen.values())
