"""StyleGAN2-style generator and residual discriminator (Karras et al. 2020, "Analyzing and Improving the Image
Quality of StyleGAN"), in plain torch so that it runs everywhere (no custom CUDA ops), for images of any size
H x W >= 8 x 8 (square or not, odd sides allowed) and any number of channels.

Differences from NVlabs/stylegan2-ada-pytorch, on purpose:
- Resampling uses `F.interpolate(mode="bilinear", align_corners=False)` (up) and `F.adaptive_avg_pool2d` (down)
  to the exact sizes of `gendist.nets.conv.feature_sizes`, instead of upfirdn2d FIR filters and strided/transposed
  convolutions; this is what allows non-power-of-two and odd sides. The discriminator pools before its 3x3 conv.
- Per-pixel noise is not drawn from the global RNG: it is a counter-based hash of the row's latent z (see
  `hashed_normal`), so a row's output depends only on its own row (not on the batch split over GPUs, nor on RNG
  state), and resuming is exact. Style mixing draws its second latent and crossover layer the same way.
- Minibatch-stddev groups are consecutive rows of the batch the module is given (see `MinibatchStd`).
- No truncation / w_avg tracking, no conditioning, no fp16 clamping.
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from gendist.nets.conv import feature_sizes
from gendist.nets.registry import ImageArchitecture, ZeroStart

MASK32 = 0xFFFFFFFF
STREAM_MIX_Z = 1 << 20  # hash stream of the style-mixing second latent (noise layers use streams 0, 1, ...)
STREAM_MIX_CUT = (1 << 20) + 1  # hash stream of the mixing decision and crossover layer
NOISE_MODES = ("hashed", "none")


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """Bijective 32-bit integer mixer (lowbias32, C. Wellons) on int64 tensors holding values in [0, 2**32).
    int64 products may wrap, but their low 32 bits, which are all we keep, are exact."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def latent_seed(z: torch.Tensor) -> torch.Tensor:
    """(B, ...) latents -> (B,) int64 seeds: a 64-bit hash of each row's float32 bit pattern (each element's bits are
    mixed with its position, then summed mod 2**32, twice with different salts for the low and high halves)."""
    bits = rearrange(z.detach().float().contiguous(), "b ... -> b (...)").contiguous().view(torch.int32)
    bits = bits.to(torch.int64) & MASK32  # (B, D) in [0, 2**32)
    position = torch.arange(bits.shape[1], device=z.device, dtype=torch.int64)
    low = _mix32(bits ^ _mix32(position ^ 0x68E31DA4)).sum(dim=1) & MASK32  # (B,)
    high = _mix32(bits ^ _mix32(position ^ 0x1B56C4E9)).sum(dim=1) & MASK32  # (B,)
    return (high << 32) | low


def _hash_bits(seed: torch.Tensor, stream: int, count: int) -> torch.Tensor:
    """(B,) int64 seeds -> (B, count) pseudo-random 32-bit values in int64, a pure function of (seed, stream, index).
    Two keys per (row, stream) are injected so that rows' sequences never overlap as shifted copies."""
    seed = seed.to(torch.int64)
    low, high = seed & MASK32, (seed >> 32) & MASK32
    stream_key = _mix32(torch.tensor((stream * 0x9E3779B9 + 0x7F4A7C15) & MASK32, device=seed.device))
    key1 = _mix32(low ^ _mix32(high ^ stream_key))  # (B,)
    key2 = _mix32(key1 ^ 0x5BD1E995)  # (B,), a bijection of key1, so distinct key1 give distinct key2
    counter = torch.arange(count, device=seed.device, dtype=torch.int64)  # (count,)
    return _mix32(_mix32(counter[None] ^ key1[:, None]) ^ key2[:, None])  # (B, count)


