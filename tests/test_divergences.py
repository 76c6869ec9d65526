"""Numerical checks of the f-GAN divergence table (Nowozin, Cseke & Tomioka 2016, Tables 1 and 2).

Expectations are computed exactly (discrete distributions) or by scipy quadrature (Gaussians), never by
sampling, except for the loose loss-helper checks, which use many samples with a fixed seed.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, special, stats

from gendist.divergences import (
    DIVERGENCES,
    Divergence,
    alpha_divergence,
    critic_objective,
    generator_objective,
    generator_objective_nonsaturating,
    get_divergence,
    jensen_shannon_weighted,
)
from gendist.errors import UserError

ALPHAS = (0.5, 1.5, 2.0, -1.0)
PIS = (0.2, 0.5, 0.8)  # weights of the Jensen-Shannon-weighted row
PARAMETERIZED = {"alpha": ("alpha", ALPHAS), "jensen_shannon_weighted": ("pi", PIS)}
# (name, keyword arguments of get_divergence): every plain row once, each parametrized row for each value.
CASES = [(name, {}) for name in DIVERGENCES if name not in PARAMETERIZED] + [
    (name, {keyword: value}) for name, (keyword, values) in PARAMETERIZED.items() for value in values
]
CASE_IDS = [name if not kwargs else name + "-" + ",".join(f"{k}={v}" for k, v in kwargs.items())
            for name, kwargs in CASES]

# Two discrete distributions on four points: every divergence is finite and TV / chi^2 are exact sums.
DISCRETE_P = np.array([0.1, 0.4, 0.2, 0.3])
DISCRETE_Q = np.array([0.3, 0.2, 0.25, 0.25])
# Gaussian pair (mean, standard deviation); P has the lighter tails, so chi^2-type divergences are finite.
GAUSSIAN_P = (0.0, 1.0)
GAUSSIAN_Q = (1.0, 1.5)
INTEGRATION_LIMIT = 25.0


@pytest.fixture(params=CASES, ids=CASE_IDS)
def divergence(request: pytest.FixtureRequest) -> Divergence:
    name, kwargs = request.param
    return get_divergence(name, **kwargs)


def evaluate(function: Callable[[torch.Tensor], torch.Tensor], values: float | np.ndarray) -> np.ndarray:
    """Apply a torch elementwise function to float64 numpy input and return numpy."""
    return function(torch.as_tensor(values, dtype=torch.float64)).numpy()


def search_interval(divergence: Divergence, cap: float = 40.0) -> tuple[float, float]:
    """dom f* clipped to [-cap, cap] and shrunk slightly so open boundaries are not evaluated."""
    lower, upper = divergence.conjugate_domain
    return max(lower + 1e-9, -cap), min(upper - 1e-9, cap)


def variational_bound_discrete(divergence: Divergence, critic: np.ndarray) -> float:
    """E_P[T] - E_Q[f*(T)] for the discrete pair, exactly."""
    return float(DISCRETE_P @ critic - DISCRETE_Q @ evaluate(divergence.conjugate, critic))


def divergence_discrete(divergence: Divergence) -> float:
    """D_f(P||Q) = sum_x q f(p/q) for the discrete pair."""
    return float(DISCRETE_Q @ evaluate(divergence.generator_f, DISCRETE_P / DISCRETE_Q))


def inverse_activation(divergence: Divergence, target: torch.Tensor, iterations: int = 70) -> torch.Tensor:
    """Pre-activation v with g_f(v) = target by bisection on [-1e4, 1e4] (every g_f is increasing; the
    identity activations need the width, T* = f'(p/q) reaches -1e3 in Gaussian tails). Boundary targets
    (TV's +-1/2) end at the interval ends, where g_f already equals them in float64."""
    low = torch.full_like(target, -1e4)
    high = torch.full_like(target, 1e4)
    for _ in range(iterations):
        middle = 0.5 * (low + high)
        too_small = divergence.activation(middle) < target
        low = torch.where(too_small, middle, low)
        high = torch.where(too_small, high, middle)
    return 0.5 * (low + high)


def expected_f_at_one(divergence: Divergence) -> float:
    """f(1) = 0 for a proper divergence; the paper's GAN row has f(1) = -log 4 (D_GAN = 2 JS - log 4)."""
    return -math.log(4.0) if divergence.name == "gan" else 0.0


def test_generator_vanishes_at_one(divergence: Divergence) -> None:
    assert evaluate(divergence.generator_f, 1.0) == pytest.approx(expected_f_at_one(divergence), abs=1e-12)


def test_generator_is_convex(divergence: Divergence) -> None:
    step = 1e-3
    grid = np.linspace(0.05 + step, 20.0 - step, 2000)
    values_minus, values, values_plus = (evaluate(divergence.generator_f, grid + s) for s in (-step, 0, step))
    second_difference = values_plus - 2.0 * values + values_minus
    assert second_difference.min() >= -1e-6


def test_optimal_critic_is_derivative_of_generator(divergence: Divergence) -> None:
    """T* = f'(u): compare with a central finite difference away from TV's kink at u = 1."""
    step = 1e-6
    grid = np.array([0.1, 0.3, 0.7, 1.3, 2.0, 5.0, 12.0])
    slope = (evaluate(divergence.generator_f, grid + step) - evaluate(divergence.generator_f, grid - step)) / (
        2.0 * step
    )
    np.testing.assert_allclose(evaluate(divergence.optimal_critic, grid), slope, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("u", [0.2, 0.5, 1.0, 2.0, 5.0])
def test_biconjugate_recovers_generator(divergence: Divergence, u: float) -> None:
    """f**(u) = sup_{t in dom f*} (t u - f*(t)) equals f(u) (f is convex and closed)."""
    result = optimize.minimize_scalar(
        lambda t: -(t * u - float(evaluate(divergence.conjugate, t))),
        bounds=search_interval(divergence),
        method="bounded",
        options={"xatol": 1e-10},
    )
    assert -result.fun == pytest.approx(float(evaluate(divergence.generator_f, u)), abs=1e-4)


@pytest.mark.parametrize("score", [-1.0, 0.0, 1.5])
def test_conjugate_is_supremum(divergence: Divergence, score: float) -> None:
    """f*(t) = sup_{u > 0} (t u - f(u)) at t = g_f(score), a point inside dom f*."""
    t = float(evaluate(divergence.activation, score))
    result = optimize.minimize_scalar(
        lambda u: -(t * u - float(evaluate(divergence.generator_f, u))),
        bounds=(1e-12, 200.0),
        method="bounded",
        options={"xatol": 1e-10},
    )
    assert -result.fun == pytest.approx(float(evaluate(divergence.conjugate, t)), abs=1e-4)


def test_jeffrey_conjugate_matches_scipy_lambert_w() -> None:
    t = np.linspace(-30.0, 30.0, 121)
    w = special.lambertw(np.exp(1.0 - t)).real
    expected = w + 1.0 / w + t - 2.0
    np.testing.assert_allclose(evaluate(DIVERGENCES["jeffrey"].conjugate, t), expected, rtol=1e-10)


def test_activation_lands_in_domain(divergence: Divergence) -> None:
    """g_f(v) lies in dom f*: strictly inside for moderate v, and never outside even where float64
    saturates (1/2 tanh(20) rounds to exactly 1/2, TV's closed-domain boundary)."""
    lower, upper = divergence.conjugate_domain
    wide = evaluate(divergence.activation, np.linspace(-20.0, 20.0, 401))
    assert np.all(np.isfinite(wide)) and np.all((wide >= lower) & (wide <= upper))
    moderate = evaluate(divergence.activation, np.linspace(-5.0, 5.0, 101))
    assert np.all((moderate > lower) & (moderate < upper))
    assert np.all(np.diff(wide) >= 0.0), "activation must be non-decreasing"
    assert np.all(np.isfinite(evaluate(divergence.conjugate, moderate)))


def test_bound_is_tight_at_optimal_critic_discrete(divergence: Divergence) -> None:
    optimal = evaluate(divergence.optimal_critic, DISCRETE_P / DISCRETE_Q)
    exact = divergence_discrete(divergence)
    assert variational_bound_discrete(divergence, optimal) == pytest.approx(exact, rel=1e-2, abs=1e-9)


def test_discrete_closed_forms() -> None:
    """Independent closed forms pin the f's down: TV, KL, chi^2, Hellinger, and GAN = JS - log 4."""
    p, q = DISCRETE_P, DISCRETE_Q
    expected = {
        "total_variation": 0.5 * np.abs(p - q).sum(),
        "kl": (p * np.log(p / q)).sum(),
        "reverse_kl": (q * np.log(q / p)).sum(),
        "pearson": ((p - q) ** 2 / q).sum(),
        "neyman": ((p - q) ** 2 / p).sum(),
        "squared_hellinger": ((np.sqrt(p) - np.sqrt(q)) ** 2).sum(),
        "jeffrey": ((p - q) * np.log(p / q)).sum(),
        "jensen_shannon": 2.0 * special.rel_entr(np.stack([p, q]), (p + q) / 2).sum(axis=1).mean(),
    }
    for name, value in expected.items():
        assert divergence_discrete(DIVERGENCES[name]) == pytest.approx(value, rel=1e-10), name
    gan_minus_js = divergence_discrete(DIVERGENCES["gan"]) - expected["jensen_shannon"]
    assert gan_minus_js == pytest.approx(-math.log(4.0), rel=1e-10)
    for alpha in ALPHAS:
        value = ((p**alpha * q ** (1 - alpha)).sum() - 1.0) / (alpha * (alpha - 1.0))
        assert divergence_discrete(alpha_divergence(alpha)) == pytest.approx(value, rel=1e-10)
    for pi in (*PIS, 0.01, 0.99):  # π KL(P||M) + (1 - π) KL(Q||M), M = π P + (1 - π) Q
        mixture = pi * p + (1 - pi) * q
        value = pi * special.rel_entr(p, mixture).sum() + (1 - pi) * special.rel_entr(q, mixture).sum()
        assert divergence_discrete(jensen_shannon_weighted(pi)) == pytest.approx(value, rel=1e-10), pi


def test_suboptimal_critic_gives_smaller_bound(divergence: Divergence) -> None:
    optimal = evaluate(divergence.optimal_critic, DISCRETE_P / DISCRETE_Q)
    exact = divergence_discrete(divergence)
    # Halving T* stays in dom f* (an interval containing 0 in its closure) and is strictly worse.
    assert variational_bound_discrete(divergence, 0.5 * optimal) < exact - 1e-4
    optimal_scores = inverse_activation(divergence, torch.as_tensor(optimal))
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        perturbed_scores = optimal_scores + torch.randn(optimal_scores.shape, generator=generator, dtype=torch.float64)
        perturbed = divergence.activation(perturbed_scores).numpy()
        assert variational_bound_discrete(divergence, perturbed) <= exact + 1e-10


def gaussian_pair(divergence: Divergence) -> tuple[tuple[float, float], tuple[float, float]]:
    """(P, Q) as (mean, std). Neyman chi^2 and α < 0 weight by q^2/p, infinite when Q has heavier
    tails than P, so for those the pair is swapped."""
    heavy_tail_sensitive = divergence.name == "neyman" or (
        divergence.name == "alpha" and divergence.conjugate_domain[1] < 1.0
    )
    return (GAUSSIAN_Q, GAUSSIAN_P) if heavy_tail_sensitive else (GAUSSIAN_P, GAUSSIAN_Q)


def log_density(parameters: tuple[float, float], x: float | np.ndarray) -> float | np.ndarray:
    mean, standard_deviation = parameters
    return stats.norm.logpdf(x, loc=mean, scale=standard_deviation)


def quadrature(integrand: Callable[[float], float]) -> float:
    value, _ = integrate.quad(integrand, -INTEGRATION_LIMIT, INTEGRATION_LIMIT, limit=200, epsabs=1e-11)
    return value


def gaussian_ratio(p: tuple[float, float], q: tuple[float, float], x: float) -> torch.Tensor:
    """p(x)/q(x) as a float64 scalar tensor, from log densities so the tails do not underflow early."""
    return torch.tensor(math.exp(log_density(p, x) - log_density(q, x)), dtype=torch.float64)


def gaussian_divergence_by_quadrature(
    divergence: Divergence, p: tuple[float, float], q: tuple[float, float]
) -> float:
    """D_f(P||Q) = ∫ q f(p/q) dx by scipy quadrature."""
    return quadrature(
        lambda x: math.exp(log_density(q, x)) * float(divergence.generator_f(gaussian_ratio(p, q, x)))
    )


def gaussian_closed_form(name: str, p: tuple[float, float], q: tuple[float, float]) -> float | None:
    """Closed forms for Gaussians (KL family and Hellinger via the Bhattacharyya coefficient)."""
    (mean_p, std_p), (mean_q, std_q) = p, q

    def kl(a: tuple[float, float], b: tuple[float, float]) -> float:
        return math.log(b[1] / a[1]) + (a[1] ** 2 + (a[0] - b[0]) ** 2) / (2 * b[1] ** 2) - 0.5

    bhattacharyya = math.sqrt(2 * std_p * std_q / (std_p**2 + std_q**2)) * math.exp(
        -((mean_p - mean_q) ** 2) / (4 * (std_p**2 + std_q**2))
    )
    closed_forms = {
        "kl": kl(p, q),
        "reverse_kl": kl(q, p),
        "jeffrey": kl(p, q) + kl(q, p),
        "squared_hellinger": 2.0 - 2.0 * bhattacharyya,
    }
    return closed_forms.get(name)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [case for case in CASES if case[0] != "total_variation"],
    ids=[case_id for case_id in CASE_IDS if case_id != "total_variation"],
)
def test_bound_is_tight_at_optimal_critic_gaussian(name: str, kwargs: dict[str, float]) -> None:
    """Total variation is left to the discrete test: its T* = sign(p - q) / 2 is discontinuous."""
    divergence = get_divergence(name, **kwargs)
    p, q = gaussian_pair(divergence)

    def critic(x: float) -> torch.Tensor:
        return divergence.optimal_critic(gaussian_ratio(p, q, x))

    reference = gaussian_divergence_by_quadrature(divergence, p, q)
    expectation_p = quadrature(lambda x: math.exp(log_density(p, x)) * float(critic(x)))
    expectation_q = quadrature(lambda x: math.exp(log_density(q, x)) * float(divergence.conjugate(critic(x))))
    assert expectation_p - expectation_q == pytest.approx(reference, rel=1e-2, abs=1e-6)
    closed_form = gaussian_closed_form(name, p, q)
    if closed_form is not None:
        assert reference == pytest.approx(closed_form, rel=1e-6)


def assert_estimate_close(
    divergence: Divergence, real_scores: torch.Tensor, fake_scores: torch.Tensor, reference: float
) -> None:
    """critic_objective on samples is within 5 standard errors (plus 2 % for heavy-tailed terms whose
    sample variance underestimates the true one, e.g. q/p under P for Jeffrey) of the reference."""
    estimate = float(critic_objective(divergence, real_scores, fake_scores))
    real_terms = divergence.activation(real_scores)
    fake_terms = divergence.conjugate(divergence.activation(fake_scores))
    standard_error = math.sqrt(float(real_terms.var() / real_terms.numel() + fake_terms.var() / fake_terms.numel()))
    assert abs(estimate - reference) <= 5.0 * standard_error + 0.02 * abs(reference)


def test_critic_objective_at_optimal_scores_estimates_divergence(divergence: Divergence) -> None:
    """Sampling check on the discrete pair (covers total variation) and, except TV, on the Gaussians."""
    generator = torch.Generator().manual_seed(1234)
    count = 100_000
    optimal = divergence.optimal_critic(torch.as_tensor(DISCRETE_P / DISCRETE_Q))
    optimal_scores = inverse_activation(divergence, optimal)
    real_index = torch.multinomial(torch.as_tensor(DISCRETE_P), count, replacement=True, generator=generator)
    fake_index = torch.multinomial(torch.as_tensor(DISCRETE_Q), count, replacement=True, generator=generator)
    reference = divergence_discrete(divergence)
    assert_estimate_close(divergence, optimal_scores[real_index], optimal_scores[fake_index], reference)
    if divergence.name == "total_variation":
        return
    p, q = gaussian_pair(divergence)

    def optimal_scores_at(x: torch.Tensor) -> torch.Tensor:
        log_ratio = torch.as_tensor(log_density(p, x.numpy()) - log_density(q, x.numpy()))
        return inverse_activation(divergence, divergence.optimal_critic(torch.exp(log_ratio)))

    real = p[0] + p[1] * torch.randn(count, generator=generator, dtype=torch.float64)
    fake = q[0] + q[1] * torch.randn(count, generator=generator, dtype=torch.float64)
    reference = gaussian_divergence_by_quadrature(divergence, p, q)
    assert_estimate_close(divergence, optimal_scores_at(real), optimal_scores_at(fake), reference)


@pytest.mark.parametrize(("dtype", "extent"), [(torch.float32, 8.0), (torch.float64, 30.0)])
def test_loss_helpers_have_finite_gradients(divergence: Divergence, dtype: torch.dtype, extent: float) -> None:
    real_scores = torch.linspace(-extent, extent, 41, dtype=dtype, requires_grad=True)
    fake_scores = torch.linspace(-extent, extent, 41, dtype=dtype).flip(0).requires_grad_(True)
    for loss in (
        -critic_objective(divergence, real_scores, fake_scores),
        generator_objective(divergence, fake_scores),
        generator_objective_nonsaturating(divergence, fake_scores),
    ):
        assert loss.ndim == 0 and torch.isfinite(loss)
        real_scores.grad = fake_scores.grad = None
        loss.backward()
        for scores in (real_scores, fake_scores):
            if scores.grad is not None:
                assert torch.all(torch.isfinite(scores.grad))
        assert fake_scores.grad is not None and fake_scores.grad.abs().sum() > 0


def test_generator_objectives_match_definitions() -> None:
    divergence = DIVERGENCES["kl"]
    fake_scores = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64)
    expected_saturating = -torch.exp(fake_scores - 1.0).mean()
    assert float(generator_objective(divergence, fake_scores)) == pytest.approx(float(expected_saturating))
    assert float(generator_objective_nonsaturating(divergence, fake_scores)) == pytest.approx(-1.0 / 3.0)


def test_get_divergence_lists_valid_names_for_unknown_name() -> None:
    with pytest.raises(UserError) as raised:
        get_divergence("wasserstein")
    message = str(raised.value)
    assert "\n" not in message and "wasserstein" in message
    assert all(name in message for name in DIVERGENCES)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_get_divergence_rejects_degenerate_alpha(alpha: float) -> None:
    with pytest.raises(UserError, match="alpha"):
        get_divergence("alpha", alpha=alpha)


@pytest.mark.parametrize("pi", [0.0, 1.0, -0.5, 1.5, math.nan, math.inf])
def test_get_divergence_rejects_pi_outside_unit_interval(pi: float) -> None:
    with pytest.raises(UserError, match="pi"):
        get_divergence("jensen_shannon_weighted", pi=pi)


def test_get_divergence_keyword_defaults() -> None:
    """Existing calls keep working; alpha and pi only affect their own rows, positionally too."""
    assert get_divergence("kl", 0.5, 0.3) is DIVERGENCES["kl"]
    assert get_divergence("alpha", 0.5, 0.3).conjugate_domain == (-math.inf, 2.0)
    weighted = get_divergence("jensen_shannon_weighted", 0.5, 0.3)
    assert weighted.conjugate_domain[1] == pytest.approx(-0.3 * math.log(0.3))
    assert get_divergence("jensen_shannon_weighted").conjugate_domain[1] == pytest.approx(0.5 * math.log(2.0))


def test_table_has_every_row() -> None:
    expected = {
        "total_variation", "kl", "reverse_kl", "pearson", "neyman", "squared_hellinger",
        "jeffrey", "jensen_shannon", "gan", "alpha", "jensen_shannon_weighted",
    }
    assert len(DIVERGENCES) == 11 and set(DIVERGENCES) == expected
    assert get_divergence("kl") is DIVERGENCES["kl"]


def test_optimal_critic_matches_autograd(divergence: Divergence) -> None:
    """T* = f'(u) against autograd of f, and (f*)'(T*(u)) = u (the conjugate's slope inverts f'), except for
    total variation, whose f* = t has slope 1 everywhere on its closed domain."""
    u = torch.tensor([1e-3, 0.1, 0.3, 0.7, 1.3, 2.0, 5.0, 12.0, 1e3], dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(divergence.generator_f(u).sum(), u)
    torch.testing.assert_close(divergence.optimal_critic(u.detach()), slope, rtol=1e-10, atol=1e-12)
    if divergence.name == "total_variation":
        return
    critic = divergence.optimal_critic(u.detach()).requires_grad_(True)
    (conjugate_slope,) = torch.autograd.grad(divergence.conjugate(critic).sum(), critic)
    torch.testing.assert_close(conjugate_slope, u.detach(), rtol=1e-8, atol=0.0)


def weighted_js_reference(pi: float, u: np.ndarray) -> np.ndarray:
    """Table 1 written out literally (no log1p/xlogy rearrangement), for u > 0."""
    return pi * u * np.log(u) - (1 - pi + pi * u) * np.log(1 - pi + pi * u)


@pytest.mark.parametrize("pi", [0.01, *PIS, 0.99])
def test_jensen_shannon_weighted_closed_forms(pi: float) -> None:
    """f as in Table 1; f*(t) = (1 - π) log((1 - π) / (1 - π e^{t/π})) on t < -π log π; g_f(v) = -π log π -
    log(1 + e^{-v}) (Table 2); T* = f'(u) = π log(u / (1 - π + π u)); and the optimal critic spans dom f*."""
    divergence = jensen_shannon_weighted(pi)
    upper = -pi * math.log(pi)
    assert divergence.conjugate_domain == (-math.inf, pytest.approx(upper, rel=1e-15))
    u = np.geomspace(1e-4, 1e4, 81)
    np.testing.assert_allclose(evaluate(divergence.generator_f, u), weighted_js_reference(pi, u), rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(evaluate(divergence.optimal_critic, u), pi * np.log(u / (1 - pi + pi * u)), rtol=1e-12)
    t = np.linspace(-50.0, upper - 1e-3, 201)
    expected_conjugate = (1 - pi) * np.log((1 - pi) / (1 - pi * np.exp(t / pi)))
    np.testing.assert_allclose(evaluate(divergence.conjugate, t), expected_conjugate, rtol=1e-9, atol=1e-14)
    v = np.linspace(-30.0, 30.0, 121)
    np.testing.assert_allclose(evaluate(divergence.activation, v), upper - np.logaddexp(0.0, -v),
                               rtol=1e-12, atol=1e-14)
    # f'(u) -> -inf as u -> 0 and -> -π log π as u -> inf: the range of T* is dom f*.
    # Never past the bound in float64 (at u = 1e300 the true gap, ~1e-300, rounds to 0).
    critic = evaluate(divergence.optimal_critic, np.array([1e-300, 1e10, 1e300]))
    assert critic[0] < -600 * pi and upper - 1e-9 < critic[1] < upper and critic[2] <= upper
    # Limits: f*(t) -> -f(0) = (1 - π) log(1 - π) as t -> -inf; f*(t) -> +inf as t -> -π log π.
    assert float(evaluate(divergence.conjugate, -1e4)) == pytest.approx((1 - pi) * math.log1p(-pi), rel=1e-12)
    assert float(evaluate(divergence.conjugate, upper - 1e-12)) > 10.0 * (1 - pi)


def test_jensen_shannon_weighted_at_one_half_is_half_the_jensen_shannon_row() -> None:
    """The "jensen_shannon" row is 2 JS: f_JS(u) = u log u - (u + 1) log((u + 1)/2). With π = 1/2,
    f_JSw = f_JS / 2 exactly, hence (c f)*(t) = c f*(t / c) gives f*_JSw(t) = f*_JS(2 t) / 2, the domains
    scale by 1/2 (log 2 / 2 vs log 2), and T*_JSw = T*_JS / 2. The activations are not a plain rescaling
    (log 2 / 2 + log σ(v) vs log 2 + log σ(v)); both land in their own domain."""
    weighted, plain = jensen_shannon_weighted(0.5), DIVERGENCES["jensen_shannon"]
    u = np.geomspace(1e-4, 1e4, 81)
    np.testing.assert_allclose(evaluate(weighted.generator_f, u), 0.5 * evaluate(plain.generator_f, u),
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(evaluate(weighted.optimal_critic, u), 0.5 * evaluate(plain.optimal_critic, u),
                               rtol=1e-12, atol=1e-15)
    t = np.linspace(-20.0, 0.5 * math.log(2.0) - 1e-4, 101)
    np.testing.assert_allclose(evaluate(weighted.conjugate, t), 0.5 * evaluate(plain.conjugate, 2.0 * t), rtol=1e-12)
    assert weighted.conjugate_domain[1] == pytest.approx(0.5 * plain.conjugate_domain[1], rel=1e-15)
    assert divergence_discrete(weighted) == pytest.approx(0.5 * divergence_discrete(plain), rel=1e-12)


@pytest.mark.parametrize("pi", [0.01, 0.5, 0.99])
@pytest.mark.parametrize(("dtype", "extent", "tolerance"), [(torch.float32, 8.0, 1e-4), (torch.float64, 30.0, 1e-4)])
def test_jensen_shannon_weighted_conjugate_of_activation_is_accurate(
    pi: float, dtype: torch.dtype, extent: float, tolerance: float
) -> None:
    """The training losses compose f*(g_f(v)); compare it in float32 and float64 with the same quantity written
    directly in v and evaluated in float64, which has no cancellation at the domain boundary."""
    divergence = jensen_shannon_weighted(pi)
    v = torch.linspace(-extent, extent, 161, dtype=dtype)
    composed = divergence.conjugate(divergence.activation(v)).double()
    # (t - upper)/π = -softplus(-v)/π, so f*(g(v)) = (1 - π)(log(1 - π) - log(1 - exp(-softplus(-v)/π))).
    exponent = -np.logaddexp(0.0, -v.double().numpy()) / pi
    reference = (1 - pi) * (math.log1p(-pi) - np.log(-np.expm1(exponent)))
    np.testing.assert_allclose(composed.numpy(), reference, rtol=tolerance, atol=1e-6)
