"""DCGAN-style convolutional encoder (also the discriminator) and decoder (also the generator), for images
of any size H x W >= 8 x 8 and any number of channels (28x28 grey, 32x32 RGB, 64x64, non-square).

The encoder halves both sides with strided 4x4 convolutions (a side s becomes floor(s / 2)) while the
smaller side stays >= 4, then a linear head reads the (h_n, w_n) map. The decoder walks the same sizes
backwards: a linear layer to (h_n, w_n), then transposed convolutions that double each side, with
`output_padding` 1 where the encoder's side was odd, so it ends at exactly H x W. For square power-of-two
sizes this is the classic 4x4-bottleneck DCGAN. BatchNorm is avoided on purpose: it couples samples in a
batch, which breaks the world-size independence of per-sample losses and needs its own sync under DDP.
"""
from __future__ import annotations

from typing import Callable

import torch
from einops import rearrange
from torch import nn

from gendist.errors import UserError

MIN_SIDE = 8


def feature_sizes(image_shape: tuple[int, int]) -> list[tuple[int, int]]:
    """Spatial sizes of the encoder's feature maps, from (H, W) down to the bottleneck, e.g. (28, 28) ->
    [(28, 28), (14, 14), (7, 7)], (24, 40) -> [(24, 40), (12, 20), (6, 10)]."""
    height, width = (int(side) for side in image_shape)
    if min(height, width) < MIN_SIDE:
        raise UserError(f"image networks (model.arch conv, resnet, stylegan2) need images of at least {MIN_SIDE}x{MIN_SIDE} pixels (got {height}x{width}); "
                        "use model.arch=mlp for smaller ones")
    sizes = [(height, width)]
    while min(sizes[-1]) // 2 >= 4:
        sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2))
    return sizes


class ConvEncoder(nn.Module):
    """(B, C, H, W) -> (B, out_dim): strided 4x4 convolutions with LeakyReLU(0.2) (or `activation`), then a
    linear head."""

    def __init__(self, channels: int, image_shape: tuple[int, int], out_dim: int, base_channels: int = 64,
                 activation: Callable[[], nn.Module] | None = None):
        super().__init__()
        activation = activation or (lambda: nn.LeakyReLU(0.2))
        sizes = feature_sizes(image_shape)
        layers: list[nn.Module] = []
        width = channels
        for level in range(len(sizes) - 1):
            out = base_channels * 2 ** level
            layers += [nn.Conv2d(width, out, 4, stride=2, padding=1), activation()]
            width = out
        layers += [nn.Conv2d(width, width, 3, padding=1), activation()]
        self.features = nn.Sequential(*layers)
        bottom_h, bottom_w = sizes[-1]
        self.head = nn.Linear(width * bottom_h * bottom_w, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)  # (B, W, h_n, w_n)
        return self.head(rearrange(h, "b c h w -> b (c h w)"))


class ConvDecoder(nn.Module):
    """(B, in_dim) -> (B, C, H, W) logits: linear to the encoder's bottleneck, then transposed convolutions."""

    def __init__(self, in_dim: int, channels: int, image_shape: tuple[int, int], base_channels: int = 64,
                 activation: Callable[[], nn.Module] | None = None):
        super().__init__()
        activation = activation or nn.ReLU
        sizes = feature_sizes(image_shape)
        doublings = len(sizes) - 1
        self.width = base_channels * 2 ** max(doublings - 1, 0)
        self.bottom = sizes[-1]
        self.project = nn.Sequential(nn.Linear(in_dim, self.width * self.bottom[0] * self.bottom[1]), activation())
        layers: list[nn.Module] = []
        width = self.width
        for level in reversed(range(doublings)):
            out = base_channels * 2 ** max(level - 1, 0)
            (target_h, target_w), (source_h, source_w) = sizes[level], sizes[level + 1]
            extra = (target_h - 2 * source_h, target_w - 2 * source_w)  # 1 where the side was odd
            layers += [nn.ConvTranspose2d(width, out, 4, stride=2, padding=1, output_padding=extra), activation()]
            width = out
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = rearrange(self.project(z), "b (c h w) -> b c h w", h=self.bottom[0], w=self.bottom[1])  # (B, W, h_n, w_n)
        return self.layers(h)  # (B, C, H, W)
