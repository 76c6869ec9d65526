"""DCGAN-style convolutional encoder (also the discriminator) and decoder (also the generator).

Spatial sizes are powers of two >= 8: the decoder starts at 4x4 and doubles with strided transposed
convolutions; the encoder mirrors it. BatchNorm is avoided on purpose: it couples samples in a batch,
which breaks the world-size independence of per-sample losses and needs its own sync under DDP.
"""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from gendist.errors import UserError


def _num_doublings(image_size: int) -> int:
    doublings = math.log2(image_size) - 2
    if image_size < 8 or doublings != int(doublings):
        raise UserError(f"model.arch=conv needs square images of size 8, 16, 32, ... (got {image_size}); "
                        "use model.arch=mlp for other sizes")
    return int(doublings)


class ConvEncoder(nn.Module):
    """(B, C, S, S) -> (B, out_dim): strided 4x4 convolutions with LeakyReLU down to 4x4, then linear."""

    def __init__(self, channels: int, image_size: int, out_dim: int, base_channels: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        width = channels
        for level in range(_num_doublings(image_size)):
            out = base_channels * 2 ** level
            layers += [nn.Conv2d(width, out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            width = out
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width * 16, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)  # (B, W, 4, 4)
        return self.head(rearrange(h, "b c h w -> b (c h w)"))


class ConvDecoder(nn.Module):
    """(B, in_dim) -> (B, C, S, S) logits: linear to 4x4, then strided transposed convolutions."""

    def __init__(self, in_dim: int, channels: int, image_size: int, base_channels: int = 64):
        super().__init__()
        doublings = _num_doublings(image_size)
        self.width = base_channels * 2 ** max(doublings - 1, 0)
        self.project = nn.Sequential(nn.Linear(in_dim, self.width * 16), nn.ReLU())
        layers: list[nn.Module] = []
        width = self.width
        for level in reversed(range(doublings)):
            out = base_channels * 2 ** max(level - 1, 0)
            layers += [nn.ConvTranspose2d(width, out, 4, stride=2, padding=1), nn.ReLU()]
            width = out
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = rearrange(self.project(z), "b (c h w) -> b c h w", h=4, w=4)  # (B, W, 4, 4)
        return self.layers(h)  # (B, C, S, S)
