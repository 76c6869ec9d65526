"""Sanity of the two-sample statistics on real data (the bundled digits), as a user would check them before
trusting a number: equal distributions pass, shifted or noised ones are rejected, the Fréchet distance
orders corruptions. Seeds are fixed, so each check is deterministic."""
import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from sklearn.datasets import load_digits

from gendist.metrics import (classifier_two_sample_test, frechet_distance, kernel_inception_distance,
                             mmd_permutation_test, precision_recall)


@pytest.fixture(scope="module")
def digits():
    return (load_digits().images / 16.0).reshape(-1, 64).astype(np.float32)  # (1797, 64)


def halves(data, seed, size):
    order = np.random.default_rng(seed).permutation(len(data))
    return data[order[:size]], data[order[size:2 * size]]


def test_same_distribution_passes_the_mmd_test_in_at_least_90_percent_of_50_trials(digits):
    p_values = [mmd_permutation_test(*halves(digits, trial, 250), num_permutations=100, seed=trial)["p_value"]
                for trial in range(50)]
    passed = sum(p > 0.05 for p in p_values)
    assert passed >= 45, (passed, sorted(p_values)[:8])


def test_same_distribution_classifier_test_is_inside_its_null_band(digits):
    for trial in range(5):
        a, b = halves(digits, trial, 400)
        result = classifier_two_sample_test(a, b, seed=trial)
        held_out = 400  # half of the 2 x 400 pooled samples
        band = 2 * math.sqrt(0.25 / held_out)  # two binomial standard deviations around chance
        assert abs(result["accuracy"] - 0.5) <= band, result


def test_same_distribution_kid_is_within_two_std_of_zero_and_precision_recall_high(digits):
    a, b = halves(digits, 0, 850)
    kid = kernel_inception_distance(a, b, num_subsets=20, subset_size=400, seed=0)
    assert abs(kid["kid"]) <= 2 * kid["kid_std"], kid
    pr = precision_recall(a, b)
    assert pr["precision"] > 0.9 and pr["recall"] > 0.9, pr


@pytest.mark.parametrize("corruption", ["shift", "noise"])
def test_shifted_or_noised_samples_are_rejected(digits, corruption):
    a, b = halves(digits, 1, 400)
    rng = np.random.default_rng(0)
    b = b + 0.1 if corruption == "shift" else b + 0.15 * rng.standard_normal(b.shape).astype(np.float32)
    assert mmd_permutation_test(a, b, num_permutations=200, seed=0)["p_value"] < 0.01
    if corruption == "shift":
        # the k-NN classifier test is blind to isotropic noise in 64 dimensions (noised points are nearer
        # to clean ones than to each other, so they are voted clean): MMD catches it, it does not
        assert classifier_two_sample_test(a, b, seed=0)["p_value"] < 0.01
        # KID's cubic kernel sees zero-mean noise only through a sigma^4 term: too small at 400 samples
        kid = kernel_inception_distance(a, b, num_subsets=20, subset_size=300, seed=0)
        assert kid["kid"] > 2 * kid["kid_std"], kid


def test_frechet_distance_rises_monotonically_with_noise_and_with_blur(digits):
    a, b = halves(digits, 2, 850)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(b.shape).astype(np.float32)
    noised = [frechet_distance(a, b + level * noise) for level in (0.0, 0.05, 0.1, 0.2, 0.4)]
    images = b.reshape(-1, 8, 8)
    blurred = [frechet_distance(a, gaussian_filter(images, sigma=(0, s, s)).reshape(len(b), -1) if s else b)
               for s in (0.0, 0.4, 0.7, 1.0, 1.5)]
    assert all(x < y for x, y in zip(noised, noised[1:])), noised
    assert all(x < y for x, y in zip(blurred, blurred[1:])), blurred
