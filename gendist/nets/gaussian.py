"""A learnable Gaussian as a generator: x = mu + sigma * z (the model family of Nowozin et al.'s 1-D fit)."""
from __future__ import annotations

import torch
from torch import nn


class GaussianGenerator(nn.Module):
    """z (B, >= D) -> mu + exp(log_sigma) * z[:, :D], reshaped to (B, *shape). Parameters: `mu`, `log_sigma`."""

    def __init__(self, shape: tuple[int, ...], mu: float = 0.0, sigma: float = 1.0):
        super().__init__()
        dim = 1
        for size in shape:
            dim *= size
        self.shape = shape
        self.mu = nn.Parameter(torch.full((dim,), float(mu)))
        self.log_sigma = nn.Parameter(torch.full((dim,), float(sigma)).log())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        dim = self.mu.shape[0]
        if z.shape[1] < dim:
            raise ValueError(f"GaussianGenerator needs latent_dim >= {dim}, got {z.shape[1]}")
        x = self.mu + self.log_sigma.exp() * z[:, :dim]  # (B, D)
        return x.reshape(z.shape[0], *self.shape)
