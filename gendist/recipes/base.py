"""What a recipe is: networks, the units that optimize them, phases (which unit trains on which loss, how
often) and evaluation.

A *network* is what a loss calls (`nets.encoder(x)`). A *unit* is what the engine optimizes: one
optimizer (a parameter group per network), one distributed wrapper, one fp16 loss scaler, one checkpoint
entry; it holds one or more networks (BiGAN: {encoder, generator}). Every phase trains exactly one unit.

A loss is a pure function `(nets, batch, step) -> {"loss": Tensor, ...}`: it never calls backward, steps an
optimizer or talks to other ranks. The engine freezes the units a phase does not train, so a loss may call
any network: gradients flow through frozen networks to their inputs but never into their parameters.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import nn


class Nets(dict):
    """Networks by name, also reachable as attributes (`nets.generator`).

    In a training phase the networks of the trained unit are handles that call through the unit's
    distributed wrapper (so gradient sync and ZeRO hooks see every use); `nets.unwrapped` holds the plain
    modules (the very same parameters). Losses use it for double backward (gradient penalties: DDP does not
    support `torch.autograd.grad` through its forward) and to read weights (`torch.func.functional_call`).
    """

    def __init__(self, networks=(), unwrapped: "Nets | None" = None, **named: nn.Module):
        super().__init__(networks, **named)
        self._unwrapped = unwrapped

    @property
    def unwrapped(self) -> "Nets":
        return self._unwrapped if self._unwrapped is not None else self

    def __getattr__(self, name: str) -> nn.Module:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class NoiseSource(Protocol):
    def randn(self, rows: int, *tail: int) -> torch.Tensor: ...


@dataclass
class Batch:
    """One micro-batch on this rank. `x` is None for phases that do not read data (a generator step);
    `x_b` is the second domain's batch of unpaired two-domain data (CycleGAN), drawn independently of `x`."""

    size: int
    x: torch.Tensor | None
    y: torch.Tensor | None
    noise: NoiseSource
    idx: torch.Tensor | None = None
    x_b: torch.Tensor | None = None
    # rows of per-datapoint tables for this batch's samples (gendist.engine.local_tables), leaf tensors
    local: dict[str, torch.Tensor] | None = None

    def randn(self, *tail: int) -> torch.Tensor:
        """Standard normal noise (size, *tail), a deterministic function of (seed, step, phase, global row)."""
        return self.noise.randn(self.size, *tail)

    def randint(self, high: int) -> torch.Tensor:
        """Uniform labels in [0, high) (size,), int64, drawn like `randn` (the normal CDF of one noise draw)."""
        uniform = torch.special.ndtr(self.noise.randn(self.size, 1).double()).squeeze(1)
        return (uniform * high).long().clamp_(max=high - 1)


LossFn = Callable[[Nets, Batch, int], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Phase:
    """One kind of optimizer step: unit `trains` is updated on `loss`, every `every` steps, `repeat` times."""

    name: str
    trains: str  # the unit this phase optimizes (exactly one)
    loss: LossFn
    every: int = 1
    repeat: int = 1
    uses_data: bool = True
    # networks whose weights the loss reads itself (torch.func.functional_call): they must be whole tensors
    reads_weights_of: tuple[str, ...] = ()
    double_backward: bool = False  # the loss differentiates through a gradient (penalties): not under ZeRO-3
    clamp_weights: float = 0.0  # after each step clamp the trained unit's weights to [-c, c] (WGAN); 0: off


class Recipe(Protocol):
    """A model family.

    `units` maps each unit to the networks it optimizes (every network belongs to exactly one unit);
    `ema_networks` are the networks that sample (and get an EMA when train.ema_decay > 0).
    """

    units: dict[str, tuple[str, ...]]
    ema_networks: tuple[str, ...]

    def build_networks(self) -> dict[str, nn.Module]: ...

    def phases(self) -> list[Phase]: ...

    def sample(self, nets: Nets, count: int, generator: torch.Generator,
               inputs: torch.Tensor | None = None) -> torch.Tensor: ...

    # Optional: per-sample scores on held-out data x, {name: (B,)}, averaged by gendist.evaluation (the VAE's
    # ELBO and likelihood bound, BiGAN's reconstruction error, a GAN's discriminator output); with
    # `train_scores = True` (cheap scores) evaluation also scores as many training rows (train/, gap/). Translation recipes (input_grid =
    # "translations") expose translate(nets, x, "a2b" | "b2a") instead of an unconditional sampler.
    # def scores(self, nets: Nets, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]


def num_classes_of(config, info) -> int:
    """The class count of a conditional model (model.conditional=true), 0 for an unconditional one."""
    from gendist.errors import UserError

    if not config.model.conditional:
        return 0
    classes = config.model.num_classes or info.num_classes
    if not classes:
        raise UserError("config: model.conditional=true needs labelled data: these data have no labels (or were "
                        "prepared before labels counted: prepare them again), or set model.num_classes")
    if info.num_classes and info.num_classes > classes:
        raise UserError(f"config: model.num_classes={classes}, but the data's labels go up to {info.num_classes - 1}; "
                        f"set model.num_classes >= {info.num_classes} (or 0: from the data)")
    return int(classes)


def unit_of(units: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """network -> the unit that optimizes it."""
    return {network: unit for unit, networks in units.items() for network in networks}


__all__ = ["Batch", "LossFn", "Nets", "NoiseSource", "Phase", "Recipe", "num_classes_of", "unit_of"]
