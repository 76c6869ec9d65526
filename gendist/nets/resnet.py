"""SNGAN/BigGAN-style residual encoder (also the discriminator) and decoder (also the generator), for images of
any size H x W >= 8 x 8 and any number of channels (Miyato et al. 2018; Brock et al. 2019; compare
PyTorch-StudioGAN's `models/resnet.py`).

Both walk the spatial plan of `gendist.nets.conv.feature_sizes`: the encoder halves each side per level with
average pooling (a side s becomes floor(s / 2)), the decoder upsamples to the exact next size of the plan, so
odd and non-square sides come out exact. Channels are `channels * 2**level`, capped at 8x.

Choices worth knowing:
- No batch-coupled normalization: the encoder has none (SNGAN's discriminator), the decoder uses GroupNorm,
  which normalizes each sample on its own, so results do not depend on how a batch is split over ranks.
- No spectral norm here: the framework applies `torch.nn.utils.parametrizations.spectral_norm` to every
  Conv2d/Linear from outside; every layer is its own module, so that works.
- Self-attention (SAGAN) is plain softmax attention over all positions with matmuls: no max-pooling (which
  needs even sides) and no fused attention kernel (flash kernels have no double backward, which gradient
  penalties such as R1 or WGAN-GP need).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from gendist.errors import UserError
from gendist.nets.conv import feature_sizes
from gendist.nets.norm import PerSampleNorm
from gendist.nets.registry import ImageArchitecture

MAX_WIDTH_FACTOR = 8
CLASS_EMBEDDING = 128  # width of the conditional generator's shared class embedding (BigGAN: 128)
Activation = Callable[[], nn.Module]


def level_width(channels: int, level: int) -> int:
    """Channels of the feature map after the encoder's block `level` (0 = the first down block)."""
    return channels * min(2 ** level, MAX_WIDTH_FACTOR)


def attention_level(sizes: list[tuple[int, int]], attention: int) -> int | None:
    """Index k >= 1 in `sizes` of the feature map whose larger side equals `attention`, None when it is 0.

    The full-resolution map (k = 0) is excluded: in the encoder it is the raw image, and attention there costs
    (H W)^2 per sample. Sides strictly decrease, so at most one level matches."""
    if attention == 0:
        return None
    valid = {max(size): level for level, size in enumerate(sizes) if level >= 1}
    if attention not in valid:
        choices = ", ".join(str(side) for side in sorted(valid))
        raise UserError(f"resnet.attention={attention} matches no feature map of a {sizes[0][0]}x{sizes[0][1]} "
                        f"image; use 0 (off) or one of {choices} (the larger side of a feature map)")
    return valid[attention]


def init_orthogonal(module: nn.Module) -> None:
    """Orthogonal weights and zero biases for every Conv2d/Linear in `module` (BigGAN, StudioGAN)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.orthogonal_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A size-preserving 3x3 convolution."""
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


class SelfAttention(nn.Module):
    """SAGAN self-attention (Zhang et al. 2019): x + gamma * out(softmax(q^T k) v), gamma starting at 0 so the
    block begins as the identity and the network learns how much non-local evidence to mix in."""

    def __init__(self, channels: int):
        super().__init__()
        inner, value = max(channels // 8, 1), max(channels // 2, 1)
        self.query = nn.Conv2d(channels, inner, 1, bias=False)
        self.key = nn.Conv2d(channels, inner, 1, bias=False)
        self.value = nn.Conv2d(channels, value, 1, bias=False)
        self.output = nn.Conv2d(value, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))  # 1-D: FSDP and DeepSpeed shard no scalars

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        query = rearrange(self.query(x), "b c h w -> b (h w) c")  # (B, N, c/8)
        key = rearrange(self.key(x), "b c h w -> b c (h w)")  # (B, c/8, N)
        value = rearrange(self.value(x), "b c h w -> b (h w) c")  # (B, N, c/2)
        weights = torch.softmax(query @ key, dim=-1)  # (B, N queries, N keys), unscaled as in SAGAN
        mixed = rearrange(weights @ value, "b (h w) c -> b c h w", h=height, w=width)  # (B, c/2, H, W)
        return x + self.gamma * self.output(mixed)


