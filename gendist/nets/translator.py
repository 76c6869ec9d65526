"""The image translator of the image architectures (conv, resnet, stylegan2): CycleGAN's generator (Zhu et al.
2017, after Johnson et al. 2016), fully convolutional, so every output pixel is computed from a neighbourhood
of the same place in the input. A translation that changes style (intensity, texture, stroke) but not geometry
is then what the network starts near; a network through a global code (encoder -> vector -> decoder) must
re-invent where every stroke was, and cycle-consistently trades one shape for another instead.

    stem     reflect-pad, 3x3 conv C_in -> width, norm, act           (H, W)
    down     3x3 conv stride 2, norm, act; channels x2                (up to `downsample` times, sides >= 32)
    blocks   `blocks` residual blocks: x + norm(conv(act(norm(conv(x)))))   (CycleGAN's, reflect-padded)
    up       nearest upsampling to the exact size before each down, 3x3 conv, norm, act; channels / 2
    out      reflect-pad, 3x3 conv width -> C_out: logits

Downsampling stops at a 32-pixel side (MIN_SIDE; CycleGAN's translators for 256x256 images stop at 64), and
at `downsample` stride-2 convolutions (cyclegan.downsample, CycleGAN's 2). Below that every translated pixel
would be decoded from a map coarser than the strokes of the image: the translator must redraw it, and CycleGAN
then converges to cycle-consistent maps that trade one shape for another. Measured on 8x8 digits <-> inverted
digits (benchmarks/RESULTS.md): through a 4x4 map 0.00-0.08 of labels kept; at full size 0.97-0.98, with
receptive fields of 5 to 17 pixels (`receptive_field()`), so what matters is the resolution kept, not how
much of the image a pixel sees. CyCADA (Hoffman et al. 2018) reports the same label flipping for CycleGAN on
digits.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from gendist.nets.norm import PerSampleNorm

MAX_DOWNSAMPLES = 2  # CycleGAN's: two stride-2 convolutions before the residual blocks
MIN_SIDE = 32  # no downsampling below a 32-pixel side


def translator_sizes(height: int, width: int, downsample: int = MAX_DOWNSAMPLES) -> list[tuple[int, int]]:
    """The (H, W) of every level, the input's first: each stride-2 conv maps a side s to (s + 1) // 2; at most
    `downsample` of them, and none that takes a side below MIN_SIDE."""
    sizes = [(height, width)]
    while len(sizes) <= downsample:
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
    """(B, C_in, H, W) -> (B, C_out, H, W) logits; `width` channels at full size, `blocks` residual blocks, up to
    `downsample` stride-2 convolutions."""

    def __init__(self, in_channels: int, out_channels: int, size: tuple[int, int], width: int, blocks: int,
                 activation: Callable[[], nn.Module] | None = None, downsample: int = MAX_DOWNSAMPLES):
        super().__init__()
        activation = activation or nn.ReLU
        self.sizes = translator_sizes(*size, downsample)
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

    def receptive_field(self) -> int:
        """The side of the input window one output pixel depends on (the usual recurrence: a k x k convolution
        adds (k - 1) x the current jump, a stride-2 one doubles the jump, nearest upsampling halves it)."""
        field, jump = 3, 1  # stem
        for _ in self.down:
            field, jump = field + 2 * jump, jump * 2
        field += 2 * 2 * jump * len(self.blocks)
        for _ in self.up:
            jump //= 2
            field += 2 * jump
        return field + 2 * jump  # output convolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)  # (B, width, H, W)
        for down in self.down:
            h = down(h)  # (B, 2c, ceil(h/2), ceil(w/2))
        h = self.blocks(h)
        for up, size in zip(self.up, reversed(self.sizes[:-1])):
            h = up(F.interpolate(h, size=size, mode="nearest"))  # back to the size before that down
        return self.out(h)  # (B, C_out, H, W)


__all__ = ["ImageTranslator", "translator_sizes"]
