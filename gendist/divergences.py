"""f-divergences for f-GANs (Nowozin, Cseke & Tomioka 2016, "f-GAN", Table 1 and Table 2).

An f-divergence is D_f(P||Q) = ∫ q(x) f(p(x)/q(x)) dx for a convex generator f with f(1) = 0. Its
variational (Fenchel) lower bound is

    D_f(P||Q) >= sup_T  E_P[T(x)] - E_Q[f*(T(x))],

with f* the convex conjugate of f. The bound is tight at T*(x) = f'(p(x)/q(x)). A discriminator outputs
an unconstrained score v; the output activation T = g_f(v) of Table 2 maps it into dom f*.

All functions are elementwise torch functions. `conjugate` is only meaningful on `conjugate_domain`;
outside it the conjugate is +inf mathematically and the torch value is undefined (nan or a wrong number).
Composing `conjugate(activation(v))` is exact for moderate v; for |v| beyond ~15 in float32 the
"1 - exp(-v)" style activations round onto the domain boundary, so prefer float64 for extreme scores.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as functional

from gendist.errors import UserError

TensorFunction = Callable[[torch.Tensor], torch.Tensor]

LOG_2 = math.log(2.0)
NEWTON_ITERATIONS = 6


@dataclass(frozen=True)
class Divergence:
    """One row of the f-GAN tables: generator f, conjugate f*, output activation g_f, dom f*, T* = f'."""

    name: str
    generator_f: TensorFunction
    conjugate: TensorFunction
    activation: TensorFunction
    conjugate_domain: tuple[float, float]
    optimal_critic: TensorFunction


