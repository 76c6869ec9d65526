"""A user's recipe: a generative moment matching network (Li, Swersky & Zemel 2015; Dziugaite et al. 2015).

One network, one unit, one phase: the generator minimizes the squared maximum mean discrepancy between a
batch of data and a batch of its samples, under a sum of Gaussian kernels. It follows gendist's Recipe
protocol (gendist.recipes.base): `units`, `ema_networks`, `build_networks()`, `phases()`, `sample()`. Its
options are the `recipe:` config section, checked against `Config`. Each rank's loss is the MMD of its own
micro-batch (a statistic of the batch, not a mean of per-sample terms), so 2 ranks x b is close to, not
equal to, 1 rank x 2b."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

from gendist.config import RunConfig, recipe_options
from gendist.data.info import DataInfo
from gendist.nets.registry import NetworkBuilder
from gendist.recipes.base import Batch, Nets, Phase


@dataclass
class GMMNConfig:
    bandwidths: list[float] = field(default_factory=lambda: [0.05, 0.2, 1.0])  # Gaussian kernel widths (sigma)


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidths: list[float]) -> torch.Tensor:
    """The biased squared MMD estimate between x (N, D) and y (M, D) under sum_s exp(-|a - b|^2 / (2 s^2))."""
    both = torch.cat([x, y])  # (N + M, D)
    distances = torch.cdist(both, both).square()  # (N + M, N + M)
    kernel = sum(torch.exp(-distances / (2 * s * s)) for s in bandwidths)
    n = len(x)
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


def gmmn_loss(nets: Nets, batch: Batch, step: int, *, latent_dim: int, bandwidths: list[float]) -> dict:
    fake = nets.generator(batch.randn(latent_dim))
    loss = mmd2(batch.x.flatten(1).float(), fake.flatten(1).float(), bandwidths)
    return {"loss": loss, "mmd2": loss.detach()}


class GMMNRecipe:
    Config = GMMNConfig
    units = {"generator": ("generator",)}
    ema_networks = ("generator",)
    phase_names = ("generator",)

    def __init__(self, config: RunConfig, data_info: DataInfo):
        self.config, self.info = config, data_info
        self.options = recipe_options(config, GMMNConfig)

    def build_networks(self) -> dict[str, nn.Module]:
        build = NetworkBuilder(self.config, self.info.kind == "images")
        return {"generator": build("generator", "generator", (self.config.model.latent_dim,), self.info.sample_shape)}

    def phases(self) -> list[Phase]:
        loss = partial(gmmn_loss, latent_dim=self.config.model.latent_dim, bandwidths=list(self.options.bandwidths))
        return [Phase("generator", "generator", loss)]

    def sample(self, nets: Nets, count: int, generator: torch.Generator,
               inputs: torch.Tensor | None = None) -> torch.Tensor:
        z = torch.randn(count, self.config.model.latent_dim, generator=generator) if inputs is None else inputs
        return nets.generator(z.to(next(nets.generator.parameters()).device))
