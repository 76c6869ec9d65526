"""Networks by role. A family asks for roles; an architecture answers for the roles it supports.

Roles and their contracts (B rows; shapes are per sample; `RoleSpec` carries them):

    generator            z (B, latent_dim)            -> x (B, *out_shape), in the data's range (images: [0, 1])
    discriminator        x (B, *in_shape)             -> score (B, 1)
    encoder              x (B, *in_shape)             -> (B, out_dim)
    decoder              code (B, in_dim)             -> (B, *out_shape), unbounded (parameters of p(x|z))
    joint_discriminator  x (B, *in_shape), z (B, Z)   -> score (B, 1); `.features(x, z)` -> (B, F)
    translator           x (B, *in_shape)             -> (B, *out_shape) logits; spec.zero_start: the output
                                                         starts at exactly 0 (a residual correction). Image
                                                         architectures: fully convolutional, same H and W

`model.arch` names an architecture (mlp, conv, resnet, stylegan2, gaussian, or `package.module:Class` of a
user's `Architecture`); `model.networks.<role or network>: package.module:Class` replaces single networks
(`model.networks.<key>_kwargs` are its keyword arguments). Every network built here is called once on a
2-row probe and its output shape checked, so a wrong network stops at start-up with one line naming it.
Spectral normalization (`model.spectral_norm`) is applied here, after construction, to every Conv/Linear
layer of the roles it covers. No recipe reads `model.arch`: recipes call `build_network`.

Conditional roles (`RoleSpec.num_classes` > 0, model.conditional=true) take the class labels as a second input:
`generator(z, y)`, `discriminator(x, y)`, `encoder(x, y)`, `decoder(code, y)` with y int64 (B,). An
architecture builds them in `build_conditional` (natively, or by wrapping its unconditional network:
gendist.nets.conditional); a user's network class that takes a `num_classes` argument is conditional itself,
any other is wrapped the same way.
"""
from __future__ import annotations

import importlib
import inspect
import math
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.utils.parametrize  # noqa: F401 (nn.utils.parametrize)
from torch import nn

from gendist.config import RunConfig
from gendist.errors import UserError
from gendist.nets.activations import hidden_activation
from gendist.nets.conditional import ClassChannels, EmbedConcat, ProjectionDiscriminator, embedding_width
from gendist.nets.conv import ConvDecoder, ConvEncoder
from gendist.nets.gaussian import GaussianGenerator
from gendist.nets.joint import JointDiscriminator
from gendist.nets.mlp import MLP
from gendist.nets.translator import ImageTranslator

ROLES = ("generator", "discriminator", "encoder", "decoder", "joint_discriminator", "translator")
DISCRIMINATOR_ROLES = frozenset({"discriminator", "joint_discriminator"})
PROBE_ROWS = 2


@dataclass(frozen=True)
class RoleSpec:
    """What a family asks for: a network of `role`, named `name` in the recipe, with these per-sample shapes."""

    role: str
    name: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    images: bool  # the data are images (C, H, W) in [0, 1]
    latent_dim: int = 0  # joint_discriminator: the size of z
    zero_start: bool = False  # translator: the output starts at exactly zero
    num_classes: int = 0  # > 0: a conditional network, called net(input, y) with labels y in [0, num_classes)


class Squashed(nn.Module):
    """A network whose output is squashed into the data's range [0, 1] (image generators)."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:  # z, or (z, y) for a conditional decoder
        return torch.sigmoid(self.decoder(*inputs))


def zero_last_layer(net: nn.Module) -> None:
    """Start a residual correction at exactly zero: its last linear/conv layer's weight and bias."""
    last = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))][-1]
    nn.init.zeros_(last.weight)
    if last.bias is not None:
        nn.init.zeros_(last.bias)


