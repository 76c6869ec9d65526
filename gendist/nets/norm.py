"""Normalization by sample, shared by the image networks (resnet, the image translator)."""
from __future__ import annotations

import torch
from torch import nn


class PerSampleNorm(nn.Module):
    """GroupNorm with up to 32 groups of at least 2 channels: statistics per sample, never across the batch.
    (One channel per group, instance normalization, would cancel every per-channel constant before it: the
    biases of the convolutions in front would get no gradient and only collect round-off.)

    `cond_dim` > 0: class-conditional (BigGAN's conditional normalization): the gain and bias are
    1 + gain(c) and bias(c), linear in the generator's class embedding c (B, cond_dim), and forward takes c."""

    def __init__(self, channels: int, cond_dim: int = 0):
        super().__init__()
        groups = max(g for g in range(1, max(1, min(32, channels // 2)) + 1) if channels % g == 0)
        self.norm = nn.GroupNorm(groups, channels, affine=not cond_dim)
        self.gain = nn.Linear(cond_dim, channels, bias=False) if cond_dim else None
        self.bias = nn.Linear(cond_dim, channels, bias=False) if cond_dim else None

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm(x)
        if self.gain is None:
            return h
        gain, bias = 1 + self.gain(c), self.bias(c)  # (B, channels) each
        return h * gain[:, :, None, None] + bias[:, :, None, None]


__all__ = ["PerSampleNorm"]
