"""DDP with one DistributedDataParallel wrapper per trained unit.

Each unit is wrapped on its own, so a phase all-reduces only the unit it trains: frozen units are called
unwrapped (no DDP forward, no reducer state) and have requires_grad=False (no gradient hooks fire). The
trained unit's networks are all called through its wrapper (`wrapper(member, ...)`), possibly several
times per step; every parameter gets a gradient (checked at start-up), so `find_unused_parameters` is
never needed. Accumulation micro-steps run under `no_sync()`: one all-reduce per unit per optimizer step
(small units fit one bucket). A comm hook counts them. DDP broadcasts rank 0's buffers before every forward of
a trained unit; buffers a module declares identical on every rank (`rank_identical_buffers`: spectral norm's
vectors and its copy of the weight) are left out, so a discriminator with spectral norm sends nothing there.
"""
from __future__ import annotations

import contextlib

from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from gendist.engine.strategies.base import Strategy
from gendist.recipes.base import Phase


def _counting_allreduce_hook(counter_key: str, counter):
    def hook(state, bucket):
        counter[counter_key] += 1
        return default_hooks.allreduce_hook(state, bucket)

    return hook


def rank_identical_buffers(unit: nn.Module) -> list[str]:
    """Names (as `unit.named_buffers()` gives them) of the buffers its modules declare identical on every rank."""
    return [f"{prefix}.{buffer}" if prefix else buffer for prefix, module in unit.named_modules()
            for buffer in getattr(module, "rank_identical_buffers", ())]


class DDPStrategy(Strategy):
    name = "ddp"

    def wrap(self, name: str, unit: nn.Module) -> nn.Module:
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # DDP's documented (if underscored) way to leave buffers out of its broadcasts; the only one it has.
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(unit, rank_identical_buffers(unit))
        # bucket_cap_mb: DDP's default (25 MB) keeps small units in a single all-reduce.
        wrapped = DistributedDataParallel(unit, device_ids=device_ids)
        wrapped.register_comm_hook(None, _counting_allreduce_hook(name, self.gradient_syncs))
        return wrapped

    def sync_context(self, phase: Phase, sync: bool):
        if sync:
            return contextlib.nullcontext()
        return self.wrapped[phase.trains].no_sync()