class Architecture:
    """Builds networks by role. Subclasses set `name` and implement `build`; `spectral_norm_roles` are the
    roles that get spectral normalization under model.spectral_norm=auto."""

    name = ""
    spectral_norm_roles: frozenset = frozenset()

    def __init__(self, config: RunConfig):
        self.config = config
        self.model = config.model
        self.activation = hidden_activation(config.model.activation)

    def build(self, spec: RoleSpec) -> nn.Module:
        raise NotImplementedError

    def default_activation(self) -> Callable[[], nn.Module]:
        """The activation of a discriminator's features (also the projection discriminator's phi)."""
        return self.activation or (lambda: nn.LeakyReLU(0.2))

    def build_conditional(self, spec: RoleSpec) -> nn.Module:
        """The conditional network for `spec` (spec.num_classes > 0). Here: the unconditional one, wrapped
        (gendist.nets.conditional); architectures with a native conditioning override this for their roles."""
        return wrap_conditional(self, spec, self.build)

    def refuse(self, spec: RoleSpec, why: str) -> UserError:
        return UserError(f"model.arch={self.name} cannot build the {spec.role} '{spec.name}' of model.recipe="
                         f"{self.model.recipe}: {why}")


def wrap_conditional(architecture: Architecture, spec: RoleSpec, build: Callable[[RoleSpec], nn.Module]) -> nn.Module:
    """A conditional network around the unconditional network `build(spec')` of a widened/narrowed spec'."""
    classes, base = spec.num_classes, replace(spec, num_classes=0)
    if spec.role in ("generator", "decoder"):
        width = embedding_width(classes, spec.in_shape[0])
        return EmbedConcat(build(replace(base, in_shape=(spec.in_shape[0] + width,))), classes, width)
    if spec.role == "discriminator":
        features = architecture.model.hidden
        return ProjectionDiscriminator(build(replace(base, out_shape=(features,))), features, classes,
                                       architecture.default_activation())
    if spec.role == "encoder":
        return ClassChannels(build(replace(base, in_shape=(spec.in_shape[0] + classes, *spec.in_shape[1:]))), classes)
    raise architecture.refuse(spec, "it has no class-conditional version (model.conditional=true)")


class MLPArchitecture(Architecture):
    """Multi-layer perceptrons on flattened samples (points, small images): model.hidden x model.depth."""

    name = "mlp"

    def mlp(self, in_dim: int, out_dim: int, default: Callable[[], nn.Module] | None = None, depth: int | None = None,
            out_shape: tuple[int, ...] | None = None) -> MLP:
        depth = self.model.depth if depth is None else depth
        return MLP(in_dim, out_dim, self.model.hidden, depth, self.activation or default, out_shape=out_shape)

    def build(self, spec: RoleSpec) -> nn.Module:
        fan_in, fan_out = math.prod(spec.in_shape), math.prod(spec.out_shape)
        if spec.role == "generator":
            net = self.mlp(fan_in, fan_out, out_shape=spec.out_shape)
            return Squashed(net) if spec.images else net
        if spec.role in ("discriminator", "encoder"):
            return self.mlp(fan_in, fan_out, nn.LeakyReLU)
        if spec.role == "decoder":
            return self.mlp(fan_in, fan_out, out_shape=spec.out_shape)
        if spec.role == "joint_discriminator":
            x_branch = self.mlp(fan_in, self.model.hidden, nn.LeakyReLU, depth=max(self.model.depth - 1, 0))
            return JointDiscriminator(x_branch, spec.latent_dim, self.model.hidden, self.activation)
        if spec.role == "translator":
            depth = self.config.cyclegan.generator_depth
            depth = self.model.depth if depth < 0 else depth
            if spec.zero_start:
                net = self.mlp(fan_in, fan_out, depth=depth, out_shape=spec.out_shape) if depth else None
                if net is None:
                    return ZeroCorrection(spec.out_shape)
                zero_last_layer(net)
                return net
            return AffineResidualMLP(spec.in_shape, spec.out_shape, self.model.hidden, depth, self.activation)
        raise self.refuse(spec, f"unknown role {spec.role}")


