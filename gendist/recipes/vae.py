"""VAE (Kingma & Welling 2014) and the lecture's inference toolbox around it.

- Gaussian latents, reparameterized: the ELBO (analytic or Monte Carlo KL, KL warm-up, free bits) or the
  importance-weighted bound with `vae.k` samples (IWAE, Burda et al. 2016), vectorized over k.
- Discrete latents (categorical or Bernoulli): the score-function (REINFORCE) estimator with a control
  variate: none, a moving average of the learning signal, a learned input-dependent baseline (NVIL, Mnih &
  Gregor 2014: its own network and squared-error loss, computed in the same forward as the ELBO), or VIMCO's
  leave-one-out baseline over k samples (Mnih & Rezende 2016); or the exact gradient by enumerating z.
- Held-out scores (gendist.recipes.vae_eval): ELBO, importance-sampled log-likelihood with K samples from q
  (`test_nll`, nats) and the naive estimate with samples from the prior, effective sample sizes, active
  units, and the amortization gap (per-datapoint q optimized at test time, Cremer et al. 2018).
"""
from __future__ import annotations

import math
import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from einops import rearrange, repeat
from torch import nn

from gendist.config import RunConfig
from gendist.data.binarize import binarize_held_out
from gendist.data.info import DataInfo
from gendist.errors import UserError
from gendist.metrics import importance_weighted_bound
from gendist.nets import MLP, hidden_activation
from gendist.nets.conditional import balanced_labels
from gendist.nets.registry import NetworkBuilder
from gendist.recipes import vae_parts as parts
from gendist.recipes.base import Batch, Nets, Phase, num_classes_of


@dataclass(frozen=True)
class VAESettings:
    """What the VAE module needs from the config (vae.* and model.latent_dim)."""

    latent: str = "gaussian"
    latent_dim: int = 8
    categories: int = 10
    decoder: str = "bernoulli"
    levels: int = 256
    decoder_std: float = 0.0
    k: int = 1
    kl: str = "analytic"
    estimator: str = "reinforce"
    baseline: str = "none"
    baseline_decay: float = 0.9
    kl_warmup_steps: int = 0
    free_bits: float = 0.0
    inference: str = "amortized"
    conditional: bool = False  # the encoder and decoder read the labels (model.conditional=true)

    @classmethod
    def from_config(cls, config: RunConfig) -> "VAESettings":
        vae = config.vae
        return cls(vae.latent, config.model.latent_dim, vae.categories, vae.decoder, vae.levels, vae.decoder_std,
                   vae.k, vae.kl, vae.estimator, vae.baseline, vae.baseline_decay, vae.kl_warmup_steps, vae.free_bits,
                   vae.inference)

    @property
    def decoder_in(self) -> int:
        return parts.decoder_inputs(self.latent, self.latent_dim, self.categories)

    @property
    def encoder_out(self) -> int:
        return parts.encoder_outputs(self.latent, self.latent_dim, self.categories)


ENUMERATION_BLOCK = 64  # latent configurations per decoder call when an expectation is enumerated


