"""Class-conditional networks (model.conditional=true): a network of a conditional role is called `net(input, y)`
with y the int64 class labels (B,).

An architecture conditions natively where the design calls for it (resnet: class-conditional gains and biases of
every per-sample normalization of the generator, BigGAN-style; stylegan2: the class embedding joins z at the
mapping network, StyleGAN2-ADA-style). Everything else is conditioned here, around any unconditional network
of the role, so every architecture and every user's network works conditionally:

- generator / decoder: `EmbedConcat`, a learned class embedding concatenated to the latent (the cGAN / cVAE
  way of Mirza and Osindero 2014, Sohn et al. 2015);
- discriminator: `ProjectionDiscriminator` (Miyato and Koyama 2018): phi = act(net(x)) with the network built
  to `model.hidden` features, score = psi . phi + embed(y) . phi; the inner product with the class embedding
  is what makes it a projection discriminator rather than a concatenation one;
- encoder: `ClassChannels`, the class as one-hot planes appended to the image's channels (a vector's features
  for points), the standard conditional-VAE encoder input.

(AC-GAN's discriminator is not conditional: it is an unconditional network with 1 + K outputs, the score and
the class logits; gendist.recipes.gan reads them.)
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def embedding_width(num_classes: int, in_dim: int) -> int:
    """Width of the class embedding concatenated to a latent of `in_dim`: as wide as the latent (so the class
    weighs like the noise), at least the number of classes."""
    return max(num_classes, in_dim)


class EmbedConcat(nn.Module):
    """net(concat[z, embed(y)]): `net` maps (B, in_dim + width) to the output."""

    def __init__(self, net: nn.Module, num_classes: int, width: int):
        super().__init__()
        self.net, self.embed = net, nn.Embedding(num_classes, width)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, self.embed(y).to(z.dtype)], dim=1))


class ProjectionDiscriminator(nn.Module):
    """score(x, y) = psi . phi(x) + b + embed(y) . phi(x), phi(x) = act(body(x)) (B, features)."""

    def __init__(self, body: nn.Module, features: int, num_classes: int, activation: Callable[[], nn.Module]):
        super().__init__()
        self.body, self.activation = body, activation()
        self.head = nn.Linear(features, 1)
        self.embed = nn.Embedding(num_classes, features)
        nn.init.normal_(self.embed.weight, std=features ** -0.5)  # the projection starts as large as the head

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        phi = self.activation(self.body(x))  # (B, F)
        return self.head(phi) + (self.embed(y).to(phi.dtype) * phi).sum(dim=1, keepdim=True)  # (B, 1)


class ClassChannels(nn.Module):
    """net(concat[x, one_hot(y)]): images get K constant planes (B, C + K, H, W), vectors K features."""

    def __init__(self, net: nn.Module, num_classes: int):
        super().__init__()
        self.net, self.num_classes = net, num_classes

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(y, self.num_classes).to(x.dtype)  # (B, K)
        if x.dim() > 2:
            one_hot = one_hot[(..., *([None] * (x.dim() - 2)))].expand(-1, -1, *x.shape[2:])  # (B, K, H, W)
        return self.net(torch.cat([x, one_hot], dim=1))


def balanced_labels(count: int, num_classes: int, device=None) -> torch.Tensor:
    """0, 1, ..., K-1, 0, 1, ...: `count` labels with every class equally often (within one)."""
    return torch.arange(count, device=device) % num_classes


__all__ = ["ClassChannels", "EmbedConcat", "ProjectionDiscriminator", "balanced_labels", "embedding_width"]
