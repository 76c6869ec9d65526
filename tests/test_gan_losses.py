"""GAN objectives, penalties and remedies as math: the minimax game's optimal value, saturation, the
gradient penalties, PacGAN packing, unrolled discriminators, the learning-rate schedule."""
import copy
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch import nn

from gendist.config import OptimConfig, lr_scale
from gendist.recipes.base import Batch, Nets
from gendist.recipes.gan import (DISCRIMINATOR_OBJECTIVES, GENERATOR_OBJECTIVES, PAIRED_GENERATOR_OBJECTIVES,
                                 bce_discriminator, discriminator_loss, generator_loss, hinge_discriminator,
                                 r2_loss, relativistic_discriminator, relativistic_generator, wasserstein_critic)
from gendist.recipes.gan_regularizers import gradient_penalty, pack_samples, r1_penalty, unrolled_discriminator

LOG_4 = math.log(4.0)


class Noise:
    """Fresh standard normal noise from a seeded generator (the engine's StepNoise in miniature)."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def randn(self, rows: int, *tail: int) -> torch.Tensor:
        return torch.randn(rows, *tail, generator=self.generator)


class Shift(nn.Module):
    """Generator z -> z + shift (shift 0: p_G = p_data = N(0, I))."""

    def __init__(self, shift: float):
        super().__init__()
        self.shift = shift

    def forward(self, z):
        return z + self.shift


def train_optimal_discriminator(shift: float, dim: int, steps: int = 600, seed: int = 0) -> tuple[nn.Module, Nets]:
    """Train D with the recipe's own discriminator loss on fresh samples of N(0, I) vs N(shift, I)."""
    torch.manual_seed(seed)
    discriminator = nn.Sequential(nn.Linear(dim, 32), nn.Tanh(), nn.Linear(32, 1))
    nets = Nets(generator=Shift(shift), discriminator=discriminator)
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=1e-2)
    noise, data = Noise(seed), torch.Generator().manual_seed(seed + 1)
    for step in range(steps):
        if step == steps // 2:
            optimizer.param_groups[0]["lr"] = 1e-3
        batch = Batch(1024, torch.randn(1024, dim, generator=data), None, noise)
        loss = discriminator_loss(nets, batch, step, latent_dim=dim, objective=bce_discriminator)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return discriminator, nets


def game_value(nets: Nets, dim: int, shift: float, count: int = 200_000) -> tuple[float, torch.Tensor]:
    """V(G, D) = E log D(x) + E log(1 - D(G(z))) on fresh samples; also D on real samples."""
    generator = torch.Generator().manual_seed(123)
    real = torch.randn(count, dim, generator=generator)
    fake = torch.randn(count, dim, generator=generator) + shift
    with torch.no_grad():
        real_logits, fake_logits = nets.discriminator(real), nets.discriminator(fake)
        value = -(bce_discriminator(real_logits, fake_logits))
    return float(value), torch.sigmoid(real_logits)


def test_optimal_discriminator_value_is_minus_log_4_when_generator_matches_data():
    """p_G = p_data: D* = 1/2 everywhere and V(G*, D*) = -log 4 (Goodfellow et al. 2014, Theorem 1)."""
    _, nets = train_optimal_discriminator(shift=0.0, dim=2)
    value, d_real = game_value(nets, dim=2, shift=0.0)
    assert value == pytest.approx(-LOG_4, abs=5e-3)
    assert float((d_real - 0.5).abs().mean()) < 0.03


def test_optimal_discriminator_value_is_minus_log_4_plus_twice_jsd():
    """p_G != p_data: V(G, D*) = -log 4 + 2 JSD(p_data || p_G), JSD by quadrature (1-D N(0,1) vs N(1.5,1))."""
    shift = 1.5
    p, q = stats.norm(0, 1), stats.norm(shift, 1)

    def kl_to_mixture(a):
        return integrate.quad(lambda x: a.pdf(x) * math.log(a.pdf(x) / (0.5 * p.pdf(x) + 0.5 * q.pdf(x))),
                              -20, 20, limit=200)[0]

    jsd = 0.5 * kl_to_mixture(p) + 0.5 * kl_to_mixture(q)
    # The closed-form optimal discriminator D* = p / (p + q) gives the value exactly:
    exact = integrate.quad(lambda x: p.pdf(x) * math.log(p.pdf(x) / (p.pdf(x) + q.pdf(x)))
                           + q.pdf(x) * math.log(q.pdf(x) / (p.pdf(x) + q.pdf(x))), -20, 20, limit=200)[0]
    assert exact == pytest.approx(-LOG_4 + 2 * jsd, abs=1e-9)
    # ... and a discriminator trained with the recipe's loss reaches it.
    _, nets = train_optimal_discriminator(shift=shift, dim=1)
    value, _ = game_value(nets, dim=1, shift=shift)
    assert value == pytest.approx(exact, abs=0.01)
    assert value <= exact + 0.005  # no discriminator beats D* (up to sampling error)


