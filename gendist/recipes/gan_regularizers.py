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


def _input_gradient_norm2(discriminator: nn.Module, x: torch.Tensor, pack: int) -> torch.Tensor:
    """||grad_x sum D(pack(x))||^2 per discriminator input row (a pack counts as one input)."""
    x = x.detach().requires_grad_(True)
    scores = discriminator(pack_samples(x, pack))
    (gradient,) = torch.autograd.grad(scores.float().sum(), x, create_graph=True)
    gradient = pack_samples(gradient, pack)  # the gradient of one input row is the gradient of its pack
    return gradient.float().flatten(1).pow(2).sum(dim=1)


def gradient_penalty(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, mix: torch.Tensor,
                     pack: int = 1) -> torch.Tensor:
    """E(||grad D(x_hat)|| - 1)^2 with x_hat = mix * real + (1 - mix) * fake; `mix` is (B, 1, ...) in [0, 1]."""
    interpolates = mix * real.detach() + (1 - mix) * fake.detach()
    norm = (_input_gradient_norm2(discriminator, interpolates, pack) + 1e-12).sqrt()
    return (norm - 1).pow(2).mean()


def r1_penalty(discriminator: nn.Module, real: torch.Tensor, pack: int = 1) -> torch.Tensor:
    """E||grad_x D(x)||^2 on real samples (no gradient of the samples themselves)."""
    return _input_gradient_norm2(discriminator, real, pack).mean()


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
