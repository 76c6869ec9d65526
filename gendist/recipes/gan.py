"""GAN (Goodfellow et al. 2014): alternating discriminator and generator phases.

Discriminator: maximize E log D(x) + E log(1 - D(G(z))), written with logits l = D(x) as
softplus(-l_real) + softplus(l_fake). Generator: "minimax" minimizes E log(1 - D(G(z))) = -softplus(l_fake)
(saturates when D wins early); "nonsaturating" minimizes -E log D(G(z)) = softplus(-l_fake).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from gendist.config import RunConfig
from gendist.divergences import (critic_objective, generator_objective, generator_objective_nonsaturating,
                                 get_divergence)
from gendist.evaluation import sample_metrics
from gendist.nets import MLP, ConvDecoder, ConvEncoder
from gendist.recipes.base import Batch, DataInfo, Nets, Phase


class ImageGenerator(nn.Module):
    """z -> image in [0, 1] (the data's range)."""

    def __init__(self, latent_dim: int, shape: tuple[int, ...], base_channels: int):
        super().__init__()
        self.decoder = ConvDecoder(latent_dim, shape[0], shape[-1], base_channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z))


def discriminator_loss(nets: Nets, batch: Batch, step: int, *, latent_dim: int) -> dict[str, torch.Tensor]:
    fake = nets.generator(batch.randn(latent_dim)).detach()
    real_logits = nets.discriminator(batch.x)  # (B, 1)
    fake_logits = nets.discriminator(fake)  # (B, 1)
    loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    accuracy = 0.5 * ((real_logits > 0).float().mean() + (fake_logits < 0).float().mean())
    return {"loss": loss, "d_accuracy": accuracy.detach()}


def generator_loss(nets: Nets, batch: Batch, step: int, *, latent_dim: int, kind: str) -> dict[str, torch.Tensor]:
    fake_logits = nets.discriminator(nets.generator(batch.randn(latent_dim)))  # (B, 1)
    if kind == "minimax":
        loss = -F.softplus(fake_logits).mean()
    else:
        loss = F.softplus(-fake_logits).mean()
    return {"loss": loss}


def fgan_critic_loss(nets: Nets, batch: Batch, step: int, *, latent_dim: int, divergence) -> dict[str, torch.Tensor]:
    """The critic maximizes the variational bound E_P[g_f(V(x))] - E_Q[f*(g_f(V(G(z))))] (Nowozin et al. 2016)."""
    fake = nets.generator(batch.randn(latent_dim)).detach()
    bound = critic_objective(divergence, nets.discriminator(batch.x), nets.discriminator(fake))
    return {"loss": -bound, "divergence_bound": bound.detach()}


def fgan_generator_loss(nets: Nets, batch: Batch, step: int, *, latent_dim: int, divergence,
                        saturating: bool) -> dict[str, torch.Tensor]:
    fake_scores = nets.discriminator(nets.generator(batch.randn(latent_dim)))
    if saturating:  # minimize the bound itself
        return {"loss": generator_objective(divergence, fake_scores)}
    return {"loss": generator_objective_nonsaturating(divergence, fake_scores)}


class GANRecipe:
    generator_name = "generator"

    def __init__(self, config: RunConfig, data_info: DataInfo):
        self.config = config
        self.info = data_info

    def build_players(self) -> dict[str, nn.Module]:
        model, shape = self.config.model, self.info.sample_shape
        if model.arch == "conv":
            generator: nn.Module = ImageGenerator(model.latent_dim, shape, model.hidden)
            discriminator: nn.Module = ConvEncoder(shape[0], shape[-1], 1, model.hidden)
        else:
            dim = math.prod(shape)
            generator = MLP(model.latent_dim, dim, model.hidden, model.depth, out_shape=shape)
            discriminator = MLP(dim, 1, model.hidden, model.depth, activation=nn.LeakyReLU)
        return {"generator": generator, "discriminator": discriminator}

    def phases(self) -> list[Phase]:
        model = self.config.model
        if model.gan_loss == "fgan":
            divergence = get_divergence(model.divergence, model.alpha)
            d_loss = partial(fgan_critic_loss, latent_dim=model.latent_dim, divergence=divergence)
            g_loss = partial(fgan_generator_loss, latent_dim=model.latent_dim, divergence=divergence,
                             saturating=model.fgan_generator == "saturating")
        else:
            d_loss = partial(discriminator_loss, latent_dim=model.latent_dim)
            g_loss = partial(generator_loss, latent_dim=model.latent_dim, kind=model.gan_loss)
        return [
            Phase("discriminator", ("discriminator",), d_loss, repeat=model.n_critic),
            Phase("generator", ("generator",), g_loss, uses_data=False),
        ]

    def sample(self, nets: Nets, count: int, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(count, self.config.model.latent_dim, generator=generator)
        return nets.generator(z.to(next(nets.generator.parameters()).device))

    def evaluate(self, nets: Nets, test_data: Iterable[torch.Tensor], seed: int) -> dict[str, float]:
        generator = torch.Generator().manual_seed(seed)
        samples = self.sample(nets, self.config.eval.num_samples, generator)
        return sample_metrics(samples, test_data, self.info, seed)
