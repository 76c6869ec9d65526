"""Discriminator regularizers and mode-collapse remedies for the GAN recipe, as pure tensor functions.

- `gradient_penalty`: WGAN-GP (Gulrajani et al. 2017), E(||grad_x D(x_hat)|| - 1)^2 on random interpolates.
- `r1_penalty`: R1 (Mescheder et al. 2018), E||grad_x D(x)||^2 on real data (run as a lazy phase).
- `pack_samples`: PacGAN (Lin et al. 2018), m samples judged jointly by one discriminator input.
- `unrolled_discriminator`: unrolled GAN (Metz et al. 2017), k differentiable SGD steps of D with `torch.func`.

The penalties differentiate the discriminator's output with respect to its input with `create_graph=True`
(double backward); the gradient with respect to the parameters then flows through that graph. This only
asks autograd for input gradients, so DDP's per-parameter reduction hooks still fire once per backward.
"""
from __future__ import annotations

from typing import Callable

import math

import torch
from einops import rearrange
from torch import nn
from torch.func import functional_call


def pack_samples(x: torch.Tensor, pack: int) -> torch.Tensor:
    """(B, ...) -> (B / pack, pack * ...) on the first feature axis: points (B, D) -> (B/m, m*D), images
    (B, C, H, W) -> (B/m, m*C, H, W). Consecutive samples form a pack (the batch is already shuffled)."""
    if pack == 1:
        return x
    if x.dim() == 2:
        return rearrange(x, "(b m) d -> b (m d)", m=pack)
    return rearrange(x, "(b m) c ... -> b (m c) ...", m=pack)


def _input_gradient_norm2(discriminator: nn.Module, x: torch.Tensor, pack: int,
                          augment: "Augment | None" = None) -> torch.Tensor:
    """||grad_x sum D(pack(augment(x)))||^2 per discriminator input row (a pack counts as one input)."""
    x = x.detach().requires_grad_(True)
    scores = discriminator(pack_samples(augment(x) if augment is not None else x, pack))
    (gradient,) = torch.autograd.grad(scores.float().sum(), x, create_graph=True)
    gradient = pack_samples(gradient, pack)  # the gradient of one input row is the gradient of its pack
    return gradient.float().flatten(1).pow(2).sum(dim=1)


Augment = Callable[[torch.Tensor], torch.Tensor]


def gradient_penalty(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, mix: torch.Tensor,
                     pack: int = 1) -> torch.Tensor:
    """E(||grad D(x_hat)|| - 1)^2 with x_hat = mix * real + (1 - mix) * fake; `mix` is (B, 1, ...) in [0, 1]."""
    interpolates = mix * real.detach() + (1 - mix) * fake.detach()
    norm = (_input_gradient_norm2(discriminator, interpolates, pack) + 1e-12).sqrt()
    return (norm - 1).pow(2).mean()


def r1_penalty(discriminator: nn.Module, real: torch.Tensor, pack: int = 1, augment: Augment | None = None) -> torch.Tensor:
    """E||grad_x D(augment(x))||^2 on real samples (no gradient of the samples themselves); with an augmentation
    the gradient is taken through it, with respect to the un-augmented images (as StyleGAN2-ADA does)."""
    return _input_gradient_norm2(discriminator, real, pack, augment).mean()


DiscriminatorObjective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def unrolled_discriminator(discriminator: nn.Module, objective: DiscriminatorObjective, real: torch.Tensor,
                           fake: torch.Tensor, steps: int, lr: float,
                           pack: int = 1) -> dict[str, torch.Tensor]:
    """Parameters of D after `steps` SGD steps on `objective(real_scores, fake_scores)` (a loss D minimizes),
    as a differentiable function of `fake`: the generator's gradient sees how D would react to it.

    Every unrolled step uses the same real and fake batch (Metz et al. use fresh batches; with one batch
    the unrolled trajectory is a deterministic function of this step's inputs, which keeps resume exact).
    """
    params = {name: param.detach().requires_grad_(True) for name, param in discriminator.named_parameters()}
    buffers = dict(discriminator.named_buffers())
    real, fake = pack_samples(real, pack), pack_samples(fake, pack)
    for _ in range(steps):
        state = {**params, **buffers}
        loss = objective(functional_call(discriminator, state, (real,)),
                         functional_call(discriminator, state, (fake,)))
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        params = {name: param - lr * grad for (name, param), grad in zip(params.items(), grads)}
    return {**params, **buffers}


def call_with(discriminator: nn.Module, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return functional_call(discriminator, state, (x,))


def style_network(module: nn.Module) -> nn.Module | None:
    """The style-based generator inside `module` (itself or a sub-module with `mapping`, `synthesis(ws, z)`,
    `num_ws` and a `pl_mean` buffer, e.g. gendist.nets.stylegan2.StyleGAN2Generator), or None."""
    for candidate in module.modules():
        if all(hasattr(candidate, name) for name in ("mapping", "synthesis", "num_ws", "pl_mean")):
            return candidate
    return None


def path_length_loss(nets, batch, step: int, *, latent_dim: int, weight: float, every: int,
                     decay: float = 0.01, num_classes: int = 0) -> dict[str, torch.Tensor]:
    """StyleGAN2's path-length regularizer (Karras et al. 2020): E (|J_w^T y| - a)^2 with y ~ N(0, I) / sqrt(HW)
    on the image and a the running mean of the lengths, scaled by the interval (a lazy phase). The Jacobian is
    a double backward around the distributed wrapper, with a zero-weight term through it (see R1)."""
    generator = style_network(nets.unwrapped.generator)
    z = batch.randn(latent_dim)
    labels = (batch.randint(num_classes),) if num_classes else ()  # a conditional generator's classes
    ws = generator.mapping(z, *labels).unsqueeze(1).repeat(1, generator.num_ws, 1)  # (B, num_ws, w_dim)
    images = generator.synthesis(ws, z)  # (B, C, H, W) logits
    noise = batch.randn(*images.shape[1:]).to(images.dtype) / math.sqrt(images.shape[2] * images.shape[3])
    (grads,) = torch.autograd.grad((images * noise).sum(), ws, create_graph=True)  # (B, num_ws, w_dim)
    lengths = grads.float().square().sum(2).mean(1).sqrt()  # (B,)
    with torch.no_grad():
        generator.pl_mean.copy_(generator.pl_mean.lerp(lengths.mean(), decay))
    penalty = (lengths - generator.pl_mean).square().mean()
    anchor = nets.generator(z, *labels).float().sum() * 0
    return {"loss": penalty * weight * every + anchor, "pl_penalty": penalty.detach(),
            "pl_mean": generator.pl_mean.detach().reshape(())}
