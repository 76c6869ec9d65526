"""Images of any size: conv networks for H x W >= 8 and 1 or 3 channels. (Training every image architecture
and family on a user's npz of several shapes through the CLI: tests/test_architectures.py.)"""
import pytest
import torch

from gendist.errors import UserError
from gendist.nets import ConvDecoder, ConvEncoder
from gendist.nets.conv import feature_sizes

SHAPES = [(1, 28, 28), (3, 32, 32), (1, 24, 40)]


@pytest.mark.parametrize("shape", [(1, 8, 8), *SHAPES, (3, 64, 64), (1, 9, 13), (3, 17, 8)], ids=str)
def test_conv_networks_take_any_size_and_channels(shape):
    encoder, decoder = ConvEncoder(shape[0], shape[1:], 5, 8), ConvDecoder(7, shape[0], shape[1:], 8)
    x = torch.rand(3, *shape)
    assert encoder(x).shape == (3, 5)
    assert decoder(torch.randn(3, 7)).shape == (3, *shape)
    assert min(feature_sizes(shape[1:])[-1]) >= 4


def test_power_of_two_squares_keep_the_4x4_bottleneck_and_small_images_are_refused():
    assert feature_sizes((32, 32)) == [(32, 32), (16, 16), (8, 8), (4, 4)]
    assert feature_sizes((8, 8)) == [(8, 8), (4, 4)]
    with pytest.raises(UserError, match="at least 8x8 pixels .got 7x20."):
        feature_sizes((7, 20))
