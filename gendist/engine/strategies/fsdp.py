"""FSDP2 (`torch.distributed.fsdp.fully_shard`) applied per player by gendist itself.

On CPU, `accelerate launch` with an FSDP config silently falls back to DDP (the Accelerator reports
MULTI_CPU), while `fully_shard` itself works over gloo; so, as torchtitan does, gendist shards each player
itself: every child module that owns parameters becomes one FSDP unit, then the player's root. Parameters
are DTensor shards; forward all-gathers a unit, backward reduce-scatters its gradients. Frozen players
still all-gather in forward (the generator step needs the discriminator) but never reduce-scatter.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from gendist.checkpoint import load_tensors, load_torch, save_tensors, save_torch
from gendist.engine.strategies.base import AUTOCAST_DTYPES, Strategy, reject_weight_readers
from gendist.recipes.base import Phase

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def _reshard_after_forward() -> bool:
    """Honour the launch config's FSDP_RESHARD_AFTER_FORWARD / sharding strategy (ZeRO-3 vs ZeRO-2 style)."""
    value = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", os.environ.get("FSDP_SHARDING_STRATEGY", "true"))
    return value.lower() not in ("false", "shard_grad_op", "2", "0")


class FSDPStrategy(Strategy):
    name = "fsdp"

    def wrap(self, name: str, module: nn.Module) -> nn.Module:
        return module  # sharded for every player in `setup`, trained or not

    def setup(self, players: dict[str, nn.Module], phases: list[Phase]) -> None:
        reject_weight_readers(phases, self.name)
        policy = MixedPrecisionPolicy(param_dtype=AUTOCAST_DTYPES.get(self.config.precision),
                                      reduce_dtype=torch.float32)
        reshard = _reshard_after_forward()
        for module in players.values():
            module.to(self.device)
            for child in module.modules():
                if child is not module and any(True for _ in child.parameters(recurse=False)):
                    fully_shard(child, mp_policy=policy, reshard_after_forward=reshard)
            fully_shard(module, mp_policy=policy, reshard_after_forward=reshard)
        super().setup(players, phases)

    def autocast(self):
        return contextlib.nullcontext()  # FSDP's MixedPrecisionPolicy casts parameters itself

    @contextlib.contextmanager
    def sync_context(self, phase: Phase, sync: bool):
        for name in phase.trains:
            self.raw[name].set_requires_gradient_sync(sync)
        try:
            yield
        finally:
            for name in phase.trains:
                self.raw[name].set_requires_gradient_sync(True)

    def clip_gradients(self, name: str) -> torch.Tensor:
        norm = super().clip_gradients(name)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def model_state(self, name: str) -> dict[str, torch.Tensor]:
        return get_model_state_dict(self.raw[name], options=FULL)  # collective: every rank calls it

    def save(self, folder: Path, is_main: bool) -> None:
        # Full (unsharded) state gathered to rank 0: simple and portable across world sizes.
        states = {name: self.model_state(name) for name in self.raw}
        optimizers = {name: get_optimizer_state_dict(self.raw[name], optimizer, options=FULL)
                      for name, optimizer in self.optimizers.items()}
        if is_main:
            for name, state in states.items():
                save_tensors(folder / "players" / f"{name}.safetensors", state)
            save_torch(folder / "optim.pt", {"optimizers": optimizers,
                                            "scalers": {n: s.state_dict() for n, s in self.scalers.items()}})

    def load(self, folder: Path) -> None:
        options = StateDictOptions(full_state_dict=True)
        for name, module in self.raw.items():
            set_model_state_dict(module, load_tensors(folder / "players" / f"{name}.safetensors"), options=options)
        state = load_torch(folder / "optim.pt")
        for name, optimizer in self.optimizers.items():
            set_optimizer_state_dict(self.raw[name], optimizer, state["optimizers"][name], options=options)
        for name, scaler in self.scalers.items():
            scaler.load_state_dict(state["scalers"][name])