def test_minimax_generator_saturates_and_nonsaturating_does_not():
    """When D confidently rejects fakes (logit -10), E log(1 - D(G(z))) has ~no gradient; -E log D(G(z)) has."""
    logits = torch.full((64, 1), -10.0, requires_grad=True)
    (saturating,) = torch.autograd.grad(GENERATOR_OBJECTIVES["minimax"](logits), logits)
    (nonsaturating,) = torch.autograd.grad(GENERATOR_OBJECTIVES["nonsaturating"](logits), logits)
    assert saturating.abs().max() < 1e-5
    assert nonsaturating.abs().min() > 0.9 / 64
    # both generator losses move the fake logits the same way (up)
    assert float(saturating.sum()) < 0 and float(nonsaturating.sum()) < 0


def test_objective_table_values():
    real, fake = torch.tensor([[2.0], [0.5]]), torch.tensor([[-1.0], [0.5]])
    assert float(hinge_discriminator(real, fake)) == pytest.approx((0 + 0.5) / 2 + (0 + 1.5) / 2)
    assert float(wasserstein_critic(real, fake)) == pytest.approx(-0.25 - 1.25)
    assert float(bce_discriminator(real, fake)) == pytest.approx(
        float(nn.functional.softplus(-real).mean() + nn.functional.softplus(fake).mean()))
    assert set(DISCRIMINATOR_OBJECTIVES) == set(GENERATOR_OBJECTIVES) | set(PAIRED_GENERATOR_OBJECTIVES)
    assert not set(GENERATOR_OBJECTIVES) & set(PAIRED_GENERATOR_OBJECTIVES)


def test_relativistic_pair_loss_reads_only_score_differences():
    """RpGAN: D minimizes E softplus(l_fake - l_real), G minimizes E softplus(l_real - l_fake), pair by pair;
    a constant added to every score changes neither loss (what the plain loss lacks)."""
    real, fake = torch.tensor([[2.0], [0.5], [-1.0]]), torch.tensor([[-1.0], [0.5], [3.0]])
    softplus = nn.functional.softplus
    assert float(relativistic_discriminator(real, fake)) == pytest.approx(float(softplus(fake - real).mean()))
    assert float(relativistic_generator(fake, real)) == pytest.approx(float(softplus(real - fake).mean()))
    for shift in (-5.0, 7.0):
        assert float(relativistic_discriminator(real + shift, fake + shift)) == pytest.approx(
            float(relativistic_discriminator(real, fake)), rel=1e-6)
    assert float(bce_discriminator(real + 7, fake + 7)) != pytest.approx(float(bce_discriminator(real, fake)))


def test_relativistic_generator_step_gets_no_gradient_into_the_real_scores():
    """The paired generator loss reads D on the real batch as constants: only the generated side is
    differentiated, and its value is the pair formula on this batch."""
    torch.manual_seed(0)
    generator, discriminator = nn.Linear(3, 2), nn.Linear(2, 1)
    nets = Nets(generator=generator, discriminator=discriminator)
    x = torch.randn(8, 2, requires_grad=True)
    batch = Batch(8, x, None, Noise(0))
    out = generator_loss(nets, batch, 0, latent_dim=3, objective=relativistic_generator, paired=True)
    z = Noise(0).randn(8, 3)
    expected = relativistic_generator(discriminator(generator(z)), discriminator(x))
    assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-6)
    out["loss"].backward()
    assert x.grad is None and generator.weight.grad is not None


def test_r2_penalty_is_r1_on_generated_samples_scaled_for_its_interval():
    """D(x) = ||x||^2 / 2 and G(z) = z + 1: R2 = E||G(z)||^2; the lazy phase's loss is (gamma / 2) * every
    times that, and only the discriminator is differentiated."""
    class Quadratic(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(0.5))

        def forward(self, x):
            return self.scale * x.pow(2).sum(dim=1, keepdim=True)

    nets = Nets(generator=Shift(1.0), discriminator=Quadratic())
    out = r2_loss(nets, Batch(512, None, None, Noise(3)), 0, gamma=2.0, every=4, latent_dim=2)
    fake = Noise(3).randn(512, 2) + 1.0
    assert float(out["r2_penalty"]) == pytest.approx(float(fake.pow(2).sum(1).mean()), rel=1e-5)
    assert float(out["loss"]) == pytest.approx(float(out["r2_penalty"]) * 2.0 / 2 * 4, rel=1e-5)


def test_gradient_penalty_of_a_linear_critic():
    """D(x) = w.x has gradient w everywhere: the penalty is (||w|| - 1)^2 for any interpolate."""
    critic = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[3.0, 0.0, 4.0]]))
    real, fake = torch.randn(16, 3), torch.randn(16, 3)
    penalty = gradient_penalty(critic, real, fake, torch.rand(16, 1))
    assert float(penalty.detach()) == pytest.approx(16.0, rel=1e-5)
    penalty.backward()  # the penalty trains the critic's weights (double backward)
    expected = 2 * (5 - 1) * critic.weight / 5
    assert torch.allclose(critic.weight.grad, expected, rtol=1e-5)


