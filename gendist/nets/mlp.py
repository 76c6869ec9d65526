"""Multi-layer perceptron used for 2-D mixtures and flattened vectors."""
from __future__ import annotations

import torch
from einops import rearrange
from typing import Callable

from torch import nn


class MLP(nn.Module):
    """in_dim -> [hidden, activation] * depth -> out_dim (activation: a factory, default ReLU). Inputs of any shape
    (B, ...) are flattened."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 128, depth: int = 3,
                 activation: Callable[[], nn.Module] | None = None, out_shape: tuple[int, ...] | None = None):
        super().__init__()
        activation = activation or nn.ReLU
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), activation()]
            width = hidden
        layers.append(nn.Linear(width, out_dim))
        self.layers = nn.Sequential(*layers)
        self.out_shape = out_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(rearrange(x, "b ... -> b (...)"))  # (B, out_dim)
        if self.out_shape is not None:
            out = out.reshape(out.shape[0], *self.out_shape)  # (B, *out_shape)
        return out