def logmeanexp(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.logsumexp(values, dim) - math.log(values.shape[dim])


def leave_one_out_bounds(f: torch.Tensor) -> torch.Tensor:
    """VIMCO's baselines: for each s, log mean_j w_j with log w_s replaced by the mean of the other log w_j.
    f (K, B) -> (K, B)."""
    k = f.shape[0]
    others = (f.sum(0, keepdim=True) - f) / (k - 1)  # (K, B): mean of the other samples' log-weights
    grid = repeat(f, "j b -> s j b", s=k).clone()  # row s: the K log-weights with entry s replaced
    index = torch.arange(k, device=f.device)
    grid[index, index] = others
    return logmeanexp(grid, dim=1)


class VAE(nn.Module):
    """Encoder x -> parameters of q(z|x); decoder z -> parameters of p(x|z); an optional learned baseline.

    Conditional (`num_classes` > 0, Sohn et al. 2015): q(z|x, y) and p(x|z, y), the encoder and decoder called
    with the labels. `forward` takes them as an argument; every other method reads the labels of the rows it
    is given from `given(y)`, a context the caller opens around a computation on one batch (its scores, its
    samples), so the many evaluation routines stay label-agnostic."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, settings: VAESettings,
                 baseline: nn.Module | None = None, num_classes: int = 0):
        super().__init__()
        self.encoder, self.decoder, self.settings = encoder, decoder, settings
        self.num_classes, self._labels = num_classes, None
        self.latent_dim, self.likelihood = settings.latent_dim, settings.decoder
        self.baseline = baseline  # learned baseline b(x) of the score-function estimator
        # Gaussian decoder: one shared log-variance, learned (a parameter) or fixed (a buffer).
        # 1-D tensors: FSDP shards no scalars.
        if settings.decoder == "gaussian" and settings.decoder_std > 0:
            self.register_buffer("log_var_x", parts.fixed_log_var(settings.decoder_std))
        elif settings.decoder == "gaussian":
            self.log_var_x = nn.Parameter(torch.zeros(1))
        else:
            self.log_var_x = None
        if settings.baseline == "moving_average":  # the running mean of the learning signal, and its count
            self.register_buffer("signal_average", torch.zeros(2))

    # -- labels of a conditional VAE ------------------------------------------------------------------------
    @contextmanager
    def given(self, y: torch.Tensor | None):
        """Within: the rows this VAE sees have labels y (B,) (a no-op for an unconditional VAE)."""
        if not self.num_classes:
            yield self
            return
        if y is None:
            raise UserError("a class-conditional VAE (model.conditional=true) needs the labels of its data")
        previous, self._labels = self._labels, y
        try:
            yield self
        finally:
            self._labels = previous

    def _condition(self, rows: int) -> tuple[torch.Tensor, ...]:
        """(labels,) for `rows` rows: the given labels, repeated k times for k stacked copies of the batch
        (the "b ... -> (k b) ..." layout of log_likelihood_k); () when unconditional."""
        if not self.num_classes:
            return ()
        labels = self._labels
        if labels is None:
            raise UserError("a class-conditional VAE (model.conditional=true) needs the labels of its data")
        return (labels.repeat(rows // len(labels)) if rows != len(labels) else labels,)

    # -- the pieces -------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Gaussian: (mean, log_var) (B, Z) each; discrete: (logits (B, encoder_out), None)."""
        if self.encoder is None:
            raise UserError("this VAE has no encoder (vae.inference=per_datapoint): a sample's q is optimized, "
                            "not predicted")
        out = self.encoder(x, *self._condition(len(x)))
        if self.settings.latent != "gaussian":
            return out, None
        mean, log_var = out.chunk(2, dim=-1)
        return mean, log_var.clamp(-12.0, 8.0)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over data dimensions, (B,), for z (B, decoder_in)."""
        out = self.decoder(z, *self._condition(len(z)))
        return parts.log_likelihood(self.likelihood, x, out, self.log_var_x, self.settings.levels)

    def log_likelihood_k(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z_k) for z (K, B, decoder_in) -> (K, B), in one decoder call."""
        k = z.shape[0]
        flat_x = repeat(x, "b ... -> (k b) ...", k=k)
        return rearrange(self.log_likelihood(flat_x, rearrange(z, "k b d -> (k b) d")), "(k b) -> k b", k=k)

    def mean_sample(self, z: torch.Tensor) -> torch.Tensor:
        return parts.mean_of(self.likelihood, self.decoder(z, *self._condition(len(z))), self.settings.levels)

    def elbo_estimate(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The ELBO per sample, (B,), touching no state: Gaussian latents with the analytic KL and one
        reconstruction sample per noise row (noise (K, B, Z)); discrete latents exactly when they can be
        enumerated, else averaged over noise (K, B, encoder_out)."""
        s = self.settings
        params, log_var = self.encode(x)
        if s.latent == "gaussian":
            z = params + torch.exp(0.5 * log_var) * noise
            return self.log_likelihood_k(x, z).mean(0) - parts.gaussian_kl(params, log_var).sum(-1)
        if parts.num_configurations(s.latent, s.latent_dim, s.categories) <= parts.MAX_ENUMERATION:
            return self._enumerated(x, params)["elbo"]
        z = parts.sample_discrete(s.latent, params.unsqueeze(0), parts.uniforms_from_normal(noise), s.categories)
        log_q = parts.log_q_discrete(s.latent, params.unsqueeze(0), z, s.categories)
        log_prior = parts.log_prior_discrete(s.latent, s.latent_dim, s.categories)
        return (self.log_likelihood_k(x, z) + log_prior - log_q).mean(0)

    # -- the training objective ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, noise: torch.Tensor, beta: float = 1.0,
                posterior: torch.Tensor | None = None, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-sample terms; `objective` (B,) is what training maximizes (its gradient is the estimator's).
        noise: standard normal (K, B, latent_dim) for Gaussian latents, (K, B, encoder_out) for discrete ones.
        posterior: per-datapoint Gaussian parameters (B, 2 * latent_dim) = (mean, log_var) instead of the
        encoder's (non-amortized inference). y: the labels (B,) of a conditional VAE."""
        with self.given(y):
            return self._terms(x, noise, beta, posterior)

    def _terms(self, x, noise, beta, posterior) -> dict[str, torch.Tensor]:
        if posterior is not None:
            mean, log_var = posterior.chunk(2, dim=-1)
            return self._reparameterized(x, mean, log_var.clamp(-12.0, 8.0), noise, beta)
        params, log_var = self.encode(x)
        if self.settings.latent == "gaussian":
            return self._reparameterized(x, params, log_var, noise, beta)
        if self.settings.estimator == "enumerate":
            return self._enumerated(x, params)
        return self._score_function(x, params, noise)

    def _reparameterized(self, x, mean, log_var, noise, beta) -> dict[str, torch.Tensor]:
        s = self.settings
        z = mean + torch.exp(0.5 * log_var) * noise  # (K, B, Z): the reparameterization trick
        reconstruction = self.log_likelihood_k(x, z)  # (K, B)
        kl_dims = parts.gaussian_kl(mean, log_var)  # (B, Z)
        if s.k > 1:  # IWAE: log mean_k p(x, z_k) / q(z_k|x)
            log_weights = reconstruction + parts.gaussian_log_weight_terms(z, mean, log_var)
            return {"objective": importance_weighted_bound(log_weights), "elbo": log_weights.mean(0),
                    "reconstruction": reconstruction.mean(0), "kl": kl_dims.sum(-1)}
        if s.kl == "monte_carlo":  # log q(z|x) - log p(z) at the sample, per dimension
            z0 = z[0]
            kl_dims = -0.5 * (log_var + (z0 - mean).pow(2) * torch.exp(-log_var)) + 0.5 * z0.pow(2)
        penalty = kl_dims.clamp(min=s.free_bits) if s.free_bits > 0 else kl_dims  # free bits, per sample and dim
        kl = kl_dims.sum(-1)
        return {"objective": reconstruction[0] - beta * penalty.sum(-1), "elbo": reconstruction[0] - kl,
                "reconstruction": reconstruction[0], "kl": kl}

    def reconstruction_all(self, x: torch.Tensor, z_all: torch.Tensor, block: int) -> torch.Tensor:
        """log p(x|z_n) for every configuration z_all (N, Zin) and row of x, (N, B), `block` configurations per
        decoder call (the number of calls depends on N alone, the same on every rank)."""
        pieces = [self.log_likelihood_k(x, repeat(z_all[start:start + block], "n d -> n b d", b=x.shape[0]))
                  for start in range(0, len(z_all), block)]
        return torch.cat(pieces)

    def _enumerated(self, x, logits, block: int = ENUMERATION_BLOCK) -> dict[str, torch.Tensor]:
        """The exact ELBO sum_z q(z|x) [log p(x|z) + log p(z) - log q(z|x)]: its gradient is the exact one."""
        s = self.settings
        z_all = parts.all_configurations(s.latent, s.latent_dim, s.categories, x.device, logits.dtype)  # (N, Zin)
        log_q = parts.log_q_discrete(s.latent, logits.unsqueeze(0), z_all.unsqueeze(1), s.categories)  # (N, B)
        reconstruction = self.reconstruction_all(x, z_all, block)  # (N, B)
        q = log_q.exp()
        log_prior = parts.log_prior_discrete(s.latent, s.latent_dim, s.categories)
        kl = (q * (log_q - log_prior)).sum(0)
        elbo = (q * reconstruction).sum(0) - kl
        return {"objective": elbo, "elbo": elbo, "reconstruction": (q * reconstruction).sum(0), "kl": kl}

    def _score_function(self, x, logits, noise) -> dict[str, torch.Tensor]:
        s = self.settings
        uniforms = parts.uniforms_from_normal(noise)  # (K, B, encoder_out)
        z = parts.sample_discrete(s.latent, logits.detach().unsqueeze(0), uniforms, s.categories)  # (K, B, Zin)
        log_q = parts.log_q_discrete(s.latent, logits.unsqueeze(0), z, s.categories)  # (K, B)
        reconstruction = self.log_likelihood_k(x, z)
        f = reconstruction + parts.log_prior_discrete(s.latent, s.latent_dim, s.categories) - log_q  # (K, B)
        out = {"elbo": f.mean(0), "reconstruction": reconstruction.mean(0),
               "kl": (log_q - parts.log_prior_discrete(s.latent, s.latent_dim, s.categories)).mean(0)}
        if s.baseline == "vimco":  # the IW bound; sample s's signal is the bound minus its leave-one-out bound
            bound = logmeanexp(f)
            signal = (bound.unsqueeze(0) - leave_one_out_bounds(f)).detach()
            out["objective"] = bound + (signal * log_q).sum(0)
            return out
        signal = f.detach()
        baseline = torch.zeros_like(signal)
        if s.baseline == "learned":
            predicted = self.baseline(x.flatten(1)).squeeze(-1).float()  # (B,)
            baseline = predicted.detach().unsqueeze(0)
            out["baseline_loss"] = (signal - predicted.unsqueeze(0)).pow(2).mean(0)
        elif s.baseline == "moving_average":
            baseline = self._moving_average(signal)
        out["objective"] = f.mean(0) + ((signal - baseline) * log_q).mean(0)
        if "baseline_loss" in out:
            out["objective"] = out["objective"] - out["baseline_loss"]  # the baseline's own loss, its own params
        return out

    def _moving_average(self, signal: torch.Tensor) -> torch.Tensor:
        """The running mean of the learning signal before this batch (then updated with this batch's mean;
        a per-rank buffer, broadcast from rank 0 by DDP)."""
        average, count = self.signal_average[0].clone(), self.signal_average[1]
        baseline = torch.where(count > 0, average, signal.mean()).detach()
        with torch.no_grad():
            decay = self.settings.baseline_decay
            mixed = torch.where(count > 0, decay * average + (1 - decay) * signal.mean(), signal.mean())
            self.signal_average.copy_(torch.stack([mixed, count + 1]))
        return baseline


def prior_sample(s: VAESettings, count: int, generator: torch.Generator) -> torch.Tensor:
    """z ~ p(z), (count, decoder_in), on the CPU."""
    if s.latent == "gaussian":
        return torch.randn(count, s.latent_dim, generator=generator)
    logits = torch.zeros(count, s.encoder_out)
    return parts.sample_discrete(s.latent, logits, torch.rand(count, s.encoder_out, generator=generator),
                                 s.categories)


def elbo_loss(nets: Nets, batch: Batch, step: int, *, settings: VAESettings) -> dict[str, torch.Tensor]:
    width = settings.latent_dim if settings.latent == "gaussian" else settings.encoder_out
    samples = settings.k if settings.latent == "gaussian" or settings.estimator != "enumerate" else 1
    noise = rearrange(batch.randn(samples, width), "b k d -> k b d")  # each row's noise is its own
    beta = min(1.0, (step + 1) / settings.kl_warmup_steps) if settings.kl_warmup_steps else 1.0
    posterior = batch.local["posterior"] if settings.inference == "per_datapoint" else None
    terms = nets.vae(batch.x, noise, beta, posterior, *((batch.y,) if settings.conditional else ()))
    logs = {key: terms[key].mean().detach() for key in ("elbo", "reconstruction", "kl", "baseline_loss") if key in terms}
    return {"loss": -terms["objective"].mean(), **logs}


class VAERecipe:
    units = {"vae": ("vae",)}
    input_grid = "reconstructions"  # what `sample(..., inputs)` makes: saved next to the sample grids
    ema_networks = ("vae",)

    def __init__(self, config: RunConfig, data_info: DataInfo):
        self.config = config
        self.info = data_info
        self.settings = VAESettings.from_config(config)
        self.num_classes = num_classes_of(config, data_info)  # 0: unconditional
        if self.num_classes:
            self.settings = dataclasses.replace(self.settings, conditional=True)
        if self.settings.decoder == "categorical" and data_info.kind != "images":
            raise UserError("vae.decoder=categorical models pixel levels of images; use bernoulli or gaussian "
                            f"for {data_info.kind}")

    def local_tables(self) -> dict:
        """Non-amortized inference: (mean, log_var) per training sample, starting at the prior N(0, I)."""
        from gendist.engine.local_tables import TableSpec

        if self.settings.inference != "per_datapoint":
            return {}
        return {"posterior": TableSpec(2 * self.settings.latent_dim, (0.0,) * (2 * self.settings.latent_dim),
                                       self.config.vae.local_lr)}

    def build_networks(self) -> dict[str, nn.Module]:
        shape, s = self.info.sample_shape, self.settings
        out_channels = parts.decoder_channels(s.decoder, shape[0], s.levels)
        build = NetworkBuilder(self.config, self.info.kind == "images")
        encoder = build("encoder", "encoder", shape, (s.encoder_out,), num_classes=self.num_classes)
        decoder = build("decoder", "decoder", (s.decoder_in,), (out_channels, *shape[1:]), num_classes=self.num_classes)
        baseline = None
        if s.baseline == "learned":  # b(x), a small MLP whatever the architecture (a control variate's input)
            baseline = MLP(math.prod(shape), 1, self.config.model.hidden, 1, hidden_activation(self.config.model.activation))
        if s.inference == "per_datapoint":
            encoder = None  # q(z|x_i) is a row of the per-datapoint table, not a network's output
        return {"vae": VAE(encoder, decoder, s, baseline, self.num_classes)}

    def phases(self) -> list[Phase]:
        return [Phase("elbo", "vae", partial(elbo_loss, settings=self.settings))]

    def binarized(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Held-out data as training sees it: binarized once (per evaluation chunk) when data.binarize is on."""
        return binarize_held_out(x, generator) if self.config.data.binarize != "none" else x

    def sample(self, nets: Nets, count: int, generator: torch.Generator, inputs: torch.Tensor | None = None,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """`count` decoder means of z ~ p(z); with `inputs` (data), their reconstructions (the mean of q, or
        its most likely value for discrete latents). A conditional VAE decodes at `labels` (count,) (the
        inputs' labels for reconstructions; by default every class equally often)."""
        device = next(nets.vae.parameters()).device
        if self.num_classes and labels is None and inputs is None:
            labels = balanced_labels(count, self.num_classes)
        with nets.vae.given(None if labels is None else labels.to(device)):
            if inputs is None:
                return nets.vae.mean_sample(prior_sample(self.settings, count, generator).to(device))
            return nets.vae.mean_sample(self._code(nets, inputs.to(device)))

    def _code(self, nets: Nets, x: torch.Tensor) -> torch.Tensor:
        s = self.settings
        if s.inference == "per_datapoint":
            return self._optimized_means(nets, x)
        params, _ = nets.vae.encode(x)
        if s.latent == "gaussian":
            return params
        if s.latent == "bernoulli":
            return (params > 0).to(params.dtype)
        best = rearrange(params, "b (z c) -> b z c", c=s.categories).argmax(-1)
        return rearrange(torch.nn.functional.one_hot(best, s.categories).to(params.dtype), "b z c -> b (z c)")

    def encode(self, nets: Nets, x: torch.Tensor, features: str = "encoder",
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of q(z|x) (Gaussian latents) or q's probabilities (discrete latents); a conditional VAE's
        q(z|x, y) at `labels` (B,)."""
        if features != "encoder":
            raise UserError("--features discriminator: a VAE has no discriminator; use --features encoder")
        device = next(nets.vae.parameters()).device
        x = x.to(device)
        with nets.vae.given(None if labels is None else labels.to(device)):
            if self.settings.inference == "per_datapoint":
                return self._optimized_means(nets, x)
            params, _ = nets.vae.encode(x)
        if self.settings.latent == "gaussian":
            return params
        if self.settings.latent == "bernoulli":
            return torch.sigmoid(params)
        return rearrange(torch.softmax(rearrange(params, "b (z c) -> b z c", c=self.settings.categories), -1),
                         "b z c -> b (z c)")

    def _optimized_means(self, nets: Nets, x: torch.Tensor) -> torch.Tensor:
        """Per-datapoint inference has no encoder: a held-out sample's q is optimized from the prior."""
        from gendist.recipes.vae_eval import optimized_posteriors, prior_start

        generator = torch.Generator().manual_seed(self.config.train.seed)
        mean, _ = optimized_posteriors(nets.vae, x, self.config.vae.test_steps, self.config.vae.gap_lr, generator,
                                       start=prior_start(x, self.settings.latent_dim),
                                       budget=self.config.vae.eval_budget)
        return mean

    def traversal(self, nets: Nets, steps: int = 9) -> torch.Tensor | None:
        """Latent traversals: row j varies z_j over [-3, 3] with the other coordinates at 0 (Gaussian latents;
        at most 10 rows). (rows * steps, ...) decoder means."""
        s = self.settings
        if s.latent != "gaussian":
            return None
        rows = min(s.latent_dim, 10)
        z = torch.zeros(rows, steps, s.latent_dim)
        values = torch.linspace(-3, 3, steps)
        for row in range(rows):
            z[row, :, row] = values
        device = next(nets.vae.parameters()).device
        labels = torch.zeros(rows * steps, dtype=torch.long, device=device) if self.num_classes else None
        with nets.vae.given(labels):  # a conditional VAE's traversals are of class 0
            return nets.vae.mean_sample(rearrange(z, "r s d -> (r s) d").to(device))

    @torch.no_grad()
    def scores(self, nets: Nets, x: torch.Tensor, generator: torch.Generator,
               y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-sample held-out scores (gendist.recipes.vae_eval); a conditional VAE's are of log p(x|y)."""
        from gendist.recipes.vae_eval import held_out_scores

        device = next(nets.vae.parameters()).device
        with nets.vae.given(None if y is None else y.to(device)):
            return held_out_scores(nets.vae, self.binarized(x, generator).to(device), self.config.vae, generator)

    def reduce_scores(self, scores: dict[str, np.ndarray]) -> dict[str, float]:
        """The active units (Burda et al.: Var_x E_q[z_j|x] > 0.01) from the posterior means."""
        from gendist.recipes.vae_eval import reduce_held_out

        return reduce_held_out(scores)