def test_gradient_penalty_with_packing_takes_the_norm_per_pack():
    critic = nn.Linear(4, 1, bias=False)  # a pack of two 2-D points
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    penalty = gradient_penalty(critic, torch.randn(8, 2), torch.randn(8, 2), torch.rand(8, 1), pack=2)
    assert float(penalty.detach()) == pytest.approx(0.0, abs=1e-6)  # ||w|| = 1 per pack


def test_r1_penalty_of_a_quadratic_critic():
    """D(x) = ||x||^2 / 2 has gradient x: R1 = E||x||^2."""
    class Quadratic(nn.Module):
        def forward(self, x):
            return 0.5 * x.pow(2).sum(dim=1, keepdim=True)

    x = torch.randn(256, 2)
    assert float(r1_penalty(Quadratic(), x)) == pytest.approx(float(x.pow(2).sum(1).mean()), rel=1e-5)


def test_pack_samples_shapes():
    points = torch.arange(12.0).reshape(6, 2)
    packed = pack_samples(points, 3)
    assert packed.shape == (2, 6)
    assert torch.equal(packed[0], torch.tensor([0.0, 1, 2, 3, 4, 5]))
    images = torch.randn(8, 1, 4, 4)
    assert pack_samples(images, 4).shape == (2, 4, 4, 4)
    assert torch.equal(pack_samples(images, 4)[1, 2], images[6, 0])
    assert pack_samples(points, 1) is points


def test_unrolled_discriminator_equals_k_sgd_steps_and_changes_the_generator_gradient():
    torch.manual_seed(0)
    discriminator = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))
    real = torch.randn(32, 2)
    fake = torch.randn(32, 2, requires_grad=True)
    steps, lr = 3, 0.1
    state = unrolled_discriminator(discriminator, bce_discriminator, real, fake, steps, lr)

    manual = copy.deepcopy(discriminator)
    optimizer = torch.optim.SGD(manual.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        bce_discriminator(manual(real), manual(fake.detach())).backward()
        optimizer.step()
    for name, param in manual.named_parameters():
        assert torch.allclose(state[name], param, atol=1e-6), name

    generator_objective = GENERATOR_OBJECTIVES["nonsaturating"]
    unrolled_loss = generator_objective(torch.func.functional_call(discriminator, state, (fake,)))
    (unrolled_grad,) = torch.autograd.grad(unrolled_loss, fake)
    # the same loss at the unrolled weights but without differentiating through the unrolling
    frozen_state = {name: value.detach() for name, value in state.items()}
    plain_loss = generator_objective(torch.func.functional_call(discriminator, frozen_state, (fake,)))
    (plain_grad,) = torch.autograd.grad(plain_loss, fake)
    assert torch.allclose(unrolled_loss, plain_loss)
    assert float((unrolled_grad - plain_grad).norm()) > 1e-4 * float(plain_grad.norm())
    assert all(p.grad is None for p in discriminator.parameters())  # D itself is untouched


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_lr_schedule(schedule):
    optim = OptimConfig(schedule=schedule, warmup_steps=10, final_lr_fraction=0.1)
    scales = np.array([lr_scale(optim, step, 110) for step in range(110)])
    assert scales[0] == pytest.approx(0.1) and scales[9] == pytest.approx(1.0)
    assert scales[10] == pytest.approx(1.0)
    assert np.all(np.diff(scales[10:]) <= 1e-12)
    assert lr_scale(optim, 110, 110) == pytest.approx(0.1)
    assert lr_scale(OptimConfig(), 50, 110) == 1.0


def test_exponential_negative_tail_activation_is_a_smooth_bijection_onto_the_reals():
    from gendist.divergences import get_divergence, with_exponential_negative_tail
    from gendist.errors import UserError

    jeffrey = with_exponential_negative_tail(get_divergence("jeffrey"))
    v = torch.linspace(-20, 20, 4001, dtype=torch.float64, requires_grad=True)
    t = jeffrey.activation(v)
    (slope,) = torch.autograd.grad(t.sum(), v)
    assert torch.all(torch.diff(t) > 0)  # strictly increasing
    assert float(t[2000]) == pytest.approx(0.0, abs=1e-12) and float(slope[2000]) == pytest.approx(1.0)  # v = 0: value 0, slope 1
    assert float(t[0]) < -1e8 and float(t[-1]) == pytest.approx(20.0)
    assert torch.isfinite(jeffrey.conjugate(jeffrey.activation(torch.tensor([-1e4, -60.0, 0.0, 30.0])))).all()
    with pytest.raises(UserError, match="dom f"):
        with_exponential_negative_tail(get_divergence("reverse_kl"))
