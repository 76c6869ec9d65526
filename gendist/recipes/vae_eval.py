"""Held-out scores of a VAE: likelihood estimates, their reliability, active units, the amortization gap.

- `test_nll` = -log p(x) in nats, estimated by importance sampling with K = vae.eval_samples samples from
  q(z|x): log (1/K) sum_k p(x, z_k) / q(z_k|x) (a stochastic lower bound on log p(x) that tightens as K grows,
  Burda et al. 2016), computed in blocks of at most vae.eval_budget decoded values (decoder calls x values per
  sample: a memory budget that holds at every image size; every other decoder pass below is blocked the same
  way, the per-datapoint optimization's gradients accumulated block by block). Discrete latents with few
  configurations (<= 4,096) are summed exactly instead.
- `test_nll_prior`: the naive estimate with z_k from the prior, log (1/K) sum_k p(x|z_k): unbiased in p(x)
  but with a huge variance, because almost no prior sample explains a given x (the lecture's remark).
  `test_ess` and `test_ess_prior` are Kish's effective sample sizes of the two weight sets (of K).
- `active_units`: latent dimensions whose posterior mean varies over the data (Var_x E_q[z_j|x] > 0.01).
- `amortization_gap` = ELBO(q_i*) - ELBO(encoder's q), q_i* = per-datapoint Gaussian parameters optimized
  with Adam from the encoder's output (Cremer et al. 2018), with `approximation_gap` = log p(x) - ELBO(q_i*);
  every ELBO here uses the analytic KL and 100 reconstruction samples shared by both q's.
Every function draws its randomness from the generator it is given (evaluation seeds it per chunk), so the
numbers do not depend on how many ranks share the work.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from gendist.config import VAEConfig
from gendist.recipes import vae_parts as parts

ACTIVE_UNIT_THRESHOLD = 0.01
# Rows a block of decoder calls is sized for: evaluation's chunk size (gendist.evaluation.CHUNK), not the rows
# a chunk really has, so every rank makes the same number of decoder calls (collectives under FSDP/ZeRO-3)
# even when its last chunk is short.
BLOCK_ROWS = 500
# Decoded values per block (vae.eval_budget's default): 100,000 decoder calls of the 8x8 digits (64 values each).
# A call's activations grow with the image, so the budget counts values, not calls: at 28x28 a block is 8,163
# calls, at 32x32x3 2,083.
DEFAULT_BUDGET = VAEConfig.eval_budget
ELBO_SAMPLES = 100  # reconstruction samples per datapoint in the ELBOs of the amortization gap


def calls_per_row(budget: int, x: torch.Tensor) -> int:
    """Decoder calls per row of a block of BLOCK_ROWS rows of samples shaped like x[0] that fit in `budget`
    decoded values (at least 1)."""
    return max(1, budget // (BLOCK_ROWS * max(1, math.prod(x.shape[1:]))))


def _noise(shape: tuple[int, ...], generator: torch.Generator, device) -> torch.Tensor:
    return torch.randn(shape, generator=generator).to(device)


def _log_weight_block(vae, x, settings, count: int, generator, proposal: str, posterior=None):
    """log w (count, B) of `count` importance samples for every row of x."""
    rows = x.shape[0]
    if settings.latent == "gaussian":
        if proposal == "prior":
            z = _noise((count, rows, settings.latent_dim), generator, x.device)
            return vae.log_likelihood_k(x, z)
        mean, log_var = posterior if posterior is not None else vae.encode(x)
        z = mean + torch.exp(0.5 * log_var) * _noise((count, rows, settings.latent_dim), generator, x.device)
        return vae.log_likelihood_k(x, z) + parts.gaussian_log_weight_terms(z, mean, log_var)
    logits, _ = vae.encode(x)
    if proposal == "prior":
        logits = torch.zeros_like(logits)
    uniforms = torch.rand((count, rows, settings.encoder_out), generator=generator).to(x.device).clamp(1e-7, 1 - 1e-7)
    z = parts.sample_discrete(settings.latent, logits.unsqueeze(0), uniforms, settings.categories)
    log_q = parts.log_q_discrete(settings.latent, logits.unsqueeze(0), z, settings.categories)
    log_prior = parts.log_prior_discrete(settings.latent, settings.latent_dim, settings.categories)
    log_w = vae.log_likelihood_k(x, z)
    return log_w if proposal == "prior" else log_w + log_prior - log_q


def importance_sampled_log_likelihood(vae, x: torch.Tensor, samples: int, generator: torch.Generator,
                                      proposal: str = "posterior", budget: int = DEFAULT_BUDGET, posterior=None):
    """(log p(x) estimate (B,), effective sample size (B,)) with `samples` importance samples from q(z|x)
    (proposal=posterior; the encoder's, or `posterior` = (mean, log_var) given) or p(z) (proposal=prior), in
    blocks of <= budget decoded values."""
    settings = vae.settings
    rows = x.shape[0]
    per_block = min(samples, calls_per_row(budget, x))
    log_sum = torch.full((rows,), -math.inf, device=x.device)
    log_sum_squares = torch.full((rows,), -math.inf, device=x.device)
    done = 0
    while done < samples:
        count = min(per_block, samples - done)
        log_w = _log_weight_block(vae, x, settings, count, generator, proposal, posterior).float()  # (count, B)
        log_sum = torch.logaddexp(log_sum, torch.logsumexp(log_w, 0))
        log_sum_squares = torch.logaddexp(log_sum_squares, torch.logsumexp(2 * log_w, 0))
        done += count
    return log_sum - math.log(samples), torch.exp(2 * log_sum - log_sum_squares)


def exact_log_likelihood(vae, x: torch.Tensor, budget: int = DEFAULT_BUDGET) -> torch.Tensor:
    """log p(x) = logsumexp_z log p(x|z) + log p(z), summed over every configuration of a discrete z, (B,),
    decoding <= budget values (configurations x rows x values per sample) at a time."""
    s = vae.settings
    z_all = parts.all_configurations(s.latent, s.latent_dim, s.categories, x.device, x.dtype)
    log_joint = vae.reconstruction_all(x, z_all, calls_per_row(budget, x))  # (N, B)
    return torch.logsumexp(log_joint.float(), 0) + parts.log_prior_discrete(s.latent, s.latent_dim, s.categories)


def _eps_blocks(eps: torch.Tensor, x: torch.Tensor, budget: int):
    """eps (S, B, Z) in blocks of draws whose decoder calls hold `budget` decoded values (calls_per_row)."""
    per_block = calls_per_row(budget, x)
    return eps.split(per_block)


def gaussian_elbo(vae, x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor, eps: torch.Tensor,
                  budget: int = DEFAULT_BUDGET) -> torch.Tensor:
    """ELBO per sample with the analytic KL and reconstruction averaged over eps (S, B, Z), decoded in blocks of
    <= budget values (the amortization gap's 100 draws x 500 rows at 32x32x3 are 15 million values at once)."""
    std = torch.exp(0.5 * log_var)
    reconstruction = sum(vae.log_likelihood_k(x, mean + std * block).sum(0) for block in _eps_blocks(eps, x, budget))
    return reconstruction / eps.shape[0] - parts.gaussian_kl(mean, log_var).sum(-1)


def _negative_elbo_gradients(vae, x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor, eps: torch.Tensor,
                             budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """d(-sum_b ELBO_b)/d(mean, log_var) with log_var clamped to [-12, 8], one backward per block of draws
    (gaussian_elbo's blocks), accumulated: the graph of one block is freed before the next is built, so memory
    holds the budget however many draws there are."""
    with torch.enable_grad():
        kl = parts.gaussian_kl(mean, log_var.clamp(-12.0, 8.0)).sum()
        grads = list(torch.autograd.grad(kl, [mean, log_var]))
        for block in _eps_blocks(eps, x, budget):
            # the std is rebuilt per block: each autograd.grad frees the graph it ran through, shared parts included
            z = mean + torch.exp(0.5 * log_var.clamp(-12.0, 8.0)) * block
            loss = -vae.log_likelihood_k(x, z).sum() / eps.shape[0]
            for total, grad in zip(grads, torch.autograd.grad(loss, [mean, log_var])):
                total += grad
    return grads[0], grads[1]


def prior_start(x: torch.Tensor, latent_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """q = N(0, I) for every row of x: where per-datapoint inference starts."""
    zeros = torch.zeros(x.shape[0], latent_dim, device=x.device, dtype=x.dtype)
    return zeros, zeros.clone()


def optimized_posteriors(vae, x: torch.Tensor, steps: int, lr: float, generator: torch.Generator,
                         samples: int = 10, check_every: int = 25,
                         start: tuple[torch.Tensor, torch.Tensor] | None = None,
                         check_eps: torch.Tensor | None = None,
                         budget: int = DEFAULT_BUDGET) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-datapoint Gaussian q_i = N(mean_i, diag(var_i)), started at the encoder's output and optimized by
    Adam on a `samples`-sample ELBO for `steps` steps; the parameters with the best fixed-noise ELBO seen
    (checked every `check_every` steps) are returned, so the result is never worse than the encoder's.
    The step count is fixed rather than "until no improvement" so every rank runs the same number of
    forwards (a collective under sharded strategies). Each ELBO and gradient decodes <= budget values at a
    time."""
    with torch.no_grad():
        mean0, log_var0 = start if start is not None else vae.encode(x)
    mean = mean0.detach().clone().requires_grad_(True)
    log_var = log_var0.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([mean, log_var], lr=lr)
    if check_eps is None:  # the noise the candidates are compared on (the caller's scoring noise, if given)
        check_eps = _noise((samples, *mean.shape), generator, x.device)
    best_mean, best_log_var = mean0.detach().clone(), log_var0.detach().clone()
    with torch.no_grad():
        best = gaussian_elbo(vae, x, best_mean, best_log_var, check_eps, budget)
    for step in range(1, steps + 1):
        eps = _noise((samples, *mean.shape), generator, x.device)
        grads = _negative_elbo_gradients(vae, x, mean, log_var, eps, budget)
        for param, grad in zip((mean, log_var), grads):
            param.grad = grad
        optimizer.step()
        if step % check_every == 0 or step == steps:
            with torch.no_grad():
                current = gaussian_elbo(vae, x, mean, log_var.clamp(-12.0, 8.0), check_eps, budget)
                better = current > best
                best = torch.where(better, current, best)
                best_mean = torch.where(better.unsqueeze(-1), mean.detach(), best_mean)
                best_log_var = torch.where(better.unsqueeze(-1), log_var.detach().clamp(-12.0, 8.0), best_log_var)
    return best_mean, best_log_var


def prior_estimate(vae, x: torch.Tensor, config, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The naive estimate with `vae.prior_samples` samples from the prior, and its ESS (nothing when 0)."""
    if not config.prior_samples:
        return {}
    log_px, ess = importance_sampled_log_likelihood(vae, x, config.prior_samples, generator, proposal="prior",
                                                    budget=config.eval_budget)
    return {"test_nll_prior": -log_px, "test_ess_prior": ess}


def held_out_scores(vae, x: torch.Tensor, config, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-sample scores of held-out x (already binarized as training sees it); see the module docstring."""
    settings = vae.settings
    out: dict[str, torch.Tensor] = {}
    discrete = settings.latent != "gaussian"
    width = settings.encoder_out if discrete else settings.latent_dim
    noise = _noise((1, x.shape[0], width), generator, x.device)
    if settings.inference == "per_datapoint":
        return _per_datapoint_scores(vae, x, config, generator)
    out["test_elbo"] = vae.elbo_estimate(x, noise)
    if discrete and parts.num_configurations(settings.latent, settings.latent_dim, settings.categories) \
            <= parts.MAX_ENUMERATION:
        log_px = exact_log_likelihood(vae, x, config.eval_budget)
        out["test_nll"] = -log_px
    else:
        log_px, ess = importance_sampled_log_likelihood(vae, x, config.eval_samples, generator,
                                                        budget=config.eval_budget)
        out.update(test_nll=-log_px, test_ess=ess)
    out.update(prior_estimate(vae, x, config, generator))
    if not discrete:
        mean, log_var = vae.encode(x)
        out["posterior_mean"] = mean
        if config.gap_steps:
            eps = _noise((ELBO_SAMPLES, *mean.shape), generator, x.device)
            amortized = gaussian_elbo(vae, x, mean, log_var, eps, config.eval_budget)
            best_mean, best_log_var = optimized_posteriors(vae, x, config.gap_steps, config.gap_lr, generator,
                                                           check_eps=eps, budget=config.eval_budget)
            optimized = gaussian_elbo(vae, x, best_mean, best_log_var, eps, config.eval_budget)
            out.update(test_elbo_amortized=amortized, test_elbo_optimized=optimized,
                       amortization_gap=optimized - amortized, approximation_gap=log_px - optimized)
    return out


def _per_datapoint_scores(vae, x: torch.Tensor, config, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """No encoder: each held-out sample's q is optimized from the prior (vae.test_steps Adam steps), then
    scored like an encoder's q (ELBO, importance sampling with q as the proposal)."""
    latent_dim = vae.settings.latent_dim
    mean, log_var = optimized_posteriors(vae, x, config.test_steps, config.gap_lr, generator,
                                         start=prior_start(x, latent_dim), budget=config.eval_budget)
    eps = _noise((ELBO_SAMPLES, *mean.shape), generator, x.device)
    log_px, ess = importance_sampled_log_likelihood(vae, x, config.eval_samples, generator,
                                                    budget=config.eval_budget, posterior=(mean, log_var))
    out = {"test_elbo": gaussian_elbo(vae, x, mean, log_var, eps, config.eval_budget), "test_nll": -log_px, "test_ess": ess,
           "posterior_mean": mean}
    out.update(prior_estimate(vae, x, config, generator))
    return out


def reduce_held_out(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """The scores with several values per sample (evaluation averages the others): `posterior_mean` (N, Z)
    becomes `active_units` and `latent_dim`."""
    means = scores["posterior_mean"].astype(np.float64)  # (N, Z)
    return {"active_units": int((means.var(axis=0) > ACTIVE_UNIT_THRESHOLD).sum()), "latent_dim": int(means.shape[1])}
