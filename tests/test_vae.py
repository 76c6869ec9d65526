"""The VAE's own estimators on a linear-Gaussian model, where log p(x) and the posterior are known exactly:
the importance-weighted log-likelihood the recipe reports converges to log p(x), and stays strictly above the
ELBO whenever q(z|x) is not the posterior."""
import math

import pytest
import torch
from torch import nn

from gendist.metrics import log_normal_diag
from gendist.recipes.vae import VAE, VAESettings
from gendist.recipes.vae_eval import importance_sampled_log_likelihood

LATENT, DIM, NOISE_VAR = 2, 3, 0.3


def linear_gaussian_vae(encoder_bias: float) -> VAE:
    """p(z) = N(0, I), p(x|z) = N(Wz + b, NOISE_VAR I); q(z|x) linear in x, offset by `encoder_bias`."""
    torch.manual_seed(0)
    decoder = nn.Linear(LATENT, DIM).double()
    vae = VAE(nn.Linear(DIM, 2 * LATENT).double(), decoder, VAESettings(latent_dim=LATENT, decoder="gaussian")).double()
    with torch.no_grad():
        vae.log_var_x.fill_(math.log(NOISE_VAR))
        # q(z|x) = the exact posterior N(A (x - b), S) shifted by encoder_bias
        weight, bias = decoder.weight, decoder.bias  # (DIM, LATENT), (DIM,)
        precision = torch.eye(LATENT, dtype=torch.float64) + weight.T @ weight / NOISE_VAR
        covariance = torch.linalg.inv(precision)
        gain = covariance @ weight.T / NOISE_VAR  # (LATENT, DIM)
        vae.encoder.weight.zero_()
        vae.encoder.weight[:LATENT] = gain
        vae.encoder.bias[:LATENT] = -gain @ bias + encoder_bias
        vae.encoder.bias[LATENT:] = torch.log(torch.diagonal(covariance))  # diagonal q: exact only if S is
    return vae


def exact_log_likelihood(vae: VAE, x: torch.Tensor) -> torch.Tensor:
    weight, bias = vae.decoder.weight, vae.decoder.bias
    covariance = weight @ weight.T + NOISE_VAR * torch.eye(DIM, dtype=torch.float64)
    return torch.distributions.MultivariateNormal(bias, covariance).log_prob(x)


def data(vae: VAE, count: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(count, LATENT, generator=generator, dtype=torch.float64)
    noise = torch.randn(count, DIM, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        return vae.decoder(z) + math.sqrt(NOISE_VAR) * noise


def mean_elbo(vae: VAE, x: torch.Tensor, draws: int) -> float:
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        values = [vae(x, torch.randn(1, len(x), LATENT, generator=generator, dtype=torch.float64))["elbo"]
                  for _ in range(draws)]
    return torch.stack(values).mean().item()


def test_importance_weighted_estimate_converges_to_log_p_and_beats_the_elbo():
    vae = linear_gaussian_vae(encoder_bias=0.7)
    x = data(vae, 200)
    exact = exact_log_likelihood(vae, x).mean().item()
    elbo = mean_elbo(vae, x, draws=200)
    estimates = {k: importance_sampled_log_likelihood(vae, x, k, torch.Generator().manual_seed(3))[0].mean().item()
                 for k in (1, 16, 2000)}
    assert estimates[1] == pytest.approx(elbo, abs=0.05)  # one importance sample is the ELBO
    assert exact - elbo > 0.3  # the shifted q leaves a real gap ...
    assert estimates[1] < estimates[16] < estimates[2000] <= exact + 0.02  # ... the estimate closes with K
    assert estimates[2000] == pytest.approx(exact, abs=0.03)
    assert estimates[16] > elbo + 0.2


def test_elbo_terms_match_closed_forms():
    """ELBO = E_q log p(x|z) - KL(q || p): the KL term is the Gaussian closed form, and the mean ELBO plus the
    KL from q to the posterior equals log p(x)."""
    vae = linear_gaussian_vae(encoder_bias=0.0)
    x = data(vae, 100)
    mean, log_var = vae.encode(x)
    terms = vae(x, torch.zeros(1, len(x), LATENT, dtype=torch.float64))
    expected_kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, torch.exp(0.5 * log_var)), torch.distributions.Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(terms["kl"], expected_kl)
    torch.testing.assert_close(terms["elbo"], terms["reconstruction"] - terms["kl"])
    # log p(x|z) at z = mean is the decoder's Gaussian density
    expected_reconstruction = log_normal_diag(x, vae.decoder(mean), torch.full_like(x, math.log(NOISE_VAR)))
    torch.testing.assert_close(terms["reconstruction"], expected_reconstruction)
