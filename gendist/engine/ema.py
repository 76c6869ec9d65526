"""Exponential moving average of a player's parameters (Polyak averaging of the generator).

The decay ramps up with training (StyleGAN2-ADA's `ema_rampup`, Karras et al. 2020): the average's half-life
is at most `rampup` x the steps taken so far, and `decay` once the run is long enough (decay 0.999 has a
half-life of 693 steps, reached at step 13,863 with rampup 0.05). Without it, an average with a long horizon
early in training mixes generators that draw different things: on 32x32 colour digits, 3,000 steps of
gan_digits.yaml with a constant 0.999 drew desaturated blurs (recall 0.065 in classifier features) while the
raw weights had recall 0.45. The decay is a function of the step alone, so resume and world size leave it
unchanged.

The average is kept in the player's own layout: under FSDP the copies are DTensor shards like the
parameters themselves, so the EMA costs each rank only its shard. `full_state` gathers it (a collective).
"""
from __future__ import annotations

import torch
from torch import nn


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The shard a rank holds (a view: in-place ops change the DTensor), or the tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def ramped_decay(decay: float, rampup: float, step: int) -> float:
    """The decay of the update at `step` (1 = the first optimizer step): `decay`, lowered so that the
    half-life (ln 0.5 / ln decay steps) is at most rampup x step; rampup 0 keeps `decay` throughout."""
    if rampup <= 0:
        return decay
    return min(decay, 0.5 ** (1.0 / (rampup * max(step, 1))))


class EMA:
    def __init__(self, module: nn.Module, decay: float, rampup: float = 0.0):
        self.decay, self.rampup = decay, rampup
        named = list(module.named_parameters())
        self.names = [name for name, _ in named]
        self.params = [param.detach().clone() for _, param in named]

    @torch.no_grad()
    def update(self, module: nn.Module, skipped: torch.Tensor | None = None, step: int | None = None) -> None:
        """ema <- decay * ema + (1 - decay) * param, on local shards, with the decay ramped for `step` (the
        optimizer step just taken, counting from 1; None: the full decay). `skipped` (a device flag, 1.0 when
        the optimizer step was not applied) turns the update into a no-op without reading the flag back."""
        decay = self.decay if step is None else ramped_decay(self.decay, self.rampup, step)
        weight = 1.0 - decay if skipped is None else ((1.0 - skipped) * (1.0 - decay)).reshape(())
        for average, param in zip(self.params, module.parameters()):
            _local(average).lerp_(_local(param).detach().to(average.dtype), weight)

    @torch.no_grad()
    def full_state(self) -> dict[str, torch.Tensor]:
        """Unsharded averages on CPU; every rank must call it (DTensor gathers)."""
        return {name: _full(param).detach().float().cpu() for name, param in zip(self.names, self.params)}

    @torch.no_grad()
    def load_full_state(self, state: dict[str, torch.Tensor]) -> None:
        from torch.distributed.tensor import distribute_tensor

        for name, param in zip(self.names, self.params):
            value = state[name].to(device=param.device, dtype=param.dtype)
            if hasattr(param, "device_mesh"):
                value = distribute_tensor(value, param.device_mesh, param.placements)
            param.copy_(value)
