"""A user's generator: any nn.Module that maps z (B, latent_dim) to samples (B, *out_shape).

gendist builds it from `model.networks.generator: gendist_example.networks:ResidualMLPGenerator` and passes
the keyword arguments it asks for by name (in_shape, out_shape, latent_dim, images) plus
`model.networks.generator_kwargs`; it calls the network once at start-up and stops with one line if the
output shape is wrong."""
from __future__ import annotations

import math

import torch
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.net(h)


class ResidualMLPGenerator(nn.Module):
    """z -> a stack of pre-norm residual blocks -> (B, *out_shape); squashed into [0, 1] for images.
    LayerNorm normalizes each sample on its own, so the network does not depend on how a batch is split."""

    def __init__(self, latent_dim: int, out_shape: tuple[int, ...], images: bool, width: int = 128, blocks: int = 3):
        super().__init__()
        self.out_shape, self.images = tuple(out_shape), images
        self.inp = nn.Linear(latent_dim, width)
        self.blocks = nn.Sequential(*[ResidualBlock(width) for _ in range(blocks)])
        self.out = nn.Linear(width, math.prod(out_shape))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.out(self.blocks(self.inp(z))).reshape(len(z), *self.out_shape)  # (B, *out_shape)
        return torch.sigmoid(x) if self.images else x
