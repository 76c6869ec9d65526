"""Log-densities and importance-weighted bounds for VAEs: pure torch math, differentiable, batch-first.

Every log-density sums over all non-batch dimensions and returns one value per sample, shape (B,).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

LOG_TWO_PI = math.log(2.0 * math.pi)


def sum_per_sample(values: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension except the first: (B, ...) -> (B,)."""
    return rearrange(values, "b ... -> b (...)").sum(dim=-1)


def log_normal_diag(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag(exp(log_var))) per sample, (B,). mean and log_var broadcast against x."""
    squared_error = (x - mean).pow(2) * torch.exp(-log_var)
    return sum_per_sample(-0.5 * (LOG_TWO_PI + log_var + squared_error))


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) per sample, (B,): the usual VAE prior."""
    return sum_per_sample(-0.5 * (LOG_TWO_PI + z.pow(2)))


def log_bernoulli_logits(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log Bernoulli(x; sigmoid(logits)) per sample, (B,), for x in [0, 1] (binarized or grey-level images).

    Goes through binary_cross_entropy_with_logits, which is stable for large |logits|.
    """
    return sum_per_sample(-F.binary_cross_entropy_with_logits(logits, x, reduction="none"))


def importance_weighted_bound(log_weights: torch.Tensor) -> torch.Tensor:
    """log (1/K) sum_k w_k per sample (Burda et al. 2016), from log_weights (K, B) -> (B,).

    w_k = p(x, z_k) / q(z_k | x) with z_k ~ q. K=1 is the ELBO; the bound rises towards log p(x) as K grows.
    """
    if log_weights.dim() != 2:
        raise ValueError(f"log_weights must be (K, B), got shape {tuple(log_weights.shape)}")
    return torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0])


def effective_sample_size(log_weights: torch.Tensor) -> torch.Tensor:
    """Kish's effective sample size (sum w)^2 / sum w^2 per sample, (K, B) -> (B,), in [1, K].

    Near K the proposal q matches the posterior; near 1 one sample dominates and the bound is unreliable.
    Computed in log space so large log-weights do not overflow.
    """
    if log_weights.dim() != 2:
        raise ValueError(f"log_weights must be (K, B), got shape {tuple(log_weights.shape)}")
    return torch.exp(2.0 * torch.logsumexp(log_weights, dim=0) - torch.logsumexp(2.0 * log_weights, dim=0))
