"""What a recipe is: players (networks), phases (who trains on which loss, how often) and evaluation.

A loss is a pure function `(nets, batch, step) -> {"loss": Tensor, ...}`: it never calls backward, steps an
optimizer or talks to other ranks. The engine freezes the players a phase does not train, so a loss may
call any player: gradients flow through frozen players to the inputs but never into their parameters.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

import torch
from torch import nn


class Nets(dict):
    """Players by name, also reachable as attributes (`nets.generator`).

    `nets.unwrapped` holds the same players without their distributed wrapper (the very same parameters).
    Losses use it for double backward (gradient penalties): DDP does not support `torch.autograd.grad`
    through its forward, while gradients that reach the shared parameters by another path are still summed
    into the same `.grad` before DDP reduces it.
    """

    def __init__(self, players=(), unwrapped: "Nets | None" = None, **named: nn.Module):
        super().__init__(players, **named)
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
    """One micro-batch on this rank. `x` is None for phases that do not read data (a generator step)."""

    size: int
    x: torch.Tensor | None
    y: torch.Tensor | None
    noise: NoiseSource
    idx: torch.Tensor | None = None

    def randn(self, *tail: int) -> torch.Tensor:
        """Standard normal noise (size, *tail), a deterministic function of (seed, step, phase, global row)."""
        return self.noise.randn(self.size, *tail)


LossFn = Callable[[Nets, Batch, int], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Phase:
    """One kind of optimizer step: `trains` are updated on `loss`, every `every` steps, `repeat` times."""

    name: str
    trains: tuple[str, ...]
    loss: LossFn
    every: int = 1
    repeat: int = 1
    uses_data: bool = True
    # players whose weights the loss reads itself (torch.func.functional_call): they must be whole tensors
    reads_weights_of: tuple[str, ...] = ()
    double_backward: bool = False  # the loss differentiates through a gradient (penalties): not under ZeRO-3
    clamp_weights: float = 0.0  # after each step clamp the trained players' weights to [-c, c] (WGAN); 0: off


@dataclass
class DataInfo:
    """What a recipe needs to know of the data (from the shard manifest)."""

    kind: str  # "points" or "images"
    sample_shape: tuple[int, ...]
    modes: list[list[float]] | None = None
    mode_std: float | None = None
    extras: dict = field(default_factory=dict)


class Recipe(Protocol):
    """A model family. `generator_name` names the player that samples (and gets EMA)."""

    generator_name: str

    def build_players(self) -> dict[str, nn.Module]: ...

    def phases(self) -> list[Phase]: ...

    def sample(self, nets: Nets, count: int, generator: torch.Generator) -> torch.Tensor: ...

    def evaluate(self, nets: Nets, test_data: Iterable[torch.Tensor], seed: int) -> dict[str, float]: ...
