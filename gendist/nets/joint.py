"""Discriminator on joint (x, z) pairs (BiGAN): an x branch (any network x -> (B, hidden), from the
architecture), a z branch, a joint hidden layer (`features`, the representation the lecture's "solution 1"
reads) and a linear score head."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class JointDiscriminator(nn.Module):
    def __init__(self, x_branch: nn.Module, latent_dim: int, hidden: int,
                 activation: Callable[[], nn.Module] | None = None):
        super().__init__()
        self.x_branch = x_branch  # x (B, ...) -> (B, hidden)
        activation = activation or (lambda: nn.LeakyReLU(0.2))
        self.z_branch = nn.Sequential(nn.Linear(latent_dim, hidden), activation())
        self.joint = nn.Sequential(activation(), nn.Linear(2 * hidden, hidden), activation())
        self.head = nn.Linear(hidden, 1)

    def features(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The last hidden layer, (B, hidden)."""
        return self.joint(torch.cat([self.x_branch(x), self.z_branch(z)], dim=1))  # (B, 2 hidden) -> (B, hidden)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x, z))  # (B, 1)
