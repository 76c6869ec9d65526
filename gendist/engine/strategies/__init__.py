"""Strategy selection: config `dist.strategy`, or (auto) what the launcher asked for."""
from __future__ import annotations

import os

import torch

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
    if name in ("fsdp", "deepspeed") and not torch.distributed.is_initialized():
        # A single process still gets a (1-rank) process group: sharding code paths stay the same.
        init_single_process_group(dist_info)
    if name == "single" and dist_info.world_size > 1:
        raise UserError(f"dist.strategy=single but {dist_info.world_size} processes were launched; "
                        "use dist.strategy=ddp (or auto)")
    return name


def init_single_process_group(dist_info: DistInfo) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = "nccl" if dist_info.device.type == "cuda" else "gloo"
    # DeepSpeed insists on the launcher variables even for one process.
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.distributed.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


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
    if name == "fsdp":
        from gendist.engine.strategies.fsdp import FSDPStrategy

        return FSDPStrategy(config, dist_info)
    from gendist.engine.strategies.deepspeed import DeepSpeedStrategy

    return DeepSpeedStrategy(config, dist_info, zero_stage(config))


__all__ = ["StepResult", "Strategy", "build_strategy", "launcher_intent", "resolve_strategy_name", "zero_stage"]
