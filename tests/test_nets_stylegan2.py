"""StyleGAN2 generator / discriminator (gendist.nets.stylegan2) in one process, with tiny widths: shapes for square,
odd and non-square images, per-row independence and determinism of the hashed noise and style mixing, weight
demodulation, statistics of the counter-based normals, minibatch stddev, gradient coverage and double backward."""
import pytest
import torch

from gendist.errors import UserError
from gendist.nets.stylegan2 import (StyleGAN2Discriminator, StyleGAN2Generator, SynthesisLayer, hashed_normal,
                                    hashed_uniform, latent_seed, modulated_conv2d)

TINY = dict(channels=8, max_channels=16)
IN_DIM = 16


def make_generator(shape=(3, 16, 16), style_mixing=0.0, noise_strength=0.0):
    """A tiny generator; noise strengths set to `noise_strength` so the hashed noise matters."""
    torch.manual_seed(0)
    net = StyleGAN2Generator(IN_DIM, shape, w_dim=16, mapping_layers=2, style_mixing=style_mixing, **TINY)
    with torch.no_grad():
        for layer in net.modules():
            if isinstance(layer, SynthesisLayer):
                layer.noise_strength.fill_(noise_strength)
    return net


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double() - a.double().mean(), b.flatten().double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64), (1, 24, 40), (3, 8, 8)])
def test_shapes(shape):
    """Catches wrong spatial plans (odd sides, non-square, smallest size 8) and wrong channel / head sizes."""
    gen = StyleGAN2Generator(IN_DIM, shape, w_dim=16, mapping_layers=2, style_mixing=0.9, **TINY)
    image = gen(torch.randn(3, IN_DIM))
    assert image.shape == (3, *shape) and torch.isfinite(image).all()
    assert gen.num_ws == len(gen.convs) + 1
    assert StyleGAN2Discriminator(shape, **TINY)(image).shape == (3, 1)
    assert StyleGAN2Discriminator(shape, out_dim=16, **TINY)(image).shape == (3, 16)


def test_too_small_images_are_a_user_error():
    """Catches silently building a broken net for images below 8x8."""
    with pytest.raises(UserError):
        StyleGAN2Generator(IN_DIM, (1, 4, 4), **TINY)