class OptimizedDownBlock(nn.Module):
    """SNGAN's first discriminator block: conv -> act -> conv -> avgpool, shortcut avgpool -> 1x1 conv. No
    activation before the first conv, which would clip the raw image."""

    def __init__(self, in_channels: int, out_channels: int, activation: Activation):
        super().__init__()
        self.residual = nn.Sequential(conv3x3(in_channels, out_channels), activation(),
                                      conv3x3(out_channels, out_channels))
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.residual(x), 2) + self.shortcut(F.avg_pool2d(x, 2))  # (B, out, H//2, W//2)


class DownBlock(nn.Module):
    """Pre-activation residual block that halves each side (flooring odd ones, as `feature_sizes` does):
    act -> conv -> act -> conv -> avgpool, shortcut (1x1 conv when channels change) -> avgpool."""

    def __init__(self, in_channels: int, out_channels: int, activation: Activation):
        super().__init__()
        self.residual = nn.Sequential(activation(), conv3x3(in_channels, out_channels), activation(),
                                      conv3x3(out_channels, out_channels))
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.residual(x) + self.shortcut(x), 2)  # (B, out, H//2, W//2)


class UpBlock(nn.Module):
    """BigGAN generator block to an exact size: norm -> act -> nearest upsample -> conv -> norm -> act -> conv,
    shortcut nearest upsample (-> 1x1 conv when channels change). Upsampling to `size` rather than by 2 makes
    odd sides exact."""

    def __init__(self, in_channels: int, out_channels: int, size: tuple[int, int], activation: Activation,
                 cond_dim: int = 0):
        super().__init__()
        self.size = size
        self.norm_in, self.act_in = PerSampleNorm(in_channels, cond_dim), activation()
        self.conv_in = conv3x3(in_channels, out_channels)
        self.residual = nn.Sequential(PerSampleNorm(out_channels, cond_dim), activation(),
                                      conv3x3(out_channels, out_channels))
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """c: the class embedding (B, cond_dim) of a conditional block, else None."""
        h = F.interpolate(self.act_in(self.norm_in(x, c)), size=self.size, mode="nearest")  # (B, in, *size)
        norm, act, conv = self.residual
        h = conv(act(norm(self.conv_in(h), c)))  # (B, out, *size)
        return h + self.shortcut(F.interpolate(x, size=self.size, mode="nearest"))


