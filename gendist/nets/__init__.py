"""Plain nn.Modules: no distributed code, no losses."""
from gendist.nets.conv import ConvDecoder, ConvEncoder
from gendist.nets.gaussian import GaussianGenerator
from gendist.nets.mlp import MLP

__all__ = ["MLP", "ConvDecoder", "ConvEncoder", "GaussianGenerator"]
