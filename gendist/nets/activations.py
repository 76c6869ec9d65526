"""Hidden-layer activations by name (`model.activation`).

"auto" keeps each network's own choice (ReLU in generators and decoders, LeakyReLU in discriminators and
encoders). A name applies that activation to every hidden layer of the mlp and conv networks. Smooth ones
(silu, gelu, elu, softplus, tanh) have no kink: a pre-activation that round-off puts on the other side of
0 changes the gradient by round-off, not by a whole unit's share, which is what the strategy-equivalence
tests rely on (benchmarks/RESULTS.md, "Equivalence bounds")."""
from __future__ import annotations

from typing import Callable

from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "silu": nn.SiLU, "gelu": nn.GELU, "elu": nn.ELU,
    "softplus": nn.Softplus, "tanh": nn.Tanh}


def hidden_activation(name: str) -> Callable[[], nn.Module] | None:
    """The factory of `model.activation`, or None for "auto" (each network's default)."""
    return None if name == "auto" else ACTIVATIONS[name]