class GaussianArchitecture(MLPArchitecture):
    """The GAN generator is x = mu + sigma * z (a learnable Gaussian, Nowozin et al.'s 1-D fit); its
    discriminator is the mlp architecture's."""

    name = "gaussian"

    def build(self, spec: RoleSpec) -> nn.Module:
        if spec.role == "generator":
            return GaussianGenerator(spec.out_shape, *self.model.gaussian_init)
        if spec.role != "discriminator":
            raise self.refuse(spec, "it is a GAN generator; use model.arch=mlp or conv")
        return super().build(spec)


class ImageArchitecture(Architecture):
    """An architecture defined by two image networks, `encoder(in_shape, out_dim)` (B, C, H, W) -> (B, out_dim)
    and `decoder(in_dim, out_shape)` (B, in_dim) -> (B, C, H, W): the other roles are composed from them (a
    discriminator is an encoder to one score), except the translator: `translator(spec)`, by default CycleGAN's
    fully convolutional generator (gendist.nets.translator), which keeps every pixel where it was."""

    def encoder(self, in_shape: tuple[int, ...], out_dim: int, spec: RoleSpec) -> nn.Module:
        raise NotImplementedError

    def decoder(self, in_dim: int, out_shape: tuple[int, ...], spec: RoleSpec) -> nn.Module:
        raise NotImplementedError

    def build(self, spec: RoleSpec) -> nn.Module:
        image_shape = spec.out_shape if spec.role in ("generator", "decoder") else spec.in_shape
        if len(image_shape) != 3:
            raise self.refuse(spec, f"it builds networks for images (C, H, W), these data have shape "
                                    f"{tuple(image_shape)}; use model.arch=mlp")
        if spec.role == "generator":
            net = self.decoder(spec.in_shape[0], spec.out_shape, spec)
            return Squashed(net) if spec.images else net
        if spec.role in ("discriminator", "encoder"):
            return self.encoder(spec.in_shape, spec.out_shape[0], spec)
        if spec.role == "decoder":
            return self.decoder(spec.in_shape[0], spec.out_shape, spec)
        if spec.role == "joint_discriminator":
            hidden = self.model.hidden
            return JointDiscriminator(self.encoder(spec.in_shape, hidden, spec), spec.latent_dim, hidden,
                                      self.activation)
        if spec.role == "translator":
            return self.translator(spec)
        raise self.refuse(spec, f"unknown role {spec.role}")

    def translator(self, spec: RoleSpec) -> nn.Module:
        """An image -> image network of the same height and width: CycleGAN's generator (ImageTranslator) with
        model.hidden channels, cyclegan.generator_depth residual blocks (-1: model.depth) and up to
        cyclegan.downsample stride-2 convolutions; its output starts at exactly zero with spec.zero_start."""
        (c_in, *side_in), (c_out, *side_out) = spec.in_shape, spec.out_shape
        if side_in != side_out:
            raise self.refuse(spec, f"its translator keeps every pixel in place, so both domains need one height "
                                    f"and width (A {tuple(side_in)}, B {tuple(side_out)}); resize one with "
                                    "data.resize, or use model.arch=mlp")
        blocks = self.config.cyclegan.generator_depth
        blocks = self.model.depth if blocks < 0 else blocks
        net = ImageTranslator(c_in, c_out, tuple(side_in), self.model.hidden, blocks, self.activation,
                              self.config.cyclegan.downsample)
        if spec.zero_start:
            zero_last_layer(net)
        return net


class ConvArchitecture(ImageArchitecture):
    """DCGAN-style strided convolutions without normalization (gendist.nets.conv), model.hidden base channels."""

    name = "conv"

    def encoder(self, in_shape, out_dim, spec):
        return ConvEncoder(in_shape[0], in_shape[1:], out_dim, self.model.hidden, self.activation)

    def decoder(self, in_dim, out_shape, spec):
        return ConvDecoder(in_dim, out_shape[0], out_shape[1:], self.model.hidden, self.activation)


