"""Units: the networks one optimizer step trains together, as one module the strategies wrap.

A `Unit` is an `nn.ModuleDict` of networks whose `forward(member, ...)` dispatches to one of them, so a
single DDP wrapper, FSDP root or DeepSpeed engine sees every call a loss makes into any of its networks.
`Member` is the handle a loss receives for such a network: calling it runs `wrapper(member, ...)`.
`check_gradient_coverage` runs each phase once at start-up and names any parameter of the trained unit that
gets no gradient: under DDP/ZeRO such a parameter would make ranks wait forever for its reduction.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from gendist.errors import UserError
from gendist.recipes.base import Batch, Nets, Phase


class Unit(nn.ModuleDict):
    """Networks optimized together (one optimizer, wrapper, scaler, checkpoint entry)."""

    def forward(self, member: str, *args, _method: str = "forward", **kwargs):
        network = self[member]
        return network(*args, **kwargs) if _method == "forward" else getattr(network, _method)(*args, **kwargs)


class Member:
    """A network of a unit, called through the unit (wrapped or not). Its own methods (a VAE's `encode`, a
    joint discriminator's `features`) also run through the unit's forward, so a DDP wrapper, an FSDP root or
    a ZeRO-3 engine sees them like calls; other attributes (parameters, sub-modules) come from the network."""

    def __init__(self, call: Callable, network: nn.Module, name: str):
        self._call, self.module, self.name = call, network, name

    def __call__(self, *args, **kwargs):
        return self._call(self.name, *args, **kwargs)

    def __getattr__(self, attribute: str):
        value = getattr(self.module, attribute)
        if callable(value) and not isinstance(value, nn.Module) and not hasattr(nn.Module, attribute):
            return lambda *args, **kwargs: self._call(self.name, *args, _method=attribute, **kwargs)
        return value


def build_units(networks: dict[str, nn.Module], units: dict[str, tuple[str, ...]]) -> dict[str, Unit]:
    """Group the recipe's networks into units; every network must belong to exactly one unit."""
    claimed = [network for members in units.values() for network in members]
    if sorted(claimed) != sorted(networks):
        raise ValueError(f"recipe units {units} do not partition its networks {sorted(networks)}")
    return {name: Unit({member: networks[member] for member in members}) for name, members in units.items()}


class _Noise:
    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)
        self.device = torch.device("cpu")

    def randn(self, rows: int, *tail: int) -> torch.Tensor:
        return torch.randn(rows, *tail, generator=self.generator).to(self.device)


def probe_batch(shape: tuple[int, ...], size: int, device: torch.device,
                shape_b: tuple[int, ...] | None = None) -> Batch:
    """A batch of uniform noise in the data's shape: enough to see which parameters a loss reaches."""
    noise = _Noise(0)
    noise.device = device
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(size, *shape, generator=generator).to(device)
    x_b = torch.rand(size, *shape_b, generator=generator).to(device) if shape_b else None
    return Batch(size, x, torch.zeros(size, dtype=torch.long, device=device), noise,
                 torch.arange(size), x_b)


def check_gradient_coverage(units: dict[str, Unit], phases: list[Phase], batch: Batch, recipe=None) -> None:
    """Run every phase's loss once on the plain networks and raise a one-line UserError naming the first
    parameter of the phase's unit that receives no gradient. Weights, buffers (batch-norm statistics), the
    recipe's own state (history pools) and the global RNG are left exactly as they were."""
    saved = {name: copy.deepcopy(unit.state_dict()) for name, unit in units.items()}
    recipe_state = copy.deepcopy(recipe.state_dict()) if hasattr(recipe, "state_dict") else None
    networks = {member: network for unit in units.values() for member, network in unit.items()}
    try:
        with torch.random.fork_rng(devices=[]):
            for phase in phases:
                for name, unit in units.items():
                    unit.requires_grad_(name == phase.trains)
                nets = Nets({member: Member(unit.__call__, unit[member], member) for unit in units.values()
                             for member in unit}, unwrapped=Nets(networks))
                phase.loss(nets, batch, 0)["loss"].float().sum().backward()
                for key, param in units[phase.trains].named_parameters():
                    if param.grad is None:
                        raise UserError(f"phase '{phase.name}' trains unit '{phase.trains}' but its parameter "
                                        f"'{key}' gets no gradient from the phase's loss; every parameter of a "
                                        "trained unit must be used (DDP/ZeRO would wait for it forever)")
                for unit in units.values():
                    unit.zero_grad(set_to_none=True)
    finally:
        for name, unit in units.items():
            unit.zero_grad(set_to_none=True)
            unit.requires_grad_(True)
            unit.load_state_dict(saved[name])
        if recipe_state is not None:
            recipe.load_state_dict(recipe_state)


SHARDED_STRATEGIES = ("fsdp", "zero3")
BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def prepare_network_state(units: dict[str, Unit], strategy: str, world_size: int, device: torch.device,
                          sync_batchnorm: bool, warn: Callable[[str], None]) -> None:
    """State beyond parameters, per strategy, decided once at start-up.

    Spectral normalization keeps power-iteration vectors beside each whole weight and recomputes the weight
    from them at every call; FSDP and ZeRO-3 hand a network only its shard of the weight, so the combination is
    refused. Under DDP the vectors are buffers, identical on every rank because every rank iterates on the
    same weights (each iteration makes new tensors, which DDP's broadcast of the buffers it listed when it
    wrapped the unit no longer reaches; none is needed), and checkpointed with the network.

    BatchNorm (only in a user's networks: shipped ones use no batch statistics) normalizes with the statistics
    of each rank's micro-batch, so results depend on the world size; model.sync_batchnorm converts it to
    SyncBatchNorm (global-batch statistics) under DDP, which torch runs on GPUs only."""
    parametrized = [f"{unit_name}.{name}" for unit_name, unit in units.items() for name, module in unit.named_modules()
                    if getattr(module, "parametrizations", None) is not None]
    if parametrized and strategy in SHARDED_STRATEGIES:
        raise UserError(f"model.spectral_norm: {parametrized[0]} is spectrally normalized, which needs whole weights; "
                        f"dist.strategy={'fsdp' if strategy == 'fsdp' else 'deepspeed with ZeRO-3'} shards them: use "
                        "ddp, ZeRO-1 or ZeRO-2, or set model.spectral_norm=none")
    for unit_name, unit in units.items():
        norms = [name for name, module in unit.named_modules() if isinstance(module, BATCHNORM_TYPES)]
        if not norms:
            continue
        if not sync_batchnorm:
            if world_size > 1:
                warn(f"gendist: warning: {unit_name}.{norms[0]} is a BatchNorm layer: it normalizes each rank's "
                     "micro-batch, so results depend on the number of processes (model.sync_batchnorm=true on GPUs)")
            continue
        if strategy != "ddp":
            raise UserError(f"model.sync_batchnorm applies under DDP; dist.strategy={strategy} (set "
                            "model.sync_batchnorm=false)")
        if device.type != "cuda":
            raise UserError("model.sync_batchnorm: torch's SyncBatchNorm runs on GPUs only; on CPU set "
                            "model.sync_batchnorm=false (each rank then normalizes its own micro-batch)")
        for member in list(unit.keys()):
            unit[member] = nn.SyncBatchNorm.convert_sync_batchnorm(unit[member])