def hashed_uniform(seed: torch.Tensor, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """(B,) int64 seeds -> (B, *shape) float32 uniforms in (0, 1) (24-bit resolution, exact in float32)."""
    count = math.prod(shape)
    bits = _hash_bits(seed, stream, count) >> 8  # (B, count) in [0, 2**24)
    return ((bits.float() + 0.5) * 2.0 ** -24).reshape(seed.shape[0], *shape)


def hashed_normal(seed: torch.Tensor, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """(B,) int64 seeds -> (B, *shape) float32 standard normals, deterministic per (row seed, stream, index): no
    global RNG, and a row's values never depend on other rows. Box-Muller on two hashed uniforms per value."""
    count = math.prod(shape)
    uniforms = rearrange(hashed_uniform(seed, stream, (2 * count,)), "b (n two) -> two b n", two=2)
    radius = torch.sqrt(-2.0 * torch.log(uniforms[0]))
    return (radius * torch.cos(2.0 * math.pi * uniforms[1])).reshape(seed.shape[0], *shape)


ACTIVATION_FUNCTIONS = {"leaky_relu": lambda x: F.leaky_relu(x, 0.2), "relu": F.relu, "silu": F.silu, "gelu": F.gelu,
                        "elu": F.elu, "softplus": F.softplus, "tanh": torch.tanh}


def activate(x: torch.Tensor, name: str) -> torch.Tensor:
    """StyleGAN2's nonlinearity: leaky ReLU(0.2) (or model.activation's) times sqrt(2), which keeps the variance."""
    return ACTIVATION_FUNCTIONS[name](x) * math.sqrt(2.0)


def set_activation(network: nn.Module, name: str) -> None:
    """Every layer of `network` that activates uses `name` ("auto": leaky_relu)."""
    for module in network.modules():
        if hasattr(module, "activation"):
            module.activation = "leaky_relu" if name == "auto" else name


class EqualLinear(nn.Module):
    """Fully connected layer with equalized learning rate: the weight is stored as N(0, 1) / lr_mul and scaled by
    lr_mul / sqrt(fan_in) at run time (so every layer learns at the same speed under Adam); bias * lr_mul."""

    def __init__(self, in_dim: int, out_dim: int, lr_mul: float = 1.0, bias_init: float = 0.0, activate: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.weight_gain, self.bias_gain, self.activate = lr_mul / math.sqrt(in_dim), lr_mul, activate
        self.activation = "leaky_relu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        return activate(x, self.activation) if self.activate else x


class ConvLayer(nn.Module):
    """k x k convolution with equalized learning rate, optional bias, leaky ReLU(0.2) * sqrt(2) * gain (the gain
    keeps the residual sum's variance; StyleGAN2 applies it after the activation)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, bias: bool = True, activate: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.weight_gain, self.activate = 1.0 / math.sqrt(in_ch * kernel * kernel), activate
        self.activation = "leaky_relu"

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        x = F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.weight.shape[-1] // 2)
        return (activate(x, self.activation) if self.activate else x) * gain


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                     demodulate: bool = True) -> torch.Tensor:
    """Per-sample modulated convolution (StyleGAN2-ADA's exact `fused_modconv=False` path): scale the input channels
    by the styles, convolve with the shared weight, then (demodulate) divide each output channel by the norm of the
    effective per-sample weight, which restores unit output variance whatever the style scale.
    x (B, I, H, W), weight (O, I, k, k), styles (B, I) -> (B, O, H, W)."""
    x = F.conv2d(x * rearrange(styles, "b i -> b i 1 1"), weight, padding=weight.shape[-1] // 2)
    if demodulate:
        effective = weight[None] * rearrange(styles, "b i -> b 1 i 1 1")  # (B, O, I, k, k)
        x = x * rearrange((effective.square().sum(dim=(2, 3, 4)) + 1e-8).rsqrt(), "b o -> b o 1 1")
    return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (style affine from w, demodulation), optional bilinear upsampling to `size` first,
    per-pixel noise with a learned strength (initialized 0), bias, leaky ReLU(0.2) * sqrt(2)."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, size: tuple[int, int], upsample: bool):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_ch, bias_init=1.0)  # styles start at 1
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, 3, 3))  # demodulation makes a weight gain moot
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.noise_strength = nn.Parameter(torch.zeros(1))  # 1-D: FSDP and DeepSpeed shard no scalars
        self.size, self.upsample = size, upsample
        self.activation = "leaky_relu"

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        if self.upsample:  # scaling channels commutes with interpolation, so this equals upsampling inside the conv
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        x = modulated_conv2d(x, self.weight, self.affine(w), demodulate=True)
        if noise is not None:  # (B, 1, H, W), shared by all channels
            x = x + noise.to(x.dtype) * self.noise_strength
        return activate(x + rearrange(self.bias, "o -> 1 o 1 1"), self.activation)


class ToRGB(nn.Module):
    """Modulated 1x1 conv to image channels, without demodulation (styles scaled by 1/sqrt(fan_in)), plus bias."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_ch, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.weight_gain = 1.0 / math.sqrt(in_ch)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = modulated_conv2d(x, self.weight, self.affine(w) * self.weight_gain, demodulate=False)
        return x + rearrange(self.bias, "o -> 1 o 1 1")


class StyleGAN2Generator(nn.Module):
    """(B, in_dim) latent z -> (B, C, H, W) unbounded image logits (the caller squashes).

    Mapping network (2nd-moment normalized z, `mapping_layers` equalized-lr FC layers with lr multiplier 0.01) to w;
    synthesis from a learned constant at the smallest size of `feature_sizes((H, W))` (one modulated conv there, two
    per larger level, the first after bilinear upsampling to the exact next size) with a skip-output architecture:
    a ToRGB per level, the running image upsampled and summed. Channels at level i (0 = full size) are
    min(channels * 2**i, max_channels). Style i feeds conv layer i, and ToRGB of a level shares the style of the next
    level's first conv, as in StyleGAN2, so num_ws = number of convs + 1.

    `noise_mode`: "hashed" (default; per-pixel noise hashed from the row's z, see `hashed_normal`) or "none" (zero
    noise). `style_mixing` p: in train mode, each row with probability p takes the styles of a second latent from a
    hashed crossover layer on; both are derived from the row's hash, so rows stay independent and deterministic.

    `num_classes` > 0: class-conditional, forward(z, y) (StyleGAN2-ADA's conditioning): a class embedding of
    w_dim, normalized to unit 2nd moment like z, is concatenated to z at the mapping network's input.
    """

    def __init__(self, in_dim: int, out_shape: tuple[int, int, int], channels: int = 64, max_channels: int = 256,
                 w_dim: int = 128, mapping_layers: int = 4, style_mixing: float = 0.0, num_classes: int = 0):
        super().__init__()
        out_ch, height, width = (int(side) for side in out_shape)
        self.in_dim, self.w_dim, self.style_mixing, self.noise_mode = in_dim, w_dim, float(style_mixing), "hashed"
        self.sizes = feature_sizes((height, width))
        widths = [min(channels * 2 ** level, max_channels) for level in range(len(self.sizes))]
        self.embed = nn.Embedding(num_classes, w_dim) if num_classes else None
        first = in_dim + (w_dim if num_classes else 0)
        self.mapping_net = nn.Sequential(*[EqualLinear(first if i == 0 else w_dim, w_dim, lr_mul=0.01, activate=True)
                                           for i in range(mapping_layers)])
        bottom = len(self.sizes) - 1
        self.const = nn.Parameter(torch.randn(widths[bottom], *self.sizes[bottom]))
        convs = [SynthesisLayer(widths[bottom], widths[bottom], w_dim, self.sizes[bottom], upsample=False)]
        torgbs = [ToRGB(widths[bottom], out_ch, w_dim)]
        for level in reversed(range(bottom)):
            convs += [SynthesisLayer(widths[level + 1], widths[level], w_dim, self.sizes[level], upsample=True),
                      SynthesisLayer(widths[level], widths[level], w_dim, self.sizes[level], upsample=False)]
            torgbs.append(ToRGB(widths[level], out_ch, w_dim))
        self.convs, self.torgbs = nn.ModuleList(convs), nn.ModuleList(torgbs)
        self.num_ws = len(convs) + 1
        # running mean of the path lengths (the path-length regularizer's target), saved with the network
        self.register_buffer("pl_mean", torch.zeros(1))

    def mapping(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """(B, in_dim) [, labels (B,)] -> (B, w_dim): normalize z (and the class embedding) to unit 2nd moment,
        then the equalized-lr FC stack."""
        z = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
        if self.embed is not None:
            e = self.embed(y).to(z.dtype)  # (B, w_dim)
            z = torch.cat([z, e * (e.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()], dim=1)
        return self.mapping_net(z)

    def _noise(self, seed: torch.Tensor, layer: int, size: tuple[int, int]) -> torch.Tensor | None:
        """(B, 1, h, w) per-pixel noise of conv layer `layer` (hash stream = layer index), or None if disabled."""
        if self.noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {self.noise_mode!r}")
        return hashed_normal(seed, layer, (1, *size)) if self.noise_mode == "hashed" else None

    def synthesis(self, ws: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """ws (B, num_ws, w_dim), z (B, in_dim) used only to seed the noise -> (B, C, H, W) image logits."""
        seed = latent_seed(z)  # (B,)
        x = repeat(self.const, "c h w -> b c h w", b=ws.shape[0])
        x = self.convs[0](x, ws[:, 0], self._noise(seed, 0, self.sizes[-1]))
        image = self.torgbs[0](x, ws[:, 1])
        for level, torgb in enumerate(self.torgbs[1:]):
            first = 1 + 2 * level  # conv / style index of this level's first (upsampling) conv
            for index in (first, first + 1):
                conv = self.convs[index]
                x = conv(x, ws[:, index], self._noise(seed, index, conv.size))
            size = self.convs[first].size
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False) + torgb(x, ws[:, first + 2])
        return image

    def _mix_styles(self, ws: torch.Tensor, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Style mixing (train mode): a row mixes with probability p; its second latent and crossover layer in
        [1, num_ws - 1] come from its own hash, so this is deterministic and per row."""
        seed = latent_seed(z)  # (B,)
        second = self.mapping(hashed_normal(seed, STREAM_MIX_Z, (self.in_dim,)).to(z.dtype), y)  # (B, w_dim), same class
        draws = hashed_uniform(seed, STREAM_MIX_CUT, (2,))  # (B, 2): mix or not, crossover layer
        cutoff = 1 + (draws[:, 1] * (self.num_ws - 1)).long().clamp(max=self.num_ws - 2)  # (B,) in [1, num_ws - 1]
        cutoff = torch.where(draws[:, 0] < self.style_mixing, cutoff, torch.full_like(cutoff, self.num_ws))
        take_second = torch.arange(self.num_ws, device=z.device)[None] >= cutoff[:, None]  # (B, num_ws)
        return torch.where(take_second[..., None], second[:, None], ws)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        ws = repeat(self.mapping(z, y), "b d -> b n d", n=self.num_ws)  # (B, num_ws, w_dim)
        if self.training and self.style_mixing > 0:
            ws = self._mix_styles(ws, z, y)
        return self.synthesis(ws, z)


class MinibatchStd(nn.Module):
    """Appends one channel: the standard deviation of the features over groups of G consecutive rows, averaged over
    channels and pixels (StyleGAN's minibatch standard deviation, which lets D see sample diversity).

    G is the largest divisor of the batch size that is <= `group`. Groups are formed within the batch this module
    is given, i.e. within each rank's micro-batch, so the output depends on how the global batch is split (and on
    row order) unless the layer is disabled; `group` <= 1 disables it (the discriminator then omits the channel).
    """

    def __init__(self, group: int):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        size = max(d for d in range(1, min(self.group, batch) + 1) if batch % d == 0)
        y = rearrange(x.float(), "(n g) c h w -> n g c h w", g=size)
        y = (y.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (n,)
        y = repeat(y.to(x.dtype), "n -> (n g) 1 h w", g=size, h=x.shape[2], w=x.shape[3])
        return torch.cat([x, y], dim=1)  # (B, C + 1, H, W)


class DiscriminatorBlock(nn.Module):
    """Residual block from `size` to the next smaller size: conv3x3, average-pool to `out_size`, conv3x3; skip =
    pool + 1x1 conv without bias; both branches scaled by 1/sqrt(2) so the sum keeps unit variance."""

    def __init__(self, in_ch: int, out_ch: int, out_size: tuple[int, int]):
        super().__init__()
        self.conv0, self.conv1 = ConvLayer(in_ch, in_ch, 3), ConvLayer(in_ch, out_ch, 3)
        self.skip = ConvLayer(in_ch, out_ch, 1, bias=False, activate=False)
        self.out_size = out_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.skip(F.adaptive_avg_pool2d(x, self.out_size), gain=math.sqrt(0.5))
        x = self.conv1(F.adaptive_avg_pool2d(self.conv0(x), self.out_size), gain=math.sqrt(0.5))
        return skip + x


class StyleGAN2Discriminator(nn.Module):
    """(B, C, H, W) -> (B, out_dim): residual discriminator with minibatch standard deviation.

    fromRGB (1x1 conv) at the input size, residual blocks down the sizes of `feature_sizes((H, W))` (channels at
    level i: min(channels * 2**i, max_channels)), then the epilogue at the smallest size: minibatch stddev over
    groups of consecutive rows (see `MinibatchStd`; `mbstd_group` <= 1 disables it, making rows independent),
    conv3x3, flatten, FC, FC to out_dim. Equalized learning rate everywhere; leaky ReLU(0.2) * sqrt(2).
    """

    def __init__(self, in_shape: tuple[int, int, int], out_dim: int = 1, channels: int = 64, max_channels: int = 256,
                 mbstd_group: int = 4):
        super().__init__()
        in_ch, height, width = (int(side) for side in in_shape)
        sizes = feature_sizes((height, width))
        widths = [min(channels * 2 ** level, max_channels) for level in range(len(sizes))]
        self.from_rgb = ConvLayer(in_ch, widths[0], 1)
        self.blocks = nn.Sequential(*[DiscriminatorBlock(widths[level], widths[level + 1], sizes[level + 1])
                                      for level in range(len(sizes) - 1)])
        self.mbstd = MinibatchStd(mbstd_group) if mbstd_group > 1 else nn.Identity()
        bottom_ch, (bottom_h, bottom_w) = widths[-1], sizes[-1]
        self.conv = ConvLayer(bottom_ch + (1 if mbstd_group > 1 else 0), bottom_ch, 3)
        self.fc = EqualLinear(bottom_ch * bottom_h * bottom_w, bottom_ch, activate=True)
        self.out = EqualLinear(bottom_ch, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.from_rgb(x))  # (B, W, h_n, w_n)
        h = self.conv(self.mbstd(h))  # (B, W, h_n, w_n)
        return self.out(self.fc(rearrange(h, "b c h w -> b (c h w)")))  # (B, out_dim)


class StyleGAN2Architecture(ImageArchitecture):
    """model.arch=stylegan2: the generator and decoder are `StyleGAN2Generator`s, discriminators and encoders
    `StyleGAN2Discriminator`s (minibatch standard deviation in discriminators only: an encoder must be per
    sample); model.hidden channels at full resolution, the `stylegan2` section for the rest. Equalized learning
    rate replaces spectral normalization (model.spectral_norm=auto: none)."""

    name = "stylegan2"

    def encoder(self, in_shape, out_dim, spec):
        options = self.config.stylegan2
        group = options.mbstd_group if spec.role in ("discriminator", "joint_discriminator") else 1
        net = StyleGAN2Discriminator(in_shape, out_dim, self.model.hidden, options.max_channels, group)
        set_activation(net, self.model.activation)
        return net

    def decoder(self, in_dim, out_shape, spec):
        options = self.config.stylegan2
        net = StyleGAN2Generator(in_dim, out_shape, self.model.hidden, options.max_channels, options.w_dim,
                                 options.mapping_layers, options.style_mixing,
                                 spec.num_classes if spec.role in ("generator", "decoder") else 0)
        set_activation(net, self.model.activation)
        return net

    def build(self, spec):
        net = super().build(replace(spec, zero_start=False))
        return ZeroStart(net) if spec.zero_start else net

    def build_conditional(self, spec):
        """Generators and decoders are conditioned at the mapping network; the rest are wrapped."""
        if spec.role in ("generator", "decoder"):
            return self.build(spec)
        return super().build_conditional(spec)