class ResNetEncoder(nn.Module):
    """(B, C, H, W) -> (B, out_dim): an optimized down block, one residual down block per further level,
    optional self-attention, then act -> global sum pooling (SNGAN) -> linear head."""

    def __init__(self, in_shape: tuple[int, int, int], out_dim: int, channels: int = 64, attention: int = 0,
                 activation: Callable[[], nn.Module] | None = None):
        super().__init__()
        activation = activation or nn.ReLU
        in_channels, height, width = (int(side) for side in in_shape)
        sizes = feature_sizes((height, width))
        attend = attention_level(sizes, attention)
        blocks: dict[str, nn.Module] = {}  # named, so parameter names say "down1", "attention", ...
        for level in range(len(sizes) - 1):  # block `level` maps sizes[level] -> sizes[level + 1]
            out_width = level_width(channels, level)
            if level == 0:
                blocks["down0"] = OptimizedDownBlock(in_channels, out_width, activation)
            else:
                blocks[f"down{level}"] = DownBlock(level_width(channels, level - 1), out_width, activation)
            if attend == level + 1:
                blocks["attention"] = SelfAttention(out_width)
        self.blocks = nn.Sequential(OrderedDict(blocks))
        self.final_activation = activation()
        self.head = nn.Linear(level_width(channels, len(sizes) - 2), out_dim)
        init_orthogonal(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.final_activation(self.blocks(x))  # (B, c_n, h_n, w_n)
        return self.head(h.sum(dim=(2, 3)))  # sum, not mean: the head sees the map's total evidence (SNGAN)


class ResNetDecoder(nn.Module):
    """(B, in_dim) -> (B, C, H, W), unbounded logits (the caller squashes them into the data's range): linear
    to the bottleneck, one up block per level (channels mirroring the encoder), optional self-attention, then
    norm -> act -> 3x3 conv to C channels.

    `num_classes` > 0: class-conditional, forward(z, y): a shared class embedding (BigGAN) sets the gain and bias
    of every normalization (`PerSampleNorm` with cond_dim)."""

    def __init__(self, in_dim: int, out_shape: tuple[int, int, int], channels: int = 64, attention: int = 0,
                 activation: Callable[[], nn.Module] | None = None, num_classes: int = 0):
        super().__init__()
        cond_dim = CLASS_EMBEDDING if num_classes else 0
        activation = activation or nn.ReLU
        out_channels, height, width = (int(side) for side in out_shape)
        sizes = feature_sizes((height, width))
        attend = attention_level(sizes, attention)
        bottom = len(sizes) - 1
        self.bottom = sizes[bottom]
        self.width = level_width(channels, bottom - 1)  # the encoder's width at the same map
        self.project = nn.Linear(in_dim, self.width * self.bottom[0] * self.bottom[1])
        blocks: dict[str, nn.Module] = {"attention": SelfAttention(self.width)} if attend == bottom else {}
        for level in reversed(range(bottom)):  # map sizes[level + 1] -> sizes[level]
            in_width, out_width = level_width(channels, level), level_width(channels, max(level - 1, 0))
            blocks[f"up{level}"] = UpBlock(in_width, out_width, sizes[level], activation, cond_dim)
            if attend == level:
                blocks["attention"] = SelfAttention(out_width)
        self.blocks = nn.Sequential(OrderedDict(blocks))
        self.output = nn.Sequential(PerSampleNorm(channels, cond_dim), activation(), conv3x3(channels, out_channels))
        self.embed = nn.Embedding(num_classes, cond_dim) if num_classes else None
        init_orthogonal(self)
        for module in self.modules():  # conditional gains and biases start near 1 and 0 (not orthogonal: O(1))
            if isinstance(module, PerSampleNorm) and module.gain is not None:
                nn.init.normal_(module.gain.weight, std=0.02)
                nn.init.normal_(module.bias.weight, std=0.02)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        c = self.embed(y).to(z.dtype) if self.embed is not None else None  # (B, cond_dim)
        h = rearrange(self.project(z), "b (c h w) -> b c h w", h=self.bottom[0], w=self.bottom[1])  # (B, c_n, h_n, w_n)
        for block in self.blocks:
            h = block(h, c) if isinstance(block, UpBlock) else block(h)
        norm, act, conv = self.output
        return conv(act(norm(h, c)))  # (B, C, H, W)


class ResNetArchitecture(ImageArchitecture):
    """model.arch=resnet: `ResNetEncoder` for discriminators and encoders, `ResNetDecoder` for generators and
    decoders, model.hidden base channels, a self-attention block at resnet.attention; spectral normalization
    on discriminators by default (model.spectral_norm=auto), as SNGAN and BigGAN."""

    name = "resnet"
    spectral_norm_roles = frozenset({"discriminator", "joint_discriminator"})

    def default_activation(self):
        return self.activation or nn.ReLU

    def encoder(self, in_shape, out_dim, spec):
        return ResNetEncoder(in_shape, out_dim, self.model.hidden, self.config.resnet.attention, self.activation)

    def decoder(self, in_dim, out_shape, spec):
        return ResNetDecoder(in_dim, out_shape, self.model.hidden, self.config.resnet.attention, self.activation,
                             spec.num_classes if spec.role in ("generator", "decoder") else 0)

    def build_conditional(self, spec):
        """Generators and decoders are conditioned natively (conditional normalization); the rest are wrapped."""
        if spec.role in ("generator", "decoder"):
            return self.build(spec)
        return super().build_conditional(spec)
