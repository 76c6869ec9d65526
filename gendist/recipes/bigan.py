"""BiGAN (Donahue, Krähenbühl & Darrell 2017; "ALI", Dumoulin et al. 2017): a generator G: z -> x, an
encoder E: x -> z and a discriminator D on joint pairs that separates (x, E(x)) from (G(z), z).

E and G form one unit (one optimizer, one wrapper) trained against D. At the optimum E inverts G, so E(x)
is a learned representation of x (probed in benchmarks/bigan_probe.py) and G(E(x)) reconstructs x.
- D minimizes -E log D(x, E(x)) - E log(1 - D(G(z), z)).
- minimax: E, G maximize D's loss. nonsaturating: they minimize -E log(1 - D(x, E(x))) - E log D(G(z), z)
  (labels swapped: the same fixed point, strong gradients early on).
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from gendist.config import RunConfig
from gendist.data.info import DataInfo
from gendist.nets.registry import NetworkBuilder
from gendist.recipes.base import Batch, Nets, Phase
from gendist.recipes.gan import bce_discriminator


def discriminator_loss(nets: Nets, batch: Batch, step: int, *, latent_dim: int) -> dict[str, torch.Tensor]:
    z = batch.randn(latent_dim)
    fake = nets.generator(z).detach()
    code = nets.encoder(batch.x).detach()
    real_scores = nets.discriminator(batch.x, code)  # (B, 1): pairs (x, E(x))
    fake_scores = nets.discriminator(fake, z)  # (B, 1): pairs (G(z), z)
    return {"loss": bce_discriminator(real_scores, fake_scores),
            "real_score": real_scores.detach().float().mean(), "fake_score": fake_scores.detach().float().mean()}


def encoder_generator_loss(nets: Nets, batch: Batch, step: int, *, latent_dim: int,
                           nonsaturating: bool) -> dict[str, torch.Tensor]:
    z = batch.randn(latent_dim)
    real_scores = nets.discriminator(batch.x, nets.encoder(batch.x))
    fake_scores = nets.discriminator(nets.generator(z), z)
    if nonsaturating:
        loss = F.softplus(real_scores).mean() + F.softplus(-fake_scores).mean()
    else:
        loss = -bce_discriminator(real_scores, fake_scores)
    return {"loss": loss}


class BiGANRecipe:
    units = {"generator": ("generator", "encoder"), "discriminator": ("discriminator",)}
    input_grid = "reconstructions"  # what `sample(..., inputs)` makes: saved next to the sample grids
    ema_networks = ("generator", "encoder")
    train_scores = True  # a reconstruction per row: evaluation also scores as many training rows (gap/...)

    def __init__(self, config: RunConfig, data_info: DataInfo):
        self.config = config
        self.info = data_info

    def build_networks(self) -> dict[str, nn.Module]:
        shape, latent_dim = self.info.sample_shape, self.config.model.latent_dim
        build = NetworkBuilder(self.config, self.info.kind == "images")
        return {"generator": build("generator", "generator", (latent_dim,), shape),
                "encoder": build("encoder", "encoder", shape, (latent_dim,)),
                "discriminator": build("joint_discriminator", "discriminator", shape, (1,), latent_dim=latent_dim)}

    def phases(self) -> list[Phase]:
        latent_dim = self.config.model.latent_dim
        bigan = self.config.bigan
        return [Phase("discriminator", "discriminator", partial(discriminator_loss, latent_dim=latent_dim),
                      repeat=bigan.n_critic),
                Phase("generator", "generator", partial(encoder_generator_loss, latent_dim=latent_dim,
                                                        nonsaturating=bigan.loss == "nonsaturating"))]

    def sample(self, nets: Nets, count: int, generator: torch.Generator,
               inputs: torch.Tensor | None = None) -> torch.Tensor:
        """`count` samples G(z); with `inputs` (data), their reconstructions G(E(x))."""
        device = next(nets.generator.parameters()).device
        if inputs is not None:
            return nets.generator(nets.encoder(inputs.to(device)))
        z = torch.randn(count, self.config.model.latent_dim, generator=generator)
        return nets.generator(z.to(device))

    def encode(self, nets: Nets, x: torch.Tensor, features: str = "encoder") -> torch.Tensor:
        """E(x), or D's last hidden layer on (x, E(x)) with features="discriminator"."""
        x = x.to(next(nets.encoder.parameters()).device)
        code = nets.encoder(x)
        return code if features == "encoder" else nets.discriminator.features(x, code)

    @torch.no_grad()
    def scores(self, nets: Nets, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Per-sample mean squared error of the reconstruction G(E(x)) of held-out data x, (B,)."""
        x = x.to(next(nets.generator.parameters()).device)
        return {"reconstruction_mse": (self.sample(nets, len(x), generator, x).float() - x.float()).pow(2).flatten(1).mean(1)}
