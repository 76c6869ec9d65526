"""Networks a user brings (model.networks.<role>: user_networks:Class), for tests/test_architectures.py."""
from __future__ import annotations

import math

import torch
from torch import nn


class SmallGenerator(nn.Module):
    """z (B, latent_dim) -> (B, *out_shape): asks for the shapes by name (the registry passes them)."""

    def __init__(self, latent_dim: int, out_shape: tuple[int, ...], width: int = 32):
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.net = nn.Sequential(nn.Linear(latent_dim, width), nn.SiLU(), nn.Linear(width, math.prod(out_shape)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).reshape(len(z), *self.out_shape)


class FixedGenerator(nn.Module):
    """Takes no shapes: its output size is whatever its kwargs say (wrong ones must be caught at start-up)."""

    def __init__(self, latent_dim: int = 2, out_dim: int = 3):
        super().__init__()
        self.net = nn.Linear(latent_dim, out_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class BatchNormDiscriminator(nn.Module):
    """x (B, D) -> (B, 1) with a BatchNorm layer (batch-coupled: not world-size independent)."""

    def __init__(self, in_shape: tuple[int, ...], width: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), width), nn.BatchNorm1d(width),
                                 nn.LeakyReLU(0.2), nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@torch.library.custom_op("gendist_tests::opaque_scale", mutates_args=())
def opaque_scale(x: torch.Tensor) -> torch.Tensor:
    """A custom operator with a backward but no fake (meta) kernel: eager runs it, torch.compile cannot trace it."""
    return x * 2


opaque_scale.register_autograd(lambda ctx, grad: grad * 2)


class OpaqueOpDiscriminator(nn.Module):
    """x -> (B, 1) through `opaque_scale`: trains eager, fails under train.compile (tests/test_compile.py)."""

    def __init__(self, in_shape: tuple[int, ...], width: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), width), nn.SiLU(), nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(opaque_scale(x))
