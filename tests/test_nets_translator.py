"""The image translator (gendist.nets.translator, CycleGAN's fully convolutional generator) that every image
architecture builds for the `translator` role: exact output sizes, pixels kept in place, per-sample
independence, zero start, and the refusal of domains of different sizes."""
import pytest
import torch
from torch import nn

from gendist.config import load_config
from gendist.errors import UserError
from gendist.nets.registry import RoleSpec, build_network
from gendist.nets.translator import ImageTranslator, translator_sizes


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state, so failures reproduce."""
    torch.manual_seed(0)


@pytest.mark.parametrize("c_in, c_out, size", [(1, 1, (8, 8)), (1, 1, (28, 28)), (3, 1, (32, 32)), (1, 3, (7, 9)),
                                               (3, 3, (17, 10)), (3, 3, (64, 64)), (1, 1, (65, 70)),
                                               (1, 1, (129, 131))], ids=str)
def test_output_has_the_input_size_and_the_output_channels(c_in, c_out, size):
    """Catches upsampling by 2 instead of to the recorded size (28 -> 14 -> 7 -> 14 -> 28, odd and non-square
    sides) and a head with the input's channels instead of domain B's."""
    net = ImageTranslator(c_in, c_out, size, width=8, blocks=2)
    assert net(torch.rand(2, c_in, *size)).shape == (2, c_out, *size)


def test_downsampling_plan():
    """Catches more than cyclegan.downsample stride-2 convolutions, or a side pushed below 32 pixels: small
    images (8x8 digits -> 4x4) translated through a coarse map were redrawn as other digits (RESULTS.md)."""
    assert translator_sizes(8, 8) == [(8, 8)] and translator_sizes(28, 28) == [(28, 28)]
    assert translator_sizes(63, 200) == [(63, 200)]
    assert translator_sizes(64, 64) == [(64, 64), (32, 32)]
    assert translator_sizes(256, 256) == [(256, 256), (128, 128), (64, 64)]
    assert translator_sizes(256, 256, downsample=1) == [(256, 256), (128, 128)]
    assert translator_sizes(129, 131, downsample=4) == [(129, 131), (65, 66), (33, 33)]


def test_receptive_field():
    """Catches a receptive field that ignores the blocks or the downsampling (the start-up line reports it)."""
    assert ImageTranslator(1, 1, (8, 8), width=4, blocks=0).receptive_field() == 5
    assert ImageTranslator(1, 1, (8, 8), width=4, blocks=1).receptive_field() == 9
    assert ImageTranslator(1, 1, (64, 64), width=4, blocks=1).receptive_field() == 3 + 2 + 8 + 2 + 2


def test_a_pixel_changes_only_its_neighbourhood():
    """Catches a translator through a global code (a fully connected bottleneck, the old encoder -> vector ->
    decoder): changing one corner pixel must leave the far corner of the output exactly as it was."""
    net = ImageTranslator(1, 1, (28, 28), width=8, blocks=1).eval()
    x = torch.rand(1, 1, 28, 28)
    moved = x.clone()
    moved[0, 0, 0, 0] = 1 - moved[0, 0, 0, 0]
    with torch.no_grad():
        # GroupNorm's per-sample statistics couple all pixels weakly; the far corner's change is that alone
        delta = (net(x) - net(moved)).abs()[0, 0]
    assert delta[:4, :4].max() > 10 * delta[-4:, -4:].max()
    assert not any(isinstance(m, nn.Linear) for m in net.modules())


def test_outputs_are_per_sample():
    """Catches a batch-coupled normalization (BatchNorm): a translation would depend on the other rows, and 2
    ranks x b would differ from 1 x 2b."""
    net = ImageTranslator(3, 3, (16, 16), width=8, blocks=2).train()
    batch = torch.rand(4, 3, 16, 16)
    other = batch.clone()
    other[1:] = torch.rand_like(other[1:])
    with torch.no_grad():
        first, second = net(batch), net(other)
    assert torch.allclose(first[0], second[0], atol=1e-6), (first[0] - second[0]).abs().max()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def _config(arch: str, *overrides: str):
    return load_config("configs/cyclegan_digits_inverted.yaml", [f"model.arch={arch}", "model.hidden=8", *overrides])


@pytest.mark.parametrize("arch", ["conv", "resnet", "stylegan2"])
def test_every_image_architecture_builds_the_translator(arch):
    """Catches an image architecture that builds its own translator through a bottleneck (or none), or that
    ignores cyclegan.generator_depth; zero_start (cyclegan.align=dihedral) must start at exactly zero."""
    config = _config(arch, "cyclegan.generator_depth=2")
    net = build_network(config, RoleSpec("translator", "g_ab", (1, 28, 28), (3, 28, 28), images=True))
    assert isinstance(net, ImageTranslator) and len(net.blocks) == 2 and len(net.down) == 0
    large = build_network(_config(arch, "cyclegan.downsample=1"), RoleSpec("translator", "g", (3, 64, 64), (3, 64, 64), True))
    assert len(large.down) == 1
    zero = build_network(config, RoleSpec("translator", "g_ab", (1, 8, 8), (1, 8, 8), images=True, zero_start=True))
    assert torch.equal(zero(torch.rand(3, 1, 8, 8)), torch.zeros(3, 1, 8, 8))
    assert len(_config(arch, "model.depth=4").model.networks) == 0
    default = build_network(_config(arch, "model.depth=4"), RoleSpec("translator", "g", (1, 8, 8), (1, 8, 8), True))
    assert len(default.blocks) == 4  # generator_depth=-1: model.depth


def test_domains_of_different_sizes_are_refused_in_one_line():
    """Catches a silent resize (or a crash deep in a convolution) when A and B have different image sizes."""
    with pytest.raises(UserError, match=r"one height and width.*data.resize.*model.arch=mlp"):
        build_network(_config("conv"), RoleSpec("translator", "g_ab", (1, 8, 8), (1, 16, 16), images=True))
