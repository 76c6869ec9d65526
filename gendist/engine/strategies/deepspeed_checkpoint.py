"""Reading DeepSpeed's checkpoint files without ever unpickling code.

DeepSpeed's own TorchCheckpointEngine reads its files with `torch.load(..., weights_only=False)`. The
checkpoint manifest (gendist/checkpoint.py) catches damage but not an attacker, who can rewrite it too, so
a tampered run folder would run arbitrary code on resume. Every gendist engine therefore gets a
WeightsOnlyCheckpointEngine: the same engine, whose `load` reads with `weights_only=True` and allows only the
few plain-data DeepSpeed types that ZeRO-1/2/3 files hold (`deepspeed_safe_globals`). Any other pickled
object stops the resume with a one-line UserError before anything in the file runs. Before DeepSpeed loads,
`check_engine_files` scans every file's pickle (opcodes only) on every rank and the ranks agree, so all of
them stop with that same line (a rank refusing alone inside DeepSpeed's load would leave its peers to crash
in a collective).
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Callable

import torch
from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine
from deepspeed.utils import log_dist

from gendist.distributed import gather_object
from gendist.errors import UserError

MapLocation = str | torch.device | Callable | dict | None


def deepspeed_safe_globals() -> list[type]:
    """The only non-tensor, non-builtin types a DeepSpeed file may hold (found with
    `torch.serialization.get_unsafe_globals_in_checkpoint` on real 2-process ZeRO-1/2/3 checkpoints in fp32,
    bf16 and fp16 with deepspeed 0.19 / torch 2.13; model-state files hold none). Each is plain data: an
    int enum, a two-int dataclass, and loss scalers whose constructors only store numbers (a weights-only
    load never calls their methods). Never add functions or anything that can run code when built."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [
        ZeroStageEnum,  # every optim-states file: 'zero_stage' (int enum 1/2/3)
        LossScaler,  # optim states in fp32 and bf16: the static scaler (cur_scale=1)
        DynamicLossScaler,  # optim states in fp16: the dynamic scaler (scale, window, hysteresis counters)
        fragment_address,  # ZeRO-1/2 optim states: 'param_slice_mappings' (numel, start of each fragment)
    ]


def refused_global(message: str) -> str:
    """The name of the global torch's weights-only unpickler refused, from its (multi-line) message."""
    found = re.search(r"GLOBAL (\S+)", message)
    return found.group(1) if found else "an unsupported pickle instruction"


def load_weights_only(path: str, map_location: MapLocation = None, allowed: list[type] | None = None) -> Any:
    """`torch.load(path, weights_only=True)` with `allowed` (default: DeepSpeed's types) allow-listed; a
    file holding any other pickled object raises a one-line UserError and nothing in it is run."""
    allowed = deepspeed_safe_globals() if allowed is None else allowed
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise UserError(refusal(path, refused_global(str(error)))) from None


def refusal(path: str | Path, what: str) -> str:
    """The one-line error for a file holding pickled objects (`what`) that gendist will not build."""
    return (f"checkpoint file {path} holds a pickled object gendist refuses to load ({what}); it was not "
            "written by this gendist/DeepSpeed or was tampered with. Nothing in it was run; resume from a "
            "checkpoint you trust, or use a new run.dir")


def scan_file(path: Path, allowed: list[type]) -> str | None:
    """The refusal for `path` if its pickle names a global outside torch's weights-only defaults and
    `allowed`, else None. Reads the pickle's opcodes only; a legacy (non-zip) file is loaded weights-only."""
    try:
        with torch.serialization.safe_globals(allowed):  # (not nestable: its exit removes the globals)
            refused = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except (ValueError, pickle.UnpicklingError):  # not torch's zip format, or opcodes the scan does not
        # follow (protocol 4+): only a full weights-only load can tell
        try:
            load_weights_only(str(path), "cpu", allowed)
        except UserError as error:
            return str(error)
        return None
    return refusal(path, ", ".join(refused)) if refused else None


def check_engine_files(folder: Path) -> None:
    """Every rank scans the `.pt` files it sees under `folder` (DeepSpeed's engine folders), then all agree:
    if any rank found a refused object, every rank raises the same one-line UserError before any load."""
    allowed = deepspeed_safe_globals()
    problem = next(filter(None, (scan_file(path, allowed) for path in sorted(folder.rglob("*.pt")))), None)
    first = next(filter(None, gather_object(problem)), None)
    if first is not None:
        raise UserError(first)


class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine (same saving, same files) that loads with weights_only=True."""

    def load(self, path: str, map_location: MapLocation = None) -> Any:
        log_dist(f"[Torch] Begin Load checkpoint from {path}...", ranks=[0])
        partition = load_weights_only(path, map_location)
        log_dist(f"[Torch] End Load checkpoint from {path}...", ranks=[0])
        return partition


def use_weights_only_loader(engine) -> None:
    """Give a `deepspeed.initialize` engine the weights-only checkpoint engine. DeepSpeed configs whose
    loading goes around it (another checkpoint writer, universal checkpoints) are refused up front."""
    current = engine.checkpoint_engine
    if type(current) is not TorchCheckpointEngine:
        raise UserError(f"DeepSpeed checkpoint engine {type(current).__name__} (chosen by the DeepSpeed config's "
                        "'checkpoint': {'writer': ...} or 'datastates_ckpt') is not supported by gendist, which "
                        "loads checkpoints weights-only; remove that setting from the DeepSpeed config")
    if engine.load_universal_checkpoint():
        raise UserError("DeepSpeed universal checkpoints ('checkpoint': {'load_universal': true} in the DeepSpeed "
                        "config) are loaded by DeepSpeed without weights_only; gendist does not support them")
    engine.checkpoint_engine = WeightsOnlyCheckpointEngine(engine._config)
