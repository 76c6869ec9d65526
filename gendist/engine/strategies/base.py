"""Strategy: owns wrapping, optimizers, loss scaling, backward, step and gradient sync for each unit.

The trainer never touches `.grad`, `DistributedDataParallel` or a DeepSpeed engine: it asks the strategy
for the modules a phase may call (`phase_nets`), runs the loss, and calls `backward` and `step`.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gendist.checkpoint import OPTIMIZER_FILE, CheckpointWriter, load_network, load_torch, network_file
from gendist.config import RunConfig
from gendist.distributed import DistInfo
from gendist.errors import UserError
from gendist.engine.units import Member, Unit
from gendist.recipes.base import Nets, Phase

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StepResult:
    """What one optimizer step of a phase did, as device tensors read only at log steps (no host sync in a
    step): `skipped` is 1.0 when the gradients held inf/NaN and the step was not applied, `overflow` says such
    a skip is fp16 loss-scaler routine rather than a fault, `grad_norm` the norm computed for clipping."""

    skipped: torch.Tensor  # (1,) float on the device: 1.0 = not applied
    overflow: bool = False
    grad_norm: torch.Tensor | None = None


# Optimizers with a fused kernel take GradScaler's `found_inf` and skip a step on the device (their step
# counters too), so deciding a skip needs no host sync; RMSprop has none and reads the flag on the host.
FUSED_OPTIMIZERS = ("adam", "adamw", "sgd")


def build_optimizer(config: RunConfig, name: str, unit: Unit, fused: tuple[str, ...] = ()) -> torch.optim.Optimizer:
    """One optimizer for a unit, a parameter group per network (`group["network"]`) with its learning
    rate: `optim.lr_overrides` may name a network or the unit (the network's entry wins). `fused`: the
    optimizers to build with torch's fused kernel (one kernel per step instead of several per parameter, and
    on-device skips)."""
    optim = config.optim
    groups = []
    for member, network in unit.items():
        lr = optim.lr_overrides.get(member, optim.lr_overrides.get(name, optim.lr))
        # a sub-module may ask for a multiple of its network's rate (`LR_MULTIPLIER`): its own group
        multipliers = {id(p): float(module.LR_MULTIPLIER) for module in network.modules()
                       if hasattr(module, "LR_MULTIPLIER") for p in module.parameters(recurse=False)}
        params = [p for p in network.parameters() if p.requires_grad]
        for multiplier in [1.0, *sorted(set(multipliers.values()) - {1.0})]:
            chosen = [p for p in params if multipliers.get(id(p), 1.0) == multiplier]
            if chosen:
                groups.append({"params": chosen, "lr": lr * multiplier, "network": member,
                               **({"lr_multiplier": multiplier} if multiplier != 1.0 else {})})
    kernel = {"fused": True} if optim.name in fused else {}
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.betas[0], weight_decay=optim.weight_decay,
                               **kernel)
    if optim.name == "rmsprop":  # betas[1] is RMSprop's smoothing constant alpha (0.99 in torch's default)
        return torch.optim.RMSprop(groups, lr=optim.lr, alpha=optim.betas[1], weight_decay=optim.weight_decay)
    cls = torch.optim.AdamW if optim.name == "adamw" else torch.optim.Adam
    return cls(groups, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay, **kernel)


def reject_weight_readers(phases: list[Phase], strategy: str, sharded: bool = True) -> None:
    """Sharded strategies hold only a slice of each weight between forwards and free the gathered weights
    after backward: a loss that reads weights itself, or differentiates through a gradient, cannot run."""
    if not sharded:
        return
    for phase in phases:
        if phase.reads_weights_of:
            raise UserError(f"dist.strategy={strategy}: phase '{phase.name}' reads the full weights of "
                            f"{', '.join(phase.reads_weights_of)} (e.g. gan.unroll_steps), which this strategy "
                            "shards; use ddp or DeepSpeed ZeRO-1/2")
        if phase.double_backward:
            raise UserError(f"dist.strategy={strategy}: phase '{phase.name}' differentiates through a gradient "
                            "(gan.loss=wgan_gp or gan.r1_gamma), which this strategy's sharded parameters "
                            "do not support; use ddp or DeepSpeed ZeRO-1/2")


class Strategy:
    """Single-process strategy; the distributed ones override `wrap`, `sync_context` and state handling.

    `units` are the plain unit modules (what checkpoints and frozen calls use), `wrapped` what a phase that
    trains a unit calls, `networks` every network by name (the same modules as inside the units).
    """

    name = "single"
    fused_optimizers = FUSED_OPTIMIZERS  # built with torch's fused kernel (DeepSpeed: none, it skips itself)

    def __init__(self, config: RunConfig, dist_info: DistInfo):
        self.config = config
        self.dist = dist_info
        self.device = dist_info.device
        self.units: dict[str, Unit] = {}
        self.networks: dict[str, nn.Module] = {}
        self.wrapped: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}  # one per trained unit
        self.scalers: dict[str, torch.amp.GradScaler] = {}  # one per phase: an overflow skips only that phase
        self.gradient_syncs: Counter[str] = Counter()  # all-reduce calls per unit (DDP comm hook)
        self._phase_nets: dict[str, Nets] = {}  # built once per phase
        self._active_unit: str | None = None  # the unit whose parameters require gradients now
        self.unit_params: dict[str, list[nn.Parameter]] = {}  # every unit's parameters, listed once

    # -- set-up ------------------------------------------------------------------------------------------
    def setup(self, units: dict[str, Unit], phases: list[Phase]) -> None:
        trained = {phase.trains for phase in phases}
        for name, unit in units.items():
            unit.to(self.device)
            self.register(name, unit)
            if name in trained:
                self.wrapped[name] = self.wrap(name, unit)
                self.optimizers[name] = build_optimizer(self.config, name, unit, self.fused_optimizers)
        if self.config.precision == "fp16":
            for phase in phases:
                self.scalers[phase.name] = torch.amp.GradScaler(self.device.type)

    def register(self, name: str, unit: Unit) -> None:
        self.units[name] = unit
        self.networks.update(unit.items())
        self.unit_params[name] = list(unit.parameters())

    def wrap(self, name: str, unit: Unit) -> nn.Module:
        return unit

    def set_lr_scale(self, scale: float) -> None:
        """Every parameter group's learning rate = its configured (per-network) rate x `scale`."""
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                group.setdefault("base_lr", group["lr"])
                group["lr"] = group["base_lr"] * scale

    def learning_rates(self) -> dict[str, float]:
        """Current learning rate of each network (its parameter group; not the groups of LR_MULTIPLIER)."""
        return {group.get("network", name): float(group["lr"]) for name, optimizer in self.optimizers.items()
                for group in optimizer.param_groups if "lr_multiplier" not in group}

    # -- one phase ---------------------------------------------------------------------------------------
    def phase_nets(self, phase: Phase) -> Nets:
        """Freeze every unit the phase does not train; the trained unit's networks are called through its
        wrapper, the others through their plain unit.

        Frozen units get no gradient (so no all-reduce, no 'parameter already reduced' under ZeRO) but
        still pass gradients to their inputs, which is what the generator step needs from the discriminator.
        The handles are built once per phase and `requires_grad` is switched only when the trained unit
        changes (consecutive phases of one unit, e.g. n_critic repeats or R1, switch nothing).
        """
        if self._active_unit != phase.trains:
            for name, params in self.unit_params.items():
                if name == phase.trains or name == self._active_unit or self._active_unit is None:
                    for param in params:
                        param.requires_grad = name == phase.trains
            self._active_unit = phase.trains
        nets = self._phase_nets.get(phase.name)
        if nets is None:
            handles = {}
            for name, unit in self.units.items():
                call = self.wrapped[name] if name == phase.trains else unit
                handles.update({member: Member(call, network, member) for member, network in unit.items()})
            nets = self._phase_nets[phase.name] = Nets(handles, unwrapped=Nets(self.networks))
        return nets

    def sampling_nets(self) -> Nets:
        """Every network called through its unit as the strategy holds it (an FSDP root or a ZeRO-3 module
        gathers its own parameters for each forward: a collective, so every rank must make the same calls);
        no unit's weights are gathered or copied. For sampling and evaluation under torch.no_grad()."""
        nets = {}
        for unit in self.units.values():
            call = self.sampling_call(unit)
            nets.update({member: Member(call, network, member) for member, network in unit.items()})
        return Nets(nets)

    def sampling_call(self, unit: Unit):
        """What a sampling Member calls: `call(member, *args, _method=..., **kwargs)`; the unit itself."""
        return unit

    def sampling_autocast(self):
        """Sampling runs in the parameters' own precision: float32 master weights need no autocast."""
        return contextlib.nullcontext()

    def release_sampling(self) -> None:
        """Called after sampling: drop whatever the strategy kept gathered for it."""

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
        """Unscale, clip, and step the phase's unit unless its gradients hold inf/NaN; the skip is decided on
        the device (the fused optimizer's `found_inf`, GradScaler's pattern), so no value is read back here."""
        scaler = self.scalers.get(phase.name)
        optimizer = self.optimizers[phase.trains]
        if scaler:
            scaler.unscale_(optimizer)
        norm = self.clip_gradients(phase.trains) if self.config.optim.grad_clip else None
        found_inf = self.nonfinite(phase.trains, norm)
        if scaler:  # GradScaler skips the step itself and lowers its scale
            scaler.step(optimizer)
            scaler.update()
        elif getattr(optimizer, "_step_supports_amp_scaling", False):  # fused: skips on the device
            optimizer.found_inf = found_inf.reshape(())  # the fused kernels take a 0-dim flag
            optimizer.step()
            del optimizer.found_inf
        elif not found_inf.item():  # an optimizer without a fused kernel (RMSprop): a host sync
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if phase.clamp_weights:  # a skipped step left the (already clamped) weights as they were
            self.clamp_weights(phase.trains, phase.clamp_weights)
        return StepResult(skipped=found_inf, overflow=bool(scaler), grad_norm=norm)

    def nonfinite(self, name: str, norm: torch.Tensor | None) -> torch.Tensor:
        """(1,) float on the device: 1.0 iff the unit's (synchronized, identical on every rank) gradients hold
        inf/NaN; from the clipping norm when there is one, else one fused pass over the gradients."""
        if norm is not None:
            return (~torch.isfinite(norm)).float().reshape(1)
        found_inf = torch.zeros(1, device=self.device)
        grads = [p.grad for p in self.unit_params[name] if p.grad is not None]
        if grads:  # GradScaler's own kernel with an inverse scale of 1: it only checks
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, torch.ones(1, device=self.device))
        return found_inf

    @torch.no_grad()
    def clamp_weights(self, name: str, limit: float) -> None:
        """Clamp a unit's weights to [-limit, limit] (WGAN's Lipschitz constraint). Elementwise, so it acts
        on FSDP shards as on whole tensors, and every rank applies it to identical (synchronized) weights."""
        for param in self.units[name].parameters():
            param.clamp_(-limit, limit)

    def clip_gradients(self, name: str) -> torch.Tensor:
        """Clip the unit's gradients (one norm over all its networks) and return the norm. Gradients are
        already synchronized, so every rank gets the same norm and makes the same skip decision."""
        params = [p for p in self.unit_params[name] if p.grad is not None]
        if not params:
            return torch.zeros((), device=self.device)
        return torch.nn.utils.clip_grad_norm_(params, self.config.optim.grad_clip).detach().float()

    def loss_scales(self) -> dict[str, float]:
        """Current fp16 loss scale of each phase's scaler (empty unless precision=fp16); a host sync, so
        only read at log steps."""
        return {name: float(scaler.get_scale()) for name, scaler in self.scalers.items()}

    # -- state -------------------------------------------------------------------------------------------
    def unit_state(self, name: str) -> dict[str, torch.Tensor]:
        """Full (unsharded) weights of a unit keyed `network.param`, on CPU, identical on every rank. A
        collective under sharded strategies: every rank calls it."""
        return {key: value.detach().cpu() for key, value in self.units[name].state_dict().items()}

    def network_states(self) -> dict[str, dict[str, torch.Tensor]]:
        """Full weights of every network (a collective under sharded strategies)."""
        states: dict[str, dict[str, torch.Tensor]] = {}
        for name, unit in self.units.items():
            full = self.unit_state(name)
            for member in unit:
                prefix = member + "."
                states[member] = {key[len(prefix):]: value for key, value in full.items() if key.startswith(prefix)}
        return states

    def save_networks(self, writer: CheckpointWriter, is_main: bool) -> None:
        """Each network's full weights (what sampling and `encode` load), written by rank 0."""
        states = self.network_states()
        if is_main:
            for network, state in states.items():
                writer.add_tensors(network_file(network), state)

    def load_unit_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        self.units[name].load_state_dict(state)

    def load_networks(self, folder: Path) -> None:
        for name, unit in self.units.items():
            self.load_unit_state(name, {f"{member}.{key}": value for member in unit
                                        for key, value in load_network(folder, member).items()})

    supports_async_save = True  # every file is staged in the writer (DeepSpeed writes its engines itself)

    def save(self, writer: CheckpointWriter, is_main: bool) -> None:
        """Networks as safetensors and optimizer/scaler state; replicated state is written by rank 0 only."""
        self.save_networks(writer, is_main)
        if is_main:
            writer.add_torch(OPTIMIZER_FILE, {"optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
                                              "scalers": {n: s.state_dict() for n, s in self.scalers.items()}})

    def load(self, folder: Path) -> None:
        self.load_networks(folder)
        state = load_torch(folder / OPTIMIZER_FILE)
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        for name, scaler in self.scalers.items():
            scaler.load_state_dict(state["scalers"][name])

    def local_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """(network.param, the part of the parameter this rank holds): whole for replicated strategies, the
        local shard of a DTensor under FSDP."""
        return [(f"{network}.{key}", value.to_local() if hasattr(value, "to_local") else value)
                for network in sorted(self.networks) for key, value in self.networks[network].named_parameters()]

    def local_state_bytes(self) -> int:
        """Bytes of parameters and optimizer state this rank holds (each storage counted once)."""
        tensors = [p for unit in self.units.values() for p in unit.parameters()]
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
