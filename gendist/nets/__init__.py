"""Plain nn.Modules: no distributed code, no losses."""
from gendist.nets.activations import ACTIVATIONS, hidden_activation
from gendist.nets.conv import ConvDecoder, ConvEncoder
from gendist.nets.gaussian import GaussianGenerator
from gendist.nets.mlp import MLP

__all__ = ["ACTIVATIONS", "MLP", "ConvDecoder", "ConvEncoder", "GaussianGenerator", "hidden_activation"]
