"""Strategy selection: config `dist.strategy`, or (auto) what the launcher asked for."""
from __future__ import annotations

import os

from gendist.config import RunConfig
from gendist.distributed import DistInfo
from gendist.engine.strategies.base import StepResult, Strategy
from gendist.errors import UserError


def launcher_intent() -> str | None:
    """What `accelerate launch` was asked for, read from the variables it exports.

    On CPU, `accelerate launch --use_deepspeed`/FSDP configs give an Accelerator of type MULTI_CPU, so the
    Accelerator's distributed_type cannot be trusted; the exported variables still say what the user meant.
    """
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    return None


def resolve_strategy_name(config: RunConfig, dist_info: DistInfo) -> str:
    name = config.dist.strategy
    if name == "auto":
        name = launcher_intent() or ("ddp" if dist_info.world_size > 1 else "single")
    if name == "ddp" and dist_info.world_size == 1:
        name = "single"
    if name == "single" and dist_info.world_size > 1:
        raise UserError(f"dist.strategy=single but {dist_info.world_size} processes were launched; "
                        "use dist.strategy=ddp (or auto)")
    return name


def zero_stage(config: RunConfig) -> int:
    """ZeRO stage: `dist.zero_stage` unless the launcher set ACCELERATE_DEEPSPEED_ZERO_STAGE."""
    return int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", config.dist.zero_stage))


def build_strategy(config: RunConfig, dist_info: DistInfo) -> Strategy:
    name = resolve_strategy_name(config, dist_info)
    if name == "single":
        return Strategy(config, dist_info)
    if name == "ddp":
        from gendist.engine.strategies.ddp import DDPStrategy

        return DDPStrategy(config, dist_info)
    raise UserError(f"dist.strategy={name} is not available in this version; use ddp or single")


__all__ = ["StepResult", "Strategy", "build_strategy", "launcher_intent", "resolve_strategy_name", "zero_stage"]