class ZeroStart(nn.Module):
    """net(x) times a learned gain that starts at 0: a correction that starts at exactly zero, for networks
    whose last layer is not a plain torch layer (zero_last_layer's way)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.gain = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.gain


class ZeroCorrection(nn.Module):
    """A correction that is always zero (cyclegan.generator_depth=0 with an alignment)."""

    def __init__(self, out_shape: tuple[int, ...]):
        super().__init__()
        self.out_shape = tuple(out_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], *self.out_shape)


class AffineResidualMLP(nn.Module):
    """An affine map of the flattened sample plus an MLP correction whose last layer starts at zero (a residual
    generator, like the reference ResNet generators): training starts from a plain affine map, which can
    rotate, flip or invert an image but cannot trade one digit for another."""

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], hidden: int, depth: int, activation=None):
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.affine = nn.Linear(math.prod(in_shape), math.prod(out_shape))
        self.net = MLP(math.prod(in_shape), math.prod(out_shape), hidden, depth, activation) if depth else None
        if self.net is not None:
            zero_last_layer(self.net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)  # (B, D_in)
        out = self.affine(flat) + (self.net(flat) if self.net is not None else 0)  # (B, D_out)
        return out.reshape(len(x), *self.out_shape)


# Built-in architectures: name -> the class, imported when a run asks for it (one file per architecture).
BUILTIN_ARCHITECTURES = {"mlp": "gendist.nets.registry:MLPArchitecture", "conv": "gendist.nets.registry:ConvArchitecture",
                         "resnet": "gendist.nets.resnet:ResNetArchitecture",
                         "stylegan2": "gendist.nets.stylegan2:StyleGAN2Architecture",
                         "gaussian": "gendist.nets.registry:GaussianArchitecture"}


def import_object(path: str, key: str):
    """`package.module:Name` -> the object, or a one-line UserError naming `key`."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise UserError(f"config: {key} must be a built-in name or package.module:Class, got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UserError(f"config: {key}={path}: cannot import {module_name} ({error}); install the package or "
                        "put it on PYTHONPATH") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise UserError(f"config: {key}={path}: {module_name} has no attribute {attribute}") from None


def build_architecture(config: RunConfig) -> Architecture:
    arch = config.model.arch
    if ":" in arch:
        cls = import_object(arch, "model.arch")
        if not (isinstance(cls, type) and issubclass(cls, Architecture)):
            raise UserError(f"config: model.arch={arch} must be a subclass of gendist.nets.registry.Architecture")
        return cls(config)
    if arch not in BUILTIN_ARCHITECTURES:
        raise UserError(f"config: model.arch must be one of {', '.join(BUILTIN_ARCHITECTURES)} or "
                        f"package.module:Architecture, got {arch!r}")
    return import_object(BUILTIN_ARCHITECTURES[arch], "model.arch")(config)


def spectral_norm_enabled(config: RunConfig, architecture: Architecture, spec: RoleSpec) -> bool:
    mode = config.model.spectral_norm
    if mode == "auto":
        return spec.role in architecture.spectral_norm_roles
    return mode == "all" or (mode == "discriminators" and spec.role in DISCRIMINATOR_ROLES)


