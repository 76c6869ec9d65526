"""VAE (Kingma & Welling 2014) with amortized Gaussian q(z|x), standard normal prior and a Bernoulli or
Gaussian decoder, trained on the reparameterized ELBO; tested with the ELBO and the importance-weighted
log-likelihood estimate (Burda et al. 2016).
"""
from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from gendist.config import RunConfig
from gendist.errors import UserError
from gendist.metrics import importance_weighted_bound, log_bernoulli_logits, log_normal_diag, log_standard_normal
from gendist.nets import MLP, ConvDecoder, ConvEncoder
from gendist.data.info import DataInfo
from gendist.recipes.base import Batch, Nets, Phase


class VAE(nn.Module):
    """Encoder (B, ...) -> (mean, log_var) of q(z|x); decoder z -> parameters of p(x|z)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int, likelihood: str):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.latent_dim, self.likelihood = latent_dim, likelihood
        # Gaussian decoder: one learned log-variance shared by all pixels/coordinates.
        self.log_var_x = nn.Parameter(torch.zeros(1)) if likelihood == "gaussian" else None  # 1-D: FSDP shards no scalars

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = self.encoder(x).chunk(2, dim=-1)  # (B, Z) each
        return mean, log_var.clamp(-12.0, 8.0)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over data dimensions, (B,)."""
        out = self.decoder(z)
        if self.likelihood == "bernoulli":
            return log_bernoulli_logits(x, out)
        return log_normal_diag(x, out, self.log_var_x.expand_as(out))

    def mean_sample(self, z: torch.Tensor) -> torch.Tensor:
        out = self.decoder(z)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    def importance_weighted(self, x: torch.Tensor, samples: int, generator: torch.Generator) -> torch.Tensor:
        return importance_weighted_log_likelihood(self, x, samples, generator)

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample ELBO terms with z = mean + std * eps (the reparameterization trick)."""
        mean, log_var = self.encode(x)
        z = mean + torch.exp(0.5 * log_var) * eps
        reconstruction = self.log_likelihood(x, z)
        kl = 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(-1)  # KL(q(z|x) || N(0, I)), closed form
        return {"reconstruction": reconstruction, "kl": kl, "elbo": reconstruction - kl}


def elbo_loss(nets: Nets, batch: Batch, step: int, *, latent_dim: int) -> dict[str, torch.Tensor]:
    terms = nets.vae(batch.x, batch.randn(latent_dim))
    return {"loss": -terms["elbo"].mean(), "reconstruction": terms["reconstruction"].mean().detach(),
            "kl": terms["kl"].mean().detach()}


@torch.no_grad()
def importance_weighted_log_likelihood(vae: VAE, x: torch.Tensor, samples: int,
                                       generator: torch.Generator) -> torch.Tensor:
    """log p(x) >= log mean_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x); (B,). Tight as samples grows."""
    mean, log_var = vae.encode(x)
    log_weights = []
    for _ in range(samples):
        z = mean + torch.exp(0.5 * log_var) * torch.randn(mean.shape, generator=generator).to(mean.device)
        log_weights.append(vae.log_likelihood(x, z) + log_standard_normal(z) - log_normal_diag(z, mean, log_var))
    return importance_weighted_bound(torch.stack(log_weights))  # (K, B) -> (B,)


class VAERecipe:
    units = {"vae": ("vae",)}
    input_grid = "reconstructions"  # what `sample(..., inputs)` makes: saved next to the sample grids
    ema_networks = ("vae",)

    def __init__(self, config: RunConfig, data_info: DataInfo):
        self.config = config
        self.info = data_info

    def build_networks(self) -> dict[str, nn.Module]:
        model, shape = self.config.model, self.info.sample_shape
        if model.arch == "conv":
            encoder: nn.Module = ConvEncoder(shape[0], shape[1:], 2 * model.latent_dim, model.hidden)
            decoder: nn.Module = ConvDecoder(model.latent_dim, shape[0], shape[1:], model.hidden)
        else:
            dim = math.prod(shape)
            encoder = MLP(dim, 2 * model.latent_dim, model.hidden, model.depth)
            decoder = MLP(model.latent_dim, dim, model.hidden, model.depth, out_shape=shape)
        return {"vae": VAE(encoder, decoder, model.latent_dim, self.config.vae.decoder)}

    def phases(self) -> list[Phase]:
        return [Phase("elbo", "vae", partial(elbo_loss, latent_dim=self.config.model.latent_dim))]

    def sample(self, nets: Nets, count: int, generator: torch.Generator,
               inputs: torch.Tensor | None = None) -> torch.Tensor:
        """`count` decoder means of z ~ N(0, I); with `inputs` (data), their reconstructions (encoder means)."""
        device = next(nets.vae.parameters()).device
        if inputs is not None:
            z, _ = nets.vae.encode(inputs.to(device))
        else:
            z = torch.randn(count, self.config.model.latent_dim, generator=generator).to(device)
        return nets.vae.mean_sample(z)

    def encode(self, nets: Nets, x: torch.Tensor, features: str = "encoder") -> torch.Tensor:
        """The mean of q(z|x)."""
        if features != "encoder":
            raise UserError("--features discriminator: a VAE has no discriminator; use --features encoder")
        mean, _ = nets.vae.encode(x.to(next(nets.vae.parameters()).device))
        return mean

    @torch.no_grad()
    def scores(self, nets: Nets, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Per-sample ELBO and importance-weighted bound on held-out data x, (B,) each."""
        device = next(nets.vae.parameters()).device
        x = x.to(device)
        eps = torch.randn(x.shape[0], self.config.model.latent_dim, generator=generator).to(device)
        samples = self.config.vae.iw_samples
        return {"test_elbo": nets.vae(x, eps)["elbo"],
                f"test_log_likelihood_iw{samples}": nets.vae.importance_weighted(x, samples, generator)}
