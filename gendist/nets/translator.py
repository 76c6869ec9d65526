"""The image translator of the image architectures (conv, resnet, stylegan2): CycleGAN's generator (Zhu et al.
2017, after Johnson et al. 2016), fully convolutional, so every output pixel is computed from a neighbourhood
of the same place in the input. A translation that changes style (intensity, texture, stroke) but not geometry
is then what the network starts near; a network through a global code (encoder -> vector -> decoder) must
re-invent where every stroke was, and cycle-consistently trades one shape for another instead.

    stem     reflect-pad, 3x3 conv C_in -> width, norm, act           (H, W)
    down     3x3 conv stride 2, norm, act; channels x2                (up to 2 times, while each side stays >= 4)
    blocks   `blocks` residual blocks: x + norm(conv(act(norm(conv(x)))))   (CycleGAN's, reflect-padded)
    up       nearest upsampling to the exact size before each down, 3x3 conv, norm, act; channels / 2
    out      reflect-pad, 3x3 conv width -> C_out, starting at zero
    + skip   a 1x1 convolution C_in -> C_out of the input: a per-pixel colour map, starting at the identity
             (x -> 4x - 2 in logits, channel for channel; grey -> RGB copies the grey)

The translator starts as the identity map and learns a per-pixel colour map (the skip) plus a local correction
(the body): a change of style keeps every shape where it was from the first step. Without the skip, the
translators of 8x8 digits <-> inverted digits converged to cycle-consistent maps that trade one digit for
another (labels kept: 0.08 at 1,000 steps, below the 0.12 of untranslated inputs; benchmarks/RESULTS.md).

Normalization is per sample (`PerSampleNorm`: GroupNorm), never across the batch, so a translation does not
depend on the other rows of its batch (which would break 2 ranks x b = 1 x 2b and per-image use). Nearest
upsampling to recorded sizes (not transposed convolutions) handles odd sides (28 -> 14 -> 7 -> 14 -> 28, or
7x9) and has no checkerboard artefacts (Odena et al. 2016)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from gendist.nets.norm import PerSampleNorm

MAX_DOWNSAMPLES = 2  # CycleGAN's: two stride-2 convolutions before the residual blocks
MIN_SIDE = 4  # no downsampling below a 4-pixel side
IDENTITY_GAIN = 4.0  # the skip starts as x -> 4x - 2: sigmoid of it maps [0, 1] onto [0.12, 0.88], monotone


def translator_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """The (H, W) of every level, the input's first: each stride-2 conv maps a side s to (s + 1) // 2."""
    sizes = [(height, width)]
    while len(sizes) <= MAX_DOWNSAMPLES:
        h, w = sizes[-1]
        if min(h, w) // 2 < MIN_SIDE:
            break
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


def reflect_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """A size-preserving 3x3 convolution with reflection padding (CycleGAN's: no zero border to detect)."""
    return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(in_channels, out_channels, 3))


class TranslatorBlock(nn.Module):
    """CycleGAN's residual block: x + norm(conv(act(norm(conv(x)))))."""

    def __init__(self, channels: int, activation: Callable[[], nn.Module]):
        super().__init__()
        self.residual = nn.Sequential(reflect_conv(channels, channels), PerSampleNorm(channels), activation(),
                                      reflect_conv(channels, channels), PerSampleNorm(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual(x)


class ImageTranslator(nn.Module):
    """(B, C_in, H, W) -> (B, C_out, H, W) logits; `width` channels at full size, `blocks` residual blocks.
    `zero_start`: the output starts at exactly zero (a correction of an alignment: cyclegan.align=dihedral)."""

    def __init__(self, in_channels: int, out_channels: int, size: tuple[int, int], width: int, blocks: int,
                 activation: Callable[[], nn.Module] | None = None, zero_start: bool = False):
        super().__init__()
        activation = activation or nn.ReLU
        self.sizes = translator_sizes(*size)
        channels = [width * 2 ** level for level in range(len(self.sizes))]
        self.stem = nn.Sequential(reflect_conv(in_channels, width), PerSampleNorm(width), activation())
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels[level], channels[level + 1], 3, stride=2, padding=1),
                          PerSampleNorm(channels[level + 1]), activation())
            for level in range(len(self.sizes) - 1))
        self.blocks = nn.Sequential(*(TranslatorBlock(channels[-1], activation) for _ in range(blocks)))
        self.up = nn.ModuleList(
            nn.Sequential(reflect_conv(channels[level + 1], channels[level]), PerSampleNorm(channels[level]),
                          activation())
            for level in reversed(range(len(self.sizes) - 1)))
        self.out = reflect_conv(width, out_channels)
        self.skip = nn.Conv2d(in_channels, out_channels, 1)
        with torch.no_grad():
            nn.init.zeros_(self.out[1].weight)
            nn.init.zeros_(self.out[1].bias)
            identity = torch.eye(out_channels, in_channels) if in_channels == out_channels else \
                torch.full((out_channels, in_channels), 1 / in_channels)
            self.skip.weight.copy_(0 if zero_start else IDENTITY_GAIN * identity[:, :, None, None])
            self.skip.bias.fill_(0 if zero_start else -IDENTITY_GAIN / 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)  # (B, width, H, W)
        for down in self.down:
            h = down(h)  # (B, 2c, ceil(h/2), ceil(w/2))
        h = self.blocks(h)
        for up, size in zip(self.up, reversed(self.sizes[:-1])):
            h = up(F.interpolate(h, size=size, mode="nearest"))  # back to the size before that down
        return self.out(h) + self.skip(x)  # (B, C_out, H, W)


__all__ = ["ImageTranslator", "translator_sizes"]
