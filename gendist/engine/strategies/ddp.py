"""DDP with one DistributedDataParallel wrapper per trained unit.

Each unit is wrapped on its own, so a phase all-reduces only the unit it trains: frozen units are called
unwrapped (no DDP forward, no reducer state) and have requires_grad=False (no gradient hooks fire). The
trained unit's networks are all called through its wrapper (`wrapper(member, ...)`), possibly several
times per step; every parameter gets a gradient (checked at start-up), so `find_unused_parameters` is
never needed. Accumulation micro-steps run under `no_sync()`: one all-reduce per unit per optimizer step
(small units fit one bucket). A comm hook counts them.
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


class DDPStrategy(Strategy):
    name = "ddp"

    def wrap(self, name: str, unit: nn.Module) -> nn.Module:
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # bucket_cap_mb: DDP's default (25 MB) keeps small units in a single all-reduce.
        wrapped = DistributedDataParallel(unit, device_ids=device_ids)
        wrapped.register_comm_hook(None, _counting_allreduce_hook(name, self.gradient_syncs))
        return wrapped

    def sync_context(self, phase: Phase, sync: bool):
        if sync:
            return contextlib.nullcontext()
        return self.wrapped[phase.trains].no_sync()
