"""SNGAN/BigGAN-style residual networks (gendist.nets.resnet): shapes for any image size, per-sample
independence, self-attention, spectral norm applied from outside, orthogonal init, no unused parameters."""
import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from gendist.errors import UserError
from gendist.nets.norm import PerSampleNorm
from gendist.nets.resnet import ResNetDecoder, ResNetEncoder, SelfAttention

SHAPES = [(1, 28, 28), (3, 32, 32), (3, 64, 64), (1, 24, 40), (3, 8, 8), (1, 9, 13), (3, 17, 8)]  # odd sides floor


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state, so failures reproduce."""
    torch.manual_seed(0)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("out_dim", [1, 16])
def test_encoder_output_shape_for_any_size(shape, out_dim):
    """Catches a down path that mis-sizes odd/non-square maps or a head sized for the wrong width."""
    encoder = ResNetEncoder(shape, out_dim, channels=8)
    assert encoder(torch.rand(2, *shape)).shape == (2, out_dim)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_decoder_output_shape_is_exact_for_any_size(shape):
    """Catches upsampling by 2 instead of to the plan's exact size (odd sides such as 7 -> 14 -> 28 or 6x10)."""
    decoder = ResNetDecoder(5, shape, channels=8)
    assert decoder(torch.randn(2, 5)).shape == (2, *shape)


def _row_is_independent(net: nn.Module, batch: torch.Tensor) -> None:
    """Row 0's output must not change when the other rows of the batch change."""
    other = batch.clone()
    other[1:] = torch.randn_like(other[1:]) * 3
    with torch.no_grad():
        first, second = net(batch), net(other)
    assert torch.allclose(first[0], second[0], atol=1e-6), (first[0] - second[0]).abs().max()


@pytest.mark.parametrize("attention", [0, 8])
def test_outputs_are_per_sample(attention):
    """Catches a batch-coupled normalization (BatchNorm) or attention mixing samples: rank splits would change
    results."""
    _row_is_independent(ResNetEncoder((3, 32, 32), 4, channels=8, attention=attention), torch.rand(4, 3, 32, 32))
    decoder = ResNetDecoder(6, (3, 32, 32), channels=8, attention=attention)
    _row_is_independent(decoder.train(), torch.randn(4, 6))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in decoder.modules())
    assert any(isinstance(m, PerSampleNorm) for m in decoder.modules())


@pytest.mark.parametrize("net_class", ["encoder", "decoder"])
def test_attention_is_added_and_starts_as_identity(net_class):
    """Catches attention silently not inserted or at the wrong level, gamma not starting at 0 (the SAGAN block
    must begin as the identity), and a gamma that has no effect on the output."""
    if net_class == "encoder":
        build, inputs = (lambda a: ResNetEncoder((3, 32, 32), 3, channels=8, attention=a)), torch.rand(2, 3, 32, 32)
    else:
        build, inputs = (lambda a: ResNetDecoder(4, (3, 32, 32), channels=8, attention=a)), torch.randn(2, 4)
    net = build(16)
    assert not any("attention" in name for name, _ in build(0).named_parameters())
    attention_names = [name for name, _ in net.named_parameters() if "attention" in name]
    assert {name.split(".")[-2 if name.endswith("weight") else -1] for name in attention_names} == {
        "query", "key", "value", "output", "gamma"}
    attention = net.blocks.attention
    assert isinstance(attention, SelfAttention) and attention.gamma.item() == 0.0
    bypassed = copy.deepcopy(net)
    bypassed.blocks.attention = nn.Identity()  # same weights, attention bypassed
    with torch.no_grad():
        out = net(inputs)
        assert torch.equal(out, bypassed(inputs))
        attention.gamma.fill_(1.0)
        assert not torch.allclose(net(inputs), out)
    assert net(inputs).shape == bypassed(inputs).shape
    order = ["down0", "attention", "down1", "down2"] if net_class == "encoder" else ["up2", "up1", "attention", "up0"]
    assert list(net.blocks._modules) == order  # right after the 16x16 map


@pytest.mark.parametrize("attention", [12, 32, 2])
def test_attention_at_no_feature_map_is_refused(attention):
    """Catches a silently ignored `resnet.attention` value (32 is the raw image for 32x32: refused too)."""
    for build in (lambda: ResNetEncoder((3, 32, 32), 1, channels=8, attention=attention),
                  lambda: ResNetDecoder(4, (3, 32, 32), channels=8, attention=attention)):
        with pytest.raises(UserError, match=f"resnet.attention={attention} .*4, 8, 16"):
            build()


def _apply_spectral_norm(net: nn.Module) -> nn.Module:
    """What the framework does from outside: spectral norm on every Conv2d/Linear."""
    for module in list(net.modules()):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            spectral_norm(module)
    return net


def test_spectral_norm_from_outside_works():
    """Catches layers that break under the SN parametrization (shared modules, weights cached in __init__) and
    SN not bounding the convolutions' largest singular value by ~1."""
    encoder = _apply_spectral_norm(ResNetEncoder((3, 16, 24), 2, channels=8, attention=12)).train()
    convs = [m for m in encoder.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert convs and all(hasattr(m, "parametrizations") for m in convs)
    inputs = torch.rand(3, 3, 16, 24)
    encoder(inputs).sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())
    with torch.no_grad():
        for module in convs:  # orthogonal init alone already has sigma = 1: make the raw weights 3x too large
            module.parametrizations.weight.original.mul_(3.0)
        for _ in range(30):
            encoder(inputs)
    encoder.eval()
    with torch.no_grad():
        for module in convs:
            weight = module.weight  # the normalized weight
            sigma = torch.linalg.matrix_norm(weight.reshape(weight.shape[0], -1), ord=2)
            assert abs(sigma.item() - 1) < 0.05, (module, sigma)


def test_init_is_orthogonal_with_zero_biases():
    """Catches the default (Kaiming-uniform) init left in place instead of BigGAN's orthogonal init."""
    encoder = ResNetEncoder((3, 32, 32), 16, channels=8)
    weight = encoder.head.weight  # (16, 32): out <= in
    assert weight.shape[0] <= weight.shape[1]
    assert torch.allclose(weight @ weight.T, torch.eye(weight.shape[0]), atol=1e-4)
    decoder = ResNetDecoder(4, (1, 28, 28), channels=8)
    weight = decoder.project.weight  # (out, 4): out > in, so the columns are orthonormal
    assert torch.allclose(weight.T @ weight, torch.eye(4), atol=1e-4)
    biases = [m.bias for net in (encoder, decoder) for m in net.modules()
              if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None]
    assert biases and all(torch.count_nonzero(b) == 0 for b in biases)


@pytest.mark.parametrize("shape", [(1, 24, 40), (3, 8, 8)], ids=str)
def test_every_parameter_gets_a_gradient(shape):
    """Catches unused parameters (DDP errors with find_unused_parameters=False), e.g. a shortcut conv built
    but bypassed, or attention modules outside the forward path."""
    attention = 20 if shape[1:] == (24, 40) else 4
    encoder = ResNetEncoder(shape, 3, channels=8, attention=attention, activation=nn.SiLU)
    decoder = ResNetDecoder(5, shape, channels=8, attention=attention, activation=nn.SiLU)
    (encoder(decoder(torch.randn(2, 5))).square().sum()).backward()
    for name, parameter in [*encoder.named_parameters(), *decoder.named_parameters()]:
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert any(isinstance(m, nn.SiLU) for m in encoder.modules())
    assert not any(isinstance(m, nn.ReLU) for m in [*encoder.modules(), *decoder.modules()])
