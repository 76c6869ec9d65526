"""Metrics: real computations on distributions whose answer is known in closed form or by construction."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gendist.metrics import (classifier_two_sample_test, effective_sample_size, frechet_distance,
                             importance_weighted_bound, kernel_inception_distance, log_bernoulli_logits,
                             log_normal_diag, log_standard_normal, mmd2, mmd_permutation_test, mode_coverage,
                             precision_recall)

RING_MODES = 8
RING_STD = 0.01


def ring_modes(count: int = RING_MODES, radius: float = 2.0) -> np.ndarray:
    angles = 2 * np.pi * np.arange(count) / count
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def sample_mixture(modes: np.ndarray, std: float, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return modes[rng.integers(len(modes), size=count)] + std * rng.normal(size=(count, modes.shape[1]))


# ------------------------------------------------------------------------------------------ mode coverage


def test_mode_coverage_of_exact_ring_samples():
    modes = ring_modes()
    result = mode_coverage(torch.as_tensor(sample_mixture(modes, RING_STD, 2500, seed=0)), modes, RING_STD)
    assert result["modes_covered"] == RING_MODES and result["num_modes"] == RING_MODES
    # In 2-D, P(|eps| <= 3 std) = 1 - exp(-9/2) = 0.989 for exact samples: the ceiling of hq_fraction.
    assert result["hq_fraction"] == pytest.approx(1 - math.exp(-4.5), abs=0.006)
    assert sum(result["per_mode_counts"]) == round(result["hq_fraction"] * 2500)
    assert 0 <= result["kl_mode_histogram"] < 0.01  # multinomial noise of 2,500 samples only


def test_mode_coverage_counts_only_visited_modes():
    modes = ring_modes()
    result = mode_coverage(sample_mixture(modes[[0, 3, 5]], RING_STD, 2500, seed=1), modes, RING_STD)
    assert result["modes_covered"] == 3
    assert [count > 0 for count in result["per_mode_counts"]] == [i in (0, 3, 5) for i in range(RING_MODES)]
    assert result["kl_mode_histogram"] == pytest.approx(math.log(8 / 3), abs=0.01)


def test_mode_coverage_of_far_away_noise_is_zero():
    rng = np.random.default_rng(2)
    result = mode_coverage(rng.uniform(10.0, 20.0, size=(2500, 2)), ring_modes(), RING_STD)
    assert result["modes_covered"] == 0 and result["hq_fraction"] == 0.0
    assert math.isnan(result["kl_mode_histogram"])  # no high-quality sample: no histogram to compare


def test_mode_histogram_kl_is_zero_when_balanced_and_log_m_when_collapsed():
    modes = ring_modes()
    balanced = mode_coverage(np.tile(modes, (300, 1)), modes, RING_STD)
    collapsed = mode_coverage(np.repeat(modes[:1], 2500, axis=0), modes, RING_STD)
    assert balanced["kl_mode_histogram"] == pytest.approx(0.0, abs=1e-8)
    assert collapsed["kl_mode_histogram"] == pytest.approx(math.log(RING_MODES), abs=1e-6)


# ---------------------------------------------------------------------------------------------------- MMD


def test_mmd_is_near_zero_for_one_distribution_and_large_for_shifted():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(400, 2)), rng.normal(size=(400, 2))
    same, shifted = mmd_permutation_test(x, y, seed=0), mmd_permutation_test(x, y + 1.0, seed=0)
    assert abs(same["mmd2"]) < 0.01 and same["p_value"] > 0.01
    assert shifted["mmd2"] > 0.1 and shifted["p_value"] < 0.01
    assert same["mmd2"] == pytest.approx(mmd2(torch.as_tensor(x), torch.as_tensor(y)))
    assert mmd2(x, y, unbiased=False) >= 0  # the V-statistic is a squared norm


def test_mmd_accepts_images_and_fixed_bandwidth():
    rng = np.random.default_rng(4)
    images_x, images_y = rng.normal(size=(100, 1, 4, 4)), rng.normal(size=(100, 1, 4, 4))
    assert mmd2(images_x, images_y, bandwidth=4.0) == pytest.approx(
        mmd2(images_x.reshape(100, 16), images_y.reshape(100, 16), bandwidth=4.0))
    with pytest.raises(ValueError, match="different feature sizes"):
        mmd2(images_x, images_y[:, :, :2])


# ---------------------------------------------------------------------------------------------------- KID


def test_kid_is_near_zero_for_one_distribution_and_positive_for_different():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16))
    same = kernel_inception_distance(x, y, seed=0)
    different = kernel_inception_distance(x, 1.5 * y + 0.5, seed=0)
    assert abs(same["kid"]) < 0.01 and same["kid_std"] > 0
    assert different["kid"] > 0.5 and different["kid"] > 20 * different["kid_std"]
    assert kernel_inception_distance(x, y, seed=0) == same  # deterministic given the seed


def test_kid_clips_subset_size_to_the_smaller_sample():
    rng = np.random.default_rng(6)
    result = kernel_inception_distance(rng.normal(size=(50, 4)), rng.normal(size=(80, 4)), subset_size=1000)
    assert math.isfinite(result["kid"]) and math.isfinite(result["kid_std"])


# ------------------------------------------------------------------------------------------------ Fréchet


def closed_form_frechet(mean_1, cov_1, mean_2, cov_2) -> float:
    """|m1 - m2|^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), via symmetric eigendecompositions."""
    def symmetric_sqrt(matrix):
        values, vectors = np.linalg.eigh(matrix)
        return vectors @ np.diag(np.sqrt(np.clip(values, 0, None))) @ vectors.T

    root_1 = symmetric_sqrt(cov_1)
    cross = symmetric_sqrt(root_1 @ cov_2 @ root_1)
    return float(np.sum((mean_1 - mean_2) ** 2) + np.trace(cov_1 + cov_2 - 2 * cross))


@pytest.mark.parametrize("dim", [2, 5])
def test_frechet_distance_matches_closed_form_for_gaussians(dim):
    rng = np.random.default_rng(dim)
    mean_1, mean_2 = rng.normal(size=dim), rng.normal(size=dim)
    factor_1, factor_2 = rng.normal(size=(dim, dim)), rng.normal(size=(dim, dim))
    cov_1, cov_2 = factor_1 @ factor_1.T + 0.1 * np.eye(dim), factor_2 @ factor_2.T + 0.1 * np.eye(dim)
    x = rng.multivariate_normal(mean_1, cov_1, size=200_000)
    y = rng.multivariate_normal(mean_2, cov_2, size=200_000)
    expected = closed_form_frechet(mean_1, cov_1, mean_2, cov_2)
    assert expected > 1.0
    assert frechet_distance(x, y) == pytest.approx(expected, rel=0.02)


def test_frechet_distance_of_identical_or_degenerate_samples_is_zero():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(1000, 3))
    assert frechet_distance(x, torch.as_tensor(x)) == pytest.approx(0.0, abs=1e-6)
    on_a_plane = np.c_[x[:, :2], x[:, :2].sum(axis=1)]  # singular covariance: exercises the jitter path
    assert frechet_distance(on_a_plane, on_a_plane) == pytest.approx(0.0, abs=1e-4)
    assert frechet_distance(np.zeros((10, 2)), np.zeros((10, 2))) == pytest.approx(0.0, abs=1e-9)


# ----------------------------------------------------------------------------------------- classifier test


def test_classifier_two_sample_test_is_at_chance_for_one_distribution():
    rng = np.random.default_rng(8)
    result = classifier_two_sample_test(rng.normal(size=(1000, 5)), rng.normal(size=(1200, 5)), seed=0)
    assert 0.4 <= result["accuracy"] <= 0.6 and result["p_value"] > 0.01


def test_classifier_two_sample_test_detects_different_distributions():
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(1000, 5)), rng.normal(size=(1000, 5)) + 1.0
    result = classifier_two_sample_test(x, y, seed=0)
    assert result["accuracy"] > 0.8 and result["p_value"] < 1e-6
    assert classifier_two_sample_test(x, y, seed=0) == result


# -------------------------------------------------------------------------------------- precision/recall


def test_precision_recall_of_a_real_subset_is_near_one():
    real = sample_mixture(ring_modes(), 0.05, 2000, seed=10)
    result = precision_recall(real, real[:1000])
    assert result["precision"] == 1.0  # every fake point is a real point, at distance 0
    assert result["recall"] > 0.95


def test_precision_recall_of_half_the_modes_has_low_recall_and_high_precision():
    modes = ring_modes()
    real = sample_mixture(modes, 0.05, 2000, seed=11)
    fake = sample_mixture(modes[:4], 0.05, 2000, seed=12)
    result = precision_recall(real, fake)
    assert result["precision"] > 0.95
    assert 0.35 < result["recall"] < 0.6


# -------------------------------------------------------------------------------------------- likelihood


def test_log_densities_match_torch_distributions():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, 3, 3, generator=generator, dtype=torch.float64)
    mean, log_var = torch.randn_like(x), torch.randn_like(x)
    expected = torch.distributions.Normal(mean, torch.exp(0.5 * log_var)).log_prob(x).sum(dim=(1, 2, 3))
    torch.testing.assert_close(log_normal_diag(x, mean, log_var), expected)
    shared = torch.tensor(0.3, dtype=torch.float64)  # one log-variance for all pixels, as the VAE decoder uses
    torch.testing.assert_close(log_normal_diag(x, mean, shared), log_normal_diag(x, mean, shared.expand_as(x)))
    torch.testing.assert_close(log_standard_normal(x), log_normal_diag(x, torch.zeros_like(x), torch.zeros_like(x)))
    pixels = torch.rand(6, 1, 4, 4, generator=generator, dtype=torch.float64).round()
    logits = 5 * torch.randn_like(pixels)
    expected_bernoulli = torch.distributions.Bernoulli(logits=logits).log_prob(pixels).sum(dim=(1, 2, 3))
    torch.testing.assert_close(log_bernoulli_logits(pixels, logits), expected_bernoulli)


def test_importance_weighted_bound_with_one_sample_is_the_log_weight():
    log_weights = torch.randn(1, 7, dtype=torch.float64)
    torch.testing.assert_close(importance_weighted_bound(log_weights), log_weights[0])
    assert effective_sample_size(torch.zeros(10, 3)).tolist() == pytest.approx([10.0] * 3)
    dominated = torch.tensor([[0.0], [-50.0], [-50.0]])
    assert effective_sample_size(dominated).item() == pytest.approx(1.0, abs=1e-6)


NOISE_VAR = 0.5  # toy model: z ~ N(0, 1), x | z ~ N(z, NOISE_VAR), so x ~ N(0, 1 + NOISE_VAR)


def toy_log_weights(x: torch.Tensor, num_samples: int, mean_offset: float, std_scale: float,
                    generator: torch.Generator) -> torch.Tensor:
    """log p(x, z_k) - log q(z_k | x), (K, B), with q = the exact posterior shifted and widened."""
    posterior_mean, posterior_var = x / (1 + NOISE_VAR), NOISE_VAR / (1 + NOISE_VAR)
    q_mean = posterior_mean + mean_offset  # (B,)
    q_log_var = torch.full_like(q_mean, math.log(posterior_var * std_scale ** 2))
    z = q_mean + torch.exp(0.5 * q_log_var) * torch.randn(num_samples, len(x), generator=generator, dtype=x.dtype)

    def per_draw(tensor: torch.Tensor) -> torch.Tensor:  # (B,) or (K, B) -> (K*B, 1): one row per draw
        return tensor.expand(num_samples, len(x)).reshape(-1, 1)

    log_noise_var = torch.full_like(x, math.log(NOISE_VAR))
    joint = log_normal_diag(per_draw(x), per_draw(z), per_draw(log_noise_var)) + log_standard_normal(per_draw(z))
    proposal = log_normal_diag(per_draw(z), per_draw(q_mean), per_draw(q_log_var))
    return (joint - proposal).view(num_samples, len(x))


def exact_toy_log_likelihood(x: torch.Tensor) -> torch.Tensor:
    return log_normal_diag(x.unsqueeze(-1), torch.zeros(1, 1, dtype=x.dtype),
                           torch.full((1, 1), math.log(1 + NOISE_VAR), dtype=x.dtype))


def test_importance_weighted_bound_tightens_with_k_towards_the_exact_likelihood():
    generator = torch.Generator().manual_seed(0)
    x = math.sqrt(1 + NOISE_VAR) * torch.randn(300, generator=generator, dtype=torch.float64)
    exact = exact_toy_log_likelihood(x).mean().item()
    bounds = {k: importance_weighted_bound(toy_log_weights(x, k, 0.5, 1.5, generator)).mean().item()
              for k in (1, 10, 1000)}
    assert bounds[1] < bounds[10] < bounds[1000] <= exact + 0.01
    assert exact - bounds[1] > 0.1  # the mis-specified q leaves a real ELBO gap ...
    assert bounds[1000] == pytest.approx(exact, abs=0.01)  # ... that 1,000 samples close


def test_importance_weighted_bound_is_exact_with_the_true_posterior():
    generator = torch.Generator().manual_seed(1)
    x = math.sqrt(1 + NOISE_VAR) * torch.randn(50, generator=generator, dtype=torch.float64)
    log_weights = toy_log_weights(x, 1, 0.0, 1.0, generator)
    torch.testing.assert_close(importance_weighted_bound(log_weights), exact_toy_log_likelihood(x))
    assert effective_sample_size(toy_log_weights(x, 20, 0.0, 1.0, generator)).tolist() == pytest.approx([20.0] * 50)


def test_frechet_distance_of_wide_features_equals_the_matrix_square_root_form():
    """D = 300 > n: the exact SVD form agrees with sqrtm of the D x D covariances (and stays fast at D =
    3,072, where the matrix square root takes over a minute)."""
    from gendist.metrics.two_sample import _covariance_term, _covariance_term_from_samples

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(100, 300)), 1.3 * rng.normal(size=(107, 300)) + 0.1
    direct = _covariance_term(np.cov(x, rowvar=False), np.cov(y, rowvar=False))
    assert _covariance_term_from_samples(x, y) == pytest.approx(direct, rel=1e-6)
    mean_term = float(np.sum((x.mean(0) - y.mean(0)) ** 2))
    assert frechet_distance(x, y) == pytest.approx(mean_term + direct, rel=1e-6)


def test_permuted_mmd2_equals_the_statistic_of_each_labelling_from_its_kernel_blocks():
    """The permutation test's algebra (one product K @ A for a block of labellings) against the unbiased MMD²
    of the three kernel sub-blocks of each labelling. Catches a wrong block sum or diagonal correction (each
    moves the statistic by >= 1e-3 here: the diagonal term alone is 1 / (n - 1) ~ 3e-3); round-off: <= 1e-14."""
    from gendist.metrics.two_sample import kernel_matrix, mmd2_from_kernels, permuted_mmd2

    rng = np.random.default_rng(1)
    n, m = 300, 170
    pooled = np.concatenate([rng.normal(size=(n, 4)), rng.normal(size=(m, 4)) + 0.3])
    k = kernel_matrix(pooled, pooled, "rbf", 2.0)
    orders = [np.arange(n + m)] + [rng.permutation(n + m) for _ in range(70)]  # more than one block of 64
    expected = [mmd2_from_kernels(k[np.ix_(o[:n], o[:n])], k[np.ix_(o[n:], o[n:])], k[np.ix_(o[:n], o[n:])])
                for o in orders]
    np.testing.assert_allclose(permuted_mmd2(k, n, orders), expected, rtol=0, atol=1e-10)
