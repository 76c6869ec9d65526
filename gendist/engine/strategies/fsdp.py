"""FSDP2 (`torch.distributed.fsdp.fully_shard`) applied per unit by gendist itself.

On CPU, `accelerate launch` with an FSDP config silently falls back to DDP (the Accelerator reports
MULTI_CPU), while `fully_shard` itself works over gloo; so, as torchtitan does, gendist shards each unit
itself: every child module that owns parameters becomes one FSDP group, then the unit is the root (all
calls into a unit's networks go through `unit(member, ...)`, so the root's hooks see every use).
Parameters are DTensor shards; forward all-gathers a group, backward reduce-scatters its gradients. Frozen
units still all-gather in forward (the generator step needs the discriminator) but never reduce-scatter.
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
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from gendist.checkpoint import OPTIMIZER_FILE, SHARDED_DIR, CheckpointWriter, load_torch, sharded_reader
from gendist.engine.strategies.base import AUTOCAST_DTYPES, Strategy, reject_weight_readers
from gendist.recipes.base import Phase

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def _reshard_after_forward() -> bool:
    """Honour the launch config's FSDP_RESHARD_AFTER_FORWARD / sharding strategy (ZeRO-3 vs ZeRO-2 style)."""
    value = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", os.environ.get("FSDP_SHARDING_STRATEGY", "true"))
    return value.lower() not in ("false", "shard_grad_op", "2", "0")


class FSDPStrategy(Strategy):
    name = "fsdp"
    fused_optimizers = ("adam", "adamw")  # DTensor has sharding rules for these fused kernels, not for SGD's

    def wrap(self, name: str, unit: nn.Module) -> nn.Module:
        return unit  # sharded for every unit in `setup`, trained or not

    def setup(self, units: dict[str, nn.Module], phases: list[Phase]) -> None:
        reject_weight_readers(phases, self.name)
        policy = MixedPrecisionPolicy(param_dtype=AUTOCAST_DTYPES.get(self.config.precision),
                                      reduce_dtype=torch.float32)
        reshard = _reshard_after_forward()
        for module in units.values():
            module.to(self.device)
            for child in reversed(list(module.modules())):  # bottom-up: a parent shards only what is left
                if child is not module and any(True for _ in child.parameters(recurse=False)):
                    fully_shard(child, mp_policy=policy, reshard_after_forward=reshard)
            fully_shard(module, mp_policy=policy, reshard_after_forward=reshard)
        super().setup(units, phases)

    def autocast(self):
        return contextlib.nullcontext()  # FSDP's MixedPrecisionPolicy casts parameters itself

    def sampling_call(self, unit: nn.Module):
        """A network's own methods (a VAE's encode, elbo_estimate) run with the network's parameter
        group gathered: FSDP's hooks gather only for `forward` (children gather in their own forwards), and
        register_fsdp_forward_method breaks a forward that calls such a method."""
        def call(member: str, *args, _method: str = "forward", **kwargs):
            network = unit[member]
            if _method == "forward" or not isinstance(network, FSDPModule):
                return unit(member, *args, _method=_method, **kwargs)
            network.unshard()
            try:
                return getattr(network, _method)(*args, **kwargs)
            finally:
                network.reshard()
        return call

    def release_sampling(self) -> None:
        # With reshard_after_forward off, a sampling forward leaves groups unsharded; reshard them so that
        # the next forward gathers the (restored) training weights again rather than reusing the EMA's.
        for unit in self.units.values():
            for module in unit.modules():
                if isinstance(module, FSDPModule):
                    module.reshard()

    @contextlib.contextmanager
    def sync_context(self, phase: Phase, sync: bool):
        self.units[phase.trains].set_requires_gradient_sync(sync)
        try:
            yield
        finally:
            self.units[phase.trains].set_requires_gradient_sync(True)

    def clip_gradients(self, name: str) -> torch.Tensor:
        norm = super().clip_gradients(name)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def nonfinite(self, name: str, norm: torch.Tensor | None) -> torch.Tensor:
        """From the norm over every rank's shard (an all-reduce, no host sync): each rank checking only its
        own shard could skip a step that another rank applies."""
        if norm is None:
            grads = [p.grad for p in self.unit_params[name] if p.grad is not None]
            if not grads:
                return torch.zeros(1, device=self.device)
            norm = torch.nn.utils.get_total_norm(grads)
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        return super().nonfinite(name, norm)

    def unit_state(self, name: str) -> dict[str, torch.Tensor]:
        return get_model_state_dict(self.units[name], options=FULL)  # collective: every rank calls it

    def load_unit_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        set_model_state_dict(self.units[name], state, options=StateDictOptions(full_state_dict=True))

    supports_async_save = False  # torch.distributed.checkpoint writes each rank's shards itself

    def sharded_state(self) -> dict:
        """Every unit's weights and every optimizer's state as this rank's DTensor shards (no gathering)."""
        state = {name: {"model": get_model_state_dict(unit)} for name, unit in self.units.items()}
        for name, optimizer in self.optimizers.items():
            state[name]["optim"] = get_optimizer_state_dict(self.units[name], optimizer)
        return state

    def save(self, writer: CheckpointWriter, is_main: bool) -> None:
        """Each rank writes its own shards of units and optimizers (torch.distributed.checkpoint); the full
        weights of each network are also written (gathered, weights only) for sampling, `encode`, `eval`."""
        from torch.distributed.checkpoint import FileSystemWriter, save

        self.save_networks(writer, is_main)
        save(self.sharded_state(), storage_writer=FileSystemWriter(str(writer.folder / SHARDED_DIR)))
        if is_main and self.scalers:
            writer.add_torch(OPTIMIZER_FILE, {"scalers": {n: s.state_dict() for n, s in self.scalers.items()}})

    def load(self, folder: Path) -> None:
        if not (folder / SHARDED_DIR).is_dir():  # written by a gendist that gathered FSDP state to rank 0
            self.load_gathered(folder)
            return
        from torch.distributed.checkpoint import load

        state = self.sharded_state()
        load(state, storage_reader=sharded_reader(folder / SHARDED_DIR))  # reshards to this world size
        for name, unit in self.units.items():
            set_model_state_dict(unit, state[name]["model"])
        for name, optimizer in self.optimizers.items():
            set_optimizer_state_dict(self.units[name], optimizer, state[name]["optim"])
        if self.scalers:
            scalers = load_torch(folder / OPTIMIZER_FILE)["scalers"]
            for name, scaler in self.scalers.items():
                scaler.load_state_dict(scalers[name])

    def load_gathered(self, folder: Path) -> None:
        self.load_networks(folder)
        state = load_torch(folder / OPTIMIZER_FILE)
        options = StateDictOptions(full_state_dict=True)
        for name, optimizer in self.optimizers.items():
            set_optimizer_state_dict(self.units[name], optimizer, state["optimizers"][name], options=options)
        for name, scaler in self.scalers.items():
            scaler.load_state_dict(state["scalers"][name])
