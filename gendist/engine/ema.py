"""Exponential moving average of a player's parameters (Polyak averaging of the generator).

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


class EMA:
    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        named = list(module.named_parameters())
        self.names = [name for name, _ in named]
        self.params = [param.detach().clone() for _, param in named]

    @torch.no_grad()
    def update(self, module: nn.Module, skipped: torch.Tensor | None = None) -> None:
        """ema <- decay * ema + (1 - decay) * param, on local shards. `skipped` (a device flag, 1.0 when the
        optimizer step was not applied) turns the update into a no-op without reading the flag back."""
        weight = 1.0 - self.decay if skipped is None else ((1.0 - skipped) * (1.0 - self.decay)).reshape(())
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