def test_generator_rows_are_independent():
    """Catches noise or style mixing drawn per batch (global RNG, batch-wide draws) instead of per row: row 0's
    output must not change when the other rows change, nor when it is run alone."""
    gen = make_generator(style_mixing=0.9, noise_strength=0.5).train()
    z = torch.randn(6, IN_DIM)
    other = torch.cat([z[:1], torch.randn(5, IN_DIM)])  # same batch size: same kernels, so exact
    with torch.no_grad():
        full, changed, alone = gen(z), gen(other), gen(z[:1])
    torch.testing.assert_close(changed[0], full[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(alone[0], full[0], atol=1e-5, rtol=0)  # batch size 1 may pick other conv kernels


def test_generator_is_deterministic_and_uses_no_global_rng():
    """Catches torch.randn in forward: same z gives identical outputs (train mode, noise and mixing on), and the
    global RNG state is untouched."""
    gen = make_generator(style_mixing=0.9, noise_strength=0.5).train()
    z = torch.randn(5, IN_DIM)
    state = torch.get_rng_state()
    with torch.no_grad():
        first, second = gen(z), gen(z)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, second)


def test_noise_strength_and_noise_mode():
    """Catches noise that is never added (or added regardless of noise_mode)."""
    gen = make_generator(noise_strength=0.5).eval()
    z = torch.randn(3, IN_DIM)
    with torch.no_grad():
        noisy = gen(z)
        gen.noise_mode = "none"
        quiet = gen(z)
        for layer in gen.modules():
            if isinstance(layer, SynthesisLayer):
                layer.noise_strength.zero_()
        gen.noise_mode = "hashed"
        zero_strength = gen(z)
    assert (noisy - quiet).abs().max() > 1e-3
    torch.testing.assert_close(zero_strength, quiet)
    gen.noise_mode = "bogus"
    with pytest.raises(ValueError):
        gen(z)


def test_style_mixing_only_in_train_mode_and_per_row():
    """Catches style mixing that never happens, happens in eval mode, or mixes every row regardless of p."""
    gen = make_generator(style_mixing=0.5).eval()
    z = torch.randn(64, IN_DIM)
    with torch.no_grad():
        plain = gen(z)
        gen.train()
        mixed = gen(z)
    changed = (mixed - plain).flatten(1).abs().amax(dim=1) > 1e-5  # (B,)
    assert 16 <= int(changed.sum()) <= 48  # about half of the rows mix
    gen.style_mixing = 0.0
    with torch.no_grad():
        torch.testing.assert_close(gen(z), plain)


def test_demodulation_gives_unit_variance_whatever_the_style_scale():
    """Catches a missing or wrong demodulation: unit-variance inputs give ~unit-variance outputs per channel,
    and multiplying the styles by 10 leaves the output unchanged."""
    torch.manual_seed(1)
    x, weight = torch.randn(8, 16, 32, 32), torch.randn(12, 16, 3, 3)
    styles = torch.rand(8, 16) * 2 + 0.2
    out = modulated_conv2d(x, weight, styles)
    interior = out[:, :, 1:-1, 1:-1]  # zero padding lowers the border's variance
    variance = interior.transpose(0, 1).flatten(1).var(dim=1)  # (O,)
    assert ((variance - 1).abs() < 0.1).all(), variance
    torch.testing.assert_close(modulated_conv2d(x, weight, styles * 10), out, rtol=1e-4, atol=1e-5)
    plain = modulated_conv2d(x, weight, styles, demodulate=False)
    louder = modulated_conv2d(x, weight, styles * 10, demodulate=False)
    assert abs(float(louder.norm() / plain.norm()) - 10) < 1e-3  # without demodulation the scale does pass through


def test_hashed_normal_statistics():
    """Catches a biased or badly mixed hash: mean ~0, std ~1 and normal tails over 1e5 values; distinct seeds,
    adjacent seeds, distinct streams and neighbouring indices are uncorrelated."""
    seeds = torch.tensor([0, 1, 2**40 + 7, -5])
    values = hashed_normal(seeds, 0, (100_000,))  # (4, 1e5)
    assert values.dtype == torch.float32 and values.shape == (4, 100_000)
    for row in values:
        assert abs(float(row.mean())) < 0.01 and abs(float(row.std()) - 1) < 0.01
        assert abs(float((row.abs() < 1).float().mean()) - 0.6827) < 0.005
        assert abs(corr(row[1:], row[:-1])) < 0.02
    for i in range(4):
        for j in range(i + 1, 4):
            assert abs(corr(values[i], values[j])) < 0.02
    other_stream = hashed_normal(seeds, 1, (100_000,))
    for i in range(4):
        assert abs(corr(values[i], other_stream[i])) < 0.02
    uniforms = hashed_uniform(seeds, 3, (100_000,))
    assert uniforms.min() > 0 and uniforms.max() < 1 and abs(float(uniforms.mean()) - 0.5) < 0.01


def test_hashed_normal_is_deterministic_and_per_row():
    """Catches hashing that depends on call order or on other rows (batch position)."""
    seeds = latent_seed(torch.randn(5, IN_DIM))
    assert len(set(seeds.tolist())) == 5
    values = hashed_normal(seeds, 2, (3, 4, 5))
    assert values.shape == (5, 3, 4, 5)
    assert torch.equal(values, hashed_normal(seeds, 2, (3, 4, 5)))
    assert torch.equal(hashed_normal(seeds[3:4], 2, (3, 4, 5))[0], values[3])
    assert torch.equal(hashed_normal(seeds.flip(0), 2, (3, 4, 5)), values.flip(0))
    z = torch.randn(4, IN_DIM)
    assert torch.equal(latent_seed(z)[2:3], latent_seed(z[2:3]))


def test_minibatch_std_couples_rows_of_a_group_only():
    """Catches a missing mbstd layer (rows of a group must influence each other), groups that are not consecutive
    rows of the largest divisor size, and mbstd_group=1 not disabling it (rows must then be independent)."""
    torch.manual_seed(0)
    shape = (3, 16, 16)
    x = torch.randn(6, *shape)
    changed = x.clone()
    changed[1] = torch.randn(shape)
    changed[4] = torch.randn(shape)
    coupled = StyleGAN2Discriminator(shape, mbstd_group=4, **TINY)  # B=6 -> groups of 3: rows 0-2, 3-5
    with torch.no_grad():
        before, after = coupled(x), coupled(changed)
    assert (before[0] - after[0]).abs().max() > 1e-5
    assert (before[3] - after[3]).abs().max() > 1e-5
    with torch.no_grad():
        just_row_3 = x.clone()
        just_row_3[3] = changed[3] + 1
        torch.testing.assert_close(coupled(just_row_3)[:3], before[:3], atol=1e-6, rtol=0)
    single = StyleGAN2Discriminator(shape, mbstd_group=1, **TINY)
    with torch.no_grad():
        torch.testing.assert_close(single(changed)[0], single(x)[0], atol=1e-6, rtol=0)


def test_gradients_reach_every_parameter_and_double_backward_works():
    """Catches unused parameters (DDP would fail; e.g. a dead ToRGB or noise strength) and ops without double
    backward (R1 penalty needs d/dx of D with create_graph=True)."""
    gen = make_generator(shape=(3, 24, 40), style_mixing=0.9).train()
    disc = StyleGAN2Discriminator((3, 24, 40), **TINY)
    disc(gen(torch.randn(4, IN_DIM))).sum().backward()
    for net in (gen, disc):
        for name, param in net.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    disc.zero_grad()
    real = torch.randn(4, 3, 24, 40, requires_grad=True)
    (grad,) = torch.autograd.grad(disc(real).sum(), real, create_graph=True)
    grad.square().sum().backward()
    for name, param in disc.named_parameters():
        # biases only move leaky-ReLU kinks, so d(R1)/d bias is 0 almost surely (and None for the last one)
        if name.endswith("weight"):
            assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name