def log_one_minus_exp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0 without cancellation (Mächler 2012: expm1 near 0, log1p far from 0)."""
    near_zero = x > -LOG_2
    # Evaluate both branches on safe inputs so neither produces nan gradients for the unused branch.
    safe_near = torch.where(near_zero, x, torch.full_like(x, -1.0))
    safe_far = torch.where(near_zero, torch.full_like(x, -1.0), x)
    return torch.where(near_zero, torch.log(-torch.expm1(safe_near)), torch.log1p(-torch.exp(safe_far)))


def log_lambert_w_of_exp(z: torch.Tensor) -> torch.Tensor:
    """y = log W(e^z), the principal Lambert W branch, i.e. the root of y + e^y = z.

    Why Newton in log space rather than scipy.special.lambertw: it stays in torch (any device/dtype,
    differentiable) and never forms e^z, which overflows for z > ~709 (Jeffrey's f* at t < -708).
    h(y) = y + e^y - z is convex and increasing, so Newton converges monotonically after one step; the
    start below is within a few percent everywhere (W(e^z) ~ e^z for z -> -inf, ~ z - log z for z -> inf,
    both exact at z = 1), so six iterations reach float64 precision.
    """
    with torch.no_grad():
        above_one = z > 1.0
        safe_z = torch.where(above_one, z, torch.full_like(z, 2.0))
        start_large = torch.log(safe_z - torch.log(safe_z))
        start_small = z - torch.exp(torch.clamp(z, max=1.0) - 1.0)
        y = torch.where(above_one, start_large, start_small)
        for _ in range(NEWTON_ITERATIONS):
            y = y - (y + torch.exp(y) - z) / (1.0 + torch.exp(y))
    # One more Newton step with autograd on: at the root its derivative is the implicit-function
    # derivative dy/dz = 1 / (1 + e^y), so gradients are exact without unrolling the loop.
    y = y.detach()
    return y - (y + torch.exp(y) - z) / (1.0 + torch.exp(y))


def _total_variation() -> Divergence:
    """f(u) = |u - 1| / 2, f*(t) = t on [-1/2, 1/2], g_f(v) = tanh(v) / 2."""
    return Divergence(
        name="total_variation",
        generator_f=lambda u: 0.5 * torch.abs(u - 1.0),
        conjugate=lambda t: t,
        activation=lambda v: 0.5 * torch.tanh(v),
        conjugate_domain=(-0.5, 0.5),
        optimal_critic=lambda ratio: 0.5 * torch.sign(ratio - 1.0),
    )


def _kl() -> Divergence:
    """Kullback-Leibler: f(u) = u log u, f*(t) = exp(t - 1), g_f(v) = v."""
    return Divergence(
        name="kl",
        generator_f=lambda u: torch.xlogy(u, u),
        conjugate=lambda t: torch.exp(t - 1.0),
        activation=lambda v: v,
        conjugate_domain=(-math.inf, math.inf),
        optimal_critic=lambda ratio: 1.0 + torch.log(ratio),
    )


def _reverse_kl() -> Divergence:
    """Reverse KL: f(u) = -log u, f*(t) = -1 - log(-t) on t < 0, g_f(v) = -exp(-v)."""
    return Divergence(
        name="reverse_kl",
        generator_f=lambda u: -torch.log(u),
        conjugate=lambda t: -1.0 - torch.log(-t),
        activation=lambda v: -torch.exp(-v),
        conjugate_domain=(-math.inf, 0.0),
        optimal_critic=lambda ratio: -1.0 / ratio,
    )


def _pearson() -> Divergence:
    """Pearson chi^2: f(u) = (u - 1)^2, f*(t) = t^2 / 4 + t, g_f(v) = v."""
    return Divergence(
        name="pearson",
        generator_f=lambda u: (u - 1.0) ** 2,
        conjugate=lambda t: 0.25 * t**2 + t,
        activation=lambda v: v,
        conjugate_domain=(-math.inf, math.inf),
        optimal_critic=lambda ratio: 2.0 * (ratio - 1.0),
    )


def _neyman() -> Divergence:
    """Neyman chi^2: f(u) = (1 - u)^2 / u, f*(t) = 2 - 2 sqrt(1 - t) on t < 1, g_f(v) = 1 - exp(-v)."""
    return Divergence(
        name="neyman",
        generator_f=lambda u: (1.0 - u) ** 2 / u,
        conjugate=lambda t: 2.0 - 2.0 * torch.sqrt(1.0 - t),
        activation=lambda v: -torch.expm1(-v),
        conjugate_domain=(-math.inf, 1.0),
        optimal_critic=lambda ratio: 1.0 - ratio ** (-2.0),
    )


def _squared_hellinger() -> Divergence:
    """Squared Hellinger: f(u) = (sqrt u - 1)^2, f*(t) = t / (1 - t) on t < 1, g_f(v) = 1 - exp(-v)."""
    return Divergence(
        name="squared_hellinger",
        generator_f=lambda u: (torch.sqrt(u) - 1.0) ** 2,
        conjugate=lambda t: t / (1.0 - t),
        activation=lambda v: -torch.expm1(-v),
        conjugate_domain=(-math.inf, 1.0),
        optimal_critic=lambda ratio: 1.0 - torch.rsqrt(ratio),
    )


def _jeffrey_conjugate(t: torch.Tensor) -> torch.Tensor:
    """f*(t) = W(e^{1-t}) + 1 / W(e^{1-t}) + t - 2 (Table 2), evaluated through w = W(e^{1-t}).

    Since w + log w = 1 - t, the same value is 1/w - 1 - log w. The paper's form cancels catastrophically
    for t -> -inf (1/w ~ -t), which is exactly where T* = f'(p/q) goes when p << q.
    """
    log_w = log_lambert_w_of_exp(1.0 - t)
    return torch.exp(-log_w) - 1.0 - log_w


def _jeffrey() -> Divergence:
    """Jeffrey (symmetric KL): f(u) = (u - 1) log u, f* via Lambert W, g_f(v) = v."""
    return Divergence(
        name="jeffrey",
        generator_f=lambda u: (u - 1.0) * torch.log(u),
        conjugate=_jeffrey_conjugate,
        activation=lambda v: v,
        conjugate_domain=(-math.inf, math.inf),
        optimal_critic=lambda ratio: torch.log(ratio) + 1.0 - 1.0 / ratio,
    )


def _jensen_shannon() -> Divergence:
    """Jensen-Shannon (times 2): f(u) = -(u + 1) log((1 + u) / 2) + u log u, f*(t) = -log(2 - e^t)."""
    return Divergence(
        name="jensen_shannon",
        generator_f=lambda u: torch.xlogy(u, u) - torch.xlogy(u + 1.0, 0.5 * (u + 1.0)),
        # -log(2 - e^t) = -log 2 - log(1 - e^{t - log 2}), stable as t approaches log 2.
        conjugate=lambda t: -LOG_2 - log_one_minus_exp(t - LOG_2),
        # log 2 - log(1 + exp(-v)) = log 2 + log sigmoid(v).
        activation=lambda v: LOG_2 + functional.logsigmoid(v),
        conjugate_domain=(-math.inf, LOG_2),
        optimal_critic=lambda ratio: LOG_2 + torch.log(ratio) - torch.log1p(ratio),
    )


def _gan() -> Divergence:
    """GAN: f(u) = u log u - (u + 1) log(u + 1), f*(t) = -log(1 - e^t) on t < 0, g_f(v) = -log(1 + e^-v).

    As in the paper, f(1) = -log 4, so D_GAN(P||Q) = 2 JS(P||Q) - log 4 (zero only up to that constant).
    """
    return Divergence(
        name="gan",
        generator_f=lambda u: torch.xlogy(u, u) - torch.xlogy(u + 1.0, u + 1.0),
        conjugate=lambda t: -log_one_minus_exp(t),
        activation=functional.logsigmoid,
        conjugate_domain=(-math.inf, 0.0),
        optimal_critic=lambda ratio: torch.log(ratio) - torch.log1p(ratio),
    )


def jensen_shannon_weighted(pi: float) -> Divergence:
    """Jensen-Shannon-weighted, for a weight π in (0, 1) (Table 1's last row):

        f(u)  = π u log u - (1 - π + π u) log(1 - π + π u),
        D_f(P||Q) = π KL(P||M) + (1 - π) KL(Q||M) with M = π P + (1 - π) Q,

    so π = 1/2 gives the plain Jensen-Shannon divergence, half the "jensen_shannon" row (which is 2 JS).
    With m = 1 - π + π u: f'(u) = π log(u / m), increasing from -inf (u -> 0) to -π log π (u -> inf), so
    dom f* = (-inf, -π log π). Solving t = f'(u) gives u = (1 - π) s / (1 - π s) with s = e^{t/π}, m =
    (1 - π) / (1 - π s), and f*(t) = t u - f(u) = (1 - π) log m, i.e.

        f*(t) = (1 - π) log((1 - π) / (1 - π e^{t/π})),   g_f(v) = -π log π - log(1 + e^{-v}) (Table 2).

    π e^{t/π} = e^{(t - upper)/π} with upper = -π log π; forming t - upper first is exact near the boundary
    (Sterbenz), which is where g_f puts large scores, and log_one_minus_exp keeps the log accurate there.
    """
    if not 0.0 < pi < 1.0:  # also rejects nan
        raise UserError(f"jensen_shannon_weighted needs a weight pi in (0, 1), got pi={pi}")
    upper = -pi * math.log(pi)
    log_one_minus_pi = math.log1p(-pi)

    def generator_f(u: torch.Tensor) -> torch.Tensor:
        mixture = 1.0 + pi * (u - 1.0)  # 1 - π + π u, exactly 1 at u = 1
        return pi * torch.xlogy(u, u) - mixture * torch.log1p(pi * (u - 1.0))

    def conjugate(t: torch.Tensor) -> torch.Tensor:
        return (1.0 - pi) * (log_one_minus_pi - log_one_minus_exp((t - upper) / pi))

    def optimal_critic(ratio: torch.Tensor) -> torch.Tensor:
        # π log(u / m): exact near u = 1 in the log1p form; for large u the equivalent form
        # upper - π log1p((1 - π) / (π u)) approaches the bound from below without rounding past it (the first
        # form overshoots it by ~1e-17 at u = 1e300).
        near_one = pi * (torch.log(ratio) - torch.log1p(pi * (ratio - 1.0)))
        large = upper - pi * torch.log1p((1.0 - pi) / (pi * torch.clamp(ratio, min=1.0)))
        return torch.where(ratio > 2.0, large, near_one)

    return Divergence(
        name="jensen_shannon_weighted",
        generator_f=generator_f,
        conjugate=conjugate,
        activation=lambda v: upper + functional.logsigmoid(v),
        conjugate_domain=(-math.inf, upper),
        optimal_critic=optimal_critic,
    )


def alpha_divergence(alpha: float) -> Divergence:
    """α-divergence, f(u) = (u^α - 1 - α(u - 1)) / (α(α - 1)) for α ∉ {0, 1} (Table 1).

    f'(u) = (u^{α-1} - 1) / (α - 1) and f*(t) = ((1 + (α - 1) t)^{α/(α-1)} - 1) / α (Table 2).
    For α < 1, dom f* = (-inf, 1/(1 - α)) and g_f(v) = 1/(1 - α) - log(1 + e^-v). For α > 1 the paper uses
    g_f(v) = v on all of R; there f* is finite everywhere because below t = -1/(α - 1) the supremum sits at
    u = 0 and f* is constant -1/α, hence the relu in the base.
    """
    if alpha in (0.0, 1.0) or not math.isfinite(alpha):
        raise UserError(f"alpha-divergence needs a finite alpha not in {{0, 1}}, got alpha={alpha}")
    scale = alpha * (alpha - 1.0)
    exponent = alpha / (alpha - 1.0)

    def generator_f(u: torch.Tensor) -> torch.Tensor:
        # u^α - 1 via expm1 avoids cancellation near u = 1.
        return (torch.expm1(alpha * torch.log(u)) - alpha * (u - 1.0)) / scale

    def conjugate(t: torch.Tensor) -> torch.Tensor:
        base = 1.0 + (alpha - 1.0) * t
        if alpha > 1.0:
            base = torch.relu(base)
        return (base**exponent - 1.0) / alpha

    if alpha < 1.0:
        upper = 1.0 / (1.0 - alpha)
        activation: TensorFunction = lambda v: upper + functional.logsigmoid(v)
        domain = (-math.inf, upper)
    else:
        activation = lambda v: v
        domain = (-math.inf, math.inf)
    return Divergence(
        name="alpha",
        generator_f=generator_f,
        conjugate=conjugate,
        activation=activation,
        conjugate_domain=domain,
        optimal_critic=lambda ratio: torch.expm1((alpha - 1.0) * torch.log(ratio)) / (alpha - 1.0),
    )


DIVERGENCES: dict[str, Divergence] = {
    divergence.name: divergence
    for divergence in (
        _total_variation(),
        _kl(),
        _reverse_kl(),
        _pearson(),
        _neyman(),
        _squared_hellinger(),
        _jeffrey(),
        _jensen_shannon(),
        _gan(),
        alpha_divergence(1.5),
        jensen_shannon_weighted(0.5),
    )
}
"""Every row of the f-GAN table by name; "alpha" here uses α = 1.5 and "jensen_shannon_weighted" π = 1/2
(use `get_divergence` for others)."""


def get_divergence(name: str, alpha: float = 1.5, pi: float = 0.5) -> Divergence:
    """Look a divergence up by name; `alpha` is used only for name "alpha", `pi` only for
    "jensen_shannon_weighted". Raises UserError on bad input."""
    if name == "alpha":
        return alpha_divergence(alpha)
    if name == "jensen_shannon_weighted":
        return jensen_shannon_weighted(pi)
    if name not in DIVERGENCES:
        raise UserError(f"unknown divergence {name!r}; valid names: {', '.join(DIVERGENCES)}")
    return DIVERGENCES[name]


def with_exponential_negative_tail(divergence: Divergence) -> Divergence:
    """The same divergence with output activation g(v) = v for v > 0 and 1 - e^{-v} for v <= 0.

    For divergences with dom f* = R and g_f(v) = v (KL, Pearson, Jeffrey), any bijection onto R leaves the
    variational bound's supremum unchanged. Where q >> p the optimal critic T* = f'(p/q) can be very
    negative (Jeffrey: ~ -q/p), which a piecewise-linear critic reaches only slowly; the exponential branch
    reaches it at moderate scores. g is continuous with slope 1 at 0; v is clamped at -50 so float32 stays
    finite. Used by configs/fgan_jeffrey_mixture1d.yaml (`gan.fgan_activation: exp_negative_tail`).
    """
    if divergence.conjugate_domain != (-math.inf, math.inf):
        raise UserError(f"gan.fgan_activation=exp_negative_tail needs dom f* = R; {divergence.name}'s is "
                        f"{divergence.conjugate_domain}: use gan.fgan_activation=table")

    def activation(v: torch.Tensor) -> torch.Tensor:
        return torch.where(v > 0, divergence.activation(v), -torch.expm1(-v.clamp(-50.0, 0.0)))

    return dataclasses.replace(divergence, activation=activation)


def critic_objective(
    divergence: Divergence, real_scores: torch.Tensor, fake_scores: torch.Tensor
) -> torch.Tensor:
    """mean g_f(v_real) - mean f*(g_f(v_fake)): the variational lower bound the discriminator maximizes.

    Scores are raw discriminator outputs v; real samples come from P (data), fake ones from Q (model).
    """
    real_term = divergence.activation(real_scores).mean()
    fake_term = divergence.conjugate(divergence.activation(fake_scores)).mean()
    return real_term - fake_term


def generator_objective(divergence: Divergence, fake_scores: torch.Tensor) -> torch.Tensor:
    """-mean f*(g_f(v_fake)): the part of the bound depending on Q, which the generator minimizes."""
    return -divergence.conjugate(divergence.activation(fake_scores)).mean()


def generator_objective_nonsaturating(divergence: Divergence, fake_scores: torch.Tensor) -> torch.Tensor:
    """-mean g_f(v_fake): the generator maximizes E_Q[g_f(V)] instead (Nowozin et al. §3.2 heuristic),
    which gives stronger gradients early in training when the critic easily rejects fakes."""
    return -divergence.activation(fake_scores).mean()