class SpectralNorm(nn.Module):
    """Spectral normalization (Miyato et al. 2018) as a parametrization: weight / sigma, sigma estimated by power
    iteration on the weight reshaped to (out, -1), as torch's `spectral_norm`, with one difference: the
    iteration advances once per change of the weight, not once per call.

    torch iterates at every training-mode call, so the estimate depends on how often a network is called
    between optimizer steps: gradient accumulation (twice the calls per step), a lazy R1 phase or an extra
    discriminator call changed the trained weights (measured: 0.1-0.3 relative after 20 steps of 2
    micro-steps x b against 1 x 2b). Here each call compares the weight with the copy it last iterated on (on
    the device, no host sync) and keeps the old vectors when it is unchanged. The vectors and that copy are
    buffers: checkpointed, so a resumed run continues the same iteration; identical on every rank."""

    # Buffers every rank computes alike from identical weights (and initial vectors drawn under the same seed):
    # data-parallel wrappers need not broadcast them (`_last` is a copy of the weight: DDP would send the
    # discriminator's whole size before every forward).
    rank_identical_buffers = ("_u", "_v", "_last")

    def __init__(self, weight: torch.Tensor, dim: int = 0, eps: float = 1e-12, warmup_iterations: int = 15):
        super().__init__()
        self.dim, self.eps = dim, eps
        matrix = self._matrix(weight.detach())
        u = nn.functional.normalize(matrix.new_empty(matrix.shape[0]).normal_(0, 1), dim=0, eps=eps)
        v = nn.functional.normalize(matrix.new_empty(matrix.shape[1]).normal_(0, 1), dim=0, eps=eps)
        self.register_buffer("_u", u)
        self.register_buffer("_v", v)
        self.register_buffer("_last", torch.full_like(matrix, float("nan")))  # never equal: iterate at first
        with torch.no_grad():
            for _ in range(warmup_iterations):
                self._iterate(matrix, torch.ones((), dtype=torch.bool, device=matrix.device))

    def _matrix(self, weight: torch.Tensor) -> torch.Tensor:
        if self.dim != 0:
            weight = weight.movedim(self.dim, 0)
        return weight.flatten(1)  # (out, in * kh * kw)

    def _iterate(self, matrix: torch.Tensor, changed: torch.Tensor) -> None:
        # New tensors, not in-place updates: a graph of an earlier call that still waits for its backward
        # holds the old vectors. (In-place updates with clones for the graph, torch's way, fail compiled: the
        # partitioner saves the buffer itself instead of its clone, and the next call's update invalidates it.)
        v = nn.functional.normalize(matrix.t() @ self._u, dim=0, eps=self.eps)
        u = nn.functional.normalize(matrix @ v, dim=0, eps=self.eps)
        self._u = torch.where(changed, u, self._u)
        self._v = torch.where(changed, v, self._v)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        matrix = self._matrix(weight)
        if self.training:
            with torch.no_grad():
                detached = matrix.detach()
                changed = (detached != self._last).any()  # a device bool: no host sync
                self._iterate(detached, changed)
                self._last.copy_(detached)  # (compared only, never saved for a backward)
        sigma = torch.dot(self._u, matrix @ self._v)
        return weight / sigma


def apply_spectral_norm(net: nn.Module) -> int:
    """`SpectralNorm` on every Linear/Conv layer of `net` (torch.nn.utils.parametrize); returns how many."""
    layers = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]
    for layer in layers:
        dim = 1 if isinstance(layer, nn.ConvTranspose2d) else 0
        nn.utils.parametrize.register_parametrization(layer, "weight", SpectralNorm(layer.weight, dim))
    return len(layers)


def _user_network(config: RunConfig, spec: RoleSpec, architecture: Architecture) -> tuple[nn.Module | None, str]:
    """A network from model.networks (by network name first, then by role), or (None, ""). For a conditional
    spec, a class taking `num_classes` is built conditional; any other is built unconditional and wrapped."""
    networks = config.model.networks
    key = spec.name if spec.name in networks else spec.role if spec.role in networks else ""
    if not key:
        return None, ""
    path = networks[key]
    cls = import_object(path, f"model.networks.{key}")
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        parameters = {}
    if spec.num_classes and "num_classes" not in parameters:
        net = wrap_conditional(architecture, spec, lambda base: _user_network(config, base, architecture)[0])
        return net, f"model.networks.{key} ({path}, class-conditional by gendist.nets.conditional)"
    kwargs = dict(networks.get(f"{key}_kwargs", {}))
    latent_dim = spec.latent_dim or (spec.in_shape[0] if spec.role in ("generator", "decoder") else 0)
    offered = {"in_shape": tuple(spec.in_shape), "out_shape": tuple(spec.out_shape), "latent_dim": latent_dim,
               "images": spec.images, "num_classes": spec.num_classes}
    for name, value in offered.items():  # the shapes, for networks that ask for them by these names
        if name in parameters and name not in kwargs:
            kwargs[name] = value
    try:
        net = cls(**kwargs)
    except TypeError as error:
        raise UserError(f"config: model.networks.{key}={path}: {error}; set its arguments with "
                        f"model.networks.{key}_kwargs") from None
    if not isinstance(net, nn.Module):
        raise UserError(f"config: model.networks.{key}={path} must be a torch.nn.Module class")
    return net, f"model.networks.{key} ({path})"


