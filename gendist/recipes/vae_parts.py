"""The pieces of a VAE that the lecture varies: the latent family q(z|x) / p(z) and the decoder p(x|z).

Latents (`vae.latent`):
- gaussian: q(z|x) = N(mean, diag(var)), p(z) = N(0, I); reparameterized samples; analytic KL.
- categorical: `model.latent_dim` independent categorical variables of `vae.categories` classes each (one-hot,
  concatenated for the decoder), uniform prior; trained with the score-function estimator or enumeration.
- bernoulli: `model.latent_dim` binary units, prior Bernoulli(1/2); score function or enumeration.
Decoders (`vae.decoder`): bernoulli (logits), gaussian (one learned shared variance, or a fixed std with
`vae.decoder_std` > 0) and categorical over `vae.levels` pixel levels (x in [0, 1] quantized to
round(x * (levels - 1))).

All functions are batch-first and return per-sample values (summed over latent or data dimensions); a leading
importance-sample axis (K, B, ...) is flattened by the caller.
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from einops import rearrange

from gendist.metrics import log_bernoulli_logits, log_normal_diag, log_standard_normal
from gendist.metrics.likelihood import sum_per_sample

MAX_ENUMERATION = 4096  # latent configurations an exact (enumerated) expectation may sum over


# -- latents ----------------------------------------------------------------------------------------------

def encoder_outputs(latent: str, latent_dim: int, categories: int) -> int:
    """Width of the encoder's output for a latent family."""
    return {"gaussian": 2 * latent_dim, "categorical": latent_dim * categories, "bernoulli": latent_dim}[latent]


def decoder_inputs(latent: str, latent_dim: int, categories: int) -> int:
    return latent_dim * categories if latent == "categorical" else latent_dim


def num_configurations(latent: str, latent_dim: int, categories: int) -> int:
    """How many values a discrete z takes (0 for continuous latents)."""
    if latent == "gaussian":
        return 0
    return (categories if latent == "categorical" else 2) ** latent_dim


def uniforms_from_normal(noise: torch.Tensor) -> torch.Tensor:
    """Standard-normal noise -> uniforms in (0, 1), kept off the ends (the engine's noise is normal)."""
    return torch.special.ndtr(noise.float()).clamp(1e-7, 1 - 1e-7)


def sample_discrete(latent: str, logits: torch.Tensor, uniforms: torch.Tensor, categories: int) -> torch.Tensor:
    """z ~ q(z|x) from `uniforms` of logits' shape: one-hot (..., Z * C) by Gumbel-max, or bits (..., Z)."""
    if latent == "bernoulli":
        return (uniforms < torch.sigmoid(logits.float())).to(logits.dtype)
    grouped = rearrange(logits.float(), "... (z c) -> ... z c", c=categories)
    gumbel = -torch.log(-torch.log(rearrange(uniforms, "... (z c) -> ... z c", c=categories)))
    one_hot = F.one_hot((grouped + gumbel).argmax(-1), categories).to(logits.dtype)  # (..., Z, C)
    return rearrange(one_hot, "... z c -> ... (z c)")


def log_q_discrete(latent: str, logits: torch.Tensor, z: torch.Tensor, categories: int) -> torch.Tensor:
    """log q(z|x) summed over latent variables, (...)."""
    if latent == "bernoulli":
        logits, z = torch.broadcast_tensors(logits.float(), z.float())
        return -F.binary_cross_entropy_with_logits(logits, z, reduction="none").sum(-1)
    log_probs = F.log_softmax(rearrange(logits.float(), "... (z c) -> ... z c", c=categories), -1)
    return (log_probs * rearrange(z.float(), "... (z c) -> ... z c", c=categories)).sum((-1, -2))


def log_prior_discrete(latent: str, latent_dim: int, categories: int) -> float:
    """log p(z) of the uniform prior (the same for every configuration)."""
    return -latent_dim * math.log(categories if latent == "categorical" else 2)


def all_configurations(latent: str, latent_dim: int, categories: int, device, dtype) -> torch.Tensor:
    """Every value of a discrete z, (N, decoder_inputs), in a fixed order."""
    values = range(categories) if latent == "categorical" else range(2)
    rows = []
    for combo in itertools.product(values, repeat=latent_dim):
        if latent == "categorical":
            rows.append(F.one_hot(torch.tensor(combo), categories).reshape(-1))
        else:
            rows.append(torch.tensor(combo))
    return torch.stack(rows).to(device=device, dtype=dtype)


def gaussian_kl(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, var) || N(0, I)) per latent dimension, (..., Z): closed form."""
    return 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var)


def gaussian_log_weight_terms(z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log p(z) - log q(z|x) per sample, for z (K, B, Z) against q's (B, Z) parameters -> (K, B)."""
    k = z.shape[0]
    flat = rearrange(z, "k b z -> (k b) z")
    log_p = log_standard_normal(flat)
    log_q = log_normal_diag(flat, mean.repeat(k, 1), log_var.repeat(k, 1))
    return rearrange(log_p - log_q, "(k b) -> k b", k=k)


# -- decoders ---------------------------------------------------------------------------------------------

def decoder_channels(decoder: str, channels: int, levels: int) -> int:
    """Output channels (or features) per data channel the decoder must produce."""
    return channels * levels if decoder == "categorical" else channels


def quantize(x: torch.Tensor, levels: int) -> torch.Tensor:
    """x in [0, 1] -> level indices in {0, ..., levels - 1}."""
    return (x.float().clamp(0, 1) * (levels - 1)).round().long()


def level_logits(out: torch.Tensor, levels: int) -> torch.Tensor:
    """Decoder output (B, C * L, ...) -> (B, C, ..., L) logits over pixel levels."""
    return rearrange(out, "b (c l) ... -> b c ... l", l=levels)


def log_likelihood(decoder: str, x: torch.Tensor, out: torch.Tensor, log_var_x: torch.Tensor | None,
                   levels: int) -> torch.Tensor:
    """log p(x|z) summed over data dimensions, (B,). `out` is the decoder's output for z."""
    if decoder == "bernoulli":
        return log_bernoulli_logits(x, out)
    if decoder == "gaussian":
        return log_normal_diag(x, out, log_var_x.expand_as(out))
    log_probs = F.log_softmax(level_logits(out.float(), levels), dim=-1)  # (B, C, ..., L)
    return sum_per_sample(log_probs.gather(-1, quantize(x, levels).unsqueeze(-1)).squeeze(-1))


def mean_of(decoder: str, out: torch.Tensor, levels: int) -> torch.Tensor:
    """E[x|z] in the data's range: the picture a sample grid shows."""
    if decoder == "bernoulli":
        return torch.sigmoid(out)
    if decoder == "gaussian":
        return out
    probs = torch.softmax(level_logits(out.float(), levels), dim=-1)
    grid = torch.linspace(0, 1, levels, device=out.device)
    return (probs * grid).sum(-1).to(out.dtype)


def fixed_log_var(std: float) -> torch.Tensor:
    return torch.tensor([2.0 * math.log(std)])