def check_output_shape(net: nn.Module, spec: RoleSpec, what: str) -> None:
    """Call `net` on a PROBE_ROWS-row probe (eval mode, no grad, the RNG untouched) and check its output."""
    inputs = [torch.zeros(PROBE_ROWS, *spec.in_shape)]
    if spec.role == "joint_discriminator":
        inputs.append(torch.zeros(PROBE_ROWS, spec.latent_dim))
    if spec.num_classes:
        inputs.append(torch.arange(PROBE_ROWS) % spec.num_classes)  # labels
    expected = (PROBE_ROWS, *spec.out_shape)
    was_training = net.training
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        net.eval()
        try:
            out = net(*inputs)
        except Exception as error:  # a user's network may fail in any way: say which network and input
            raise UserError(f"{what}: the {spec.role} '{spec.name}' failed on an input of shape "
                            f"{tuple(inputs[0].shape)} ({type(error).__name__}: {str(error).splitlines()[0]}); "
                            f"it must map (B, *{tuple(spec.in_shape)}) to (B, *{tuple(spec.out_shape)})") from None
        finally:
            net.train(was_training)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != expected:
        raise UserError(f"{what}: the {spec.role} '{spec.name}' returned {shape} for an input of shape "
                        f"{tuple(inputs[0].shape)}; it must return {expected} (data shape "
                        f"{tuple(spec.out_shape if spec.role in ('generator', 'decoder') else spec.in_shape)})")


def build_network(config: RunConfig, spec: RoleSpec, architecture: Architecture | None = None) -> nn.Module:
    """The network for `spec`: a user's (model.networks) or the architecture's, with spectral normalization
    where configured, its output shape checked."""
    if spec.role not in ROLES:
        raise ValueError(f"unknown role {spec.role}")
    architecture = architecture or build_architecture(config)
    net, what = _user_network(config, spec, architecture)
    if net is None:
        net = architecture.build_conditional(spec) if spec.num_classes else architecture.build(spec)
        what = f"model.arch={config.model.arch}"
    if spectral_norm_enabled(config, architecture, spec):
        apply_spectral_norm(net)
    check_output_shape(net, spec, what)
    return net


class NetworkBuilder:
    """What a recipe holds: `builder.generator(...)`-style calls for each role, one architecture per run."""

    def __init__(self, config: RunConfig, images: bool):
        self.config = config
        self.images = images
        self.architecture = build_architecture(config)

    def __call__(self, role: str, name: str, in_shape, out_shape, **extra) -> nn.Module:
        spec = RoleSpec(role, name, tuple(int(s) for s in in_shape), tuple(int(s) for s in out_shape), self.images,
                        **extra)
        return build_network(self.config, spec, self.architecture)


__all__ = ["Architecture", "wrap_conditional", "BUILTIN_ARCHITECTURES", "ImageArchitecture", "NetworkBuilder", "ROLES", "RoleSpec",
           "Squashed", "apply_spectral_norm", "build_architecture", "build_network", "check_output_shape",
           "import_object", "zero_last_layer"]
