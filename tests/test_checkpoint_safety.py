"""Resuming never unpickles code: DeepSpeed's engine files are read weights-only with a short allow-list of
plain-data DeepSpeed types (gendist/engine/strategies/deepspeed_checkpoint.py). A tampered file whose
manifest entry was rewritten to match stops the resume with a one-line error, and its payload never runs."""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import pathlib
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gendist.checkpoint import MANIFEST
from gendist.errors import UserError
from helpers import ROOT, accelerate_command, accelerate_launcher, free_port, make_env, run, run_many

QUIET = ["log.wandb=false", "log.progress=false", "log.sample_every=0", "eval.num_samples=200"]
REFUSED = "holds a pickled object gendist refuses to load"


class TouchPayload:
    """Unpickles as `Path.touch(marker)`: code a tampered checkpoint could smuggle in."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


class SystemPayload(TouchPayload):
    """Unpickles as `os.system("touch marker")`."""

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def assert_refused(error: UserError, path: Path) -> None:
    message = str(error)
    assert "\n" not in message and message.startswith(f"checkpoint file {path} {REFUSED} ("), message


# -- the loader itself (no processes) ----------------------------------------------------------------------
def test_plain_tensors_and_deepspeed_types_load(tmp_path):
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    from gendist.engine.strategies.deepspeed_checkpoint import load_weights_only

    plain = {"w": torch.randn(3, 4), "step": 7, "groups": [{"lr": 1e-3, "betas": (0.5, 0.999)}]}
    torch.save(plain, tmp_path / "plain.pt")
    loaded = load_weights_only(str(tmp_path / "plain.pt"), "cpu")
    assert torch.equal(loaded["w"], plain["w"]) and loaded["groups"] == plain["groups"]
    scaler = DynamicLossScaler(2.0 ** 16, 500, 1, 2, False, dtype=torch.half)
    torch.save({"zero_stage": ZeroStageEnum.gradients, "loss_scaler": scaler, "static": LossScaler(1),
                "param_slice_mappings": [{"fc.weight": fragment_address(numel=8, start=4)}]}, tmp_path / "ds.pt")
    loaded = load_weights_only(str(tmp_path / "ds.pt"), "cpu")
    assert loaded["zero_stage"] is ZeroStageEnum.gradients and loaded["static"].cur_scale == 1
    assert vars(loaded["loss_scaler"]) == vars(scaler)
    assert loaded["param_slice_mappings"][0]["fc.weight"] == fragment_address(numel=8, start=4)
    with pytest.raises(UserError) as refused:  # the allow-list is what lets them through
        load_weights_only(str(tmp_path / "ds.pt"), "cpu", allowed=[])
    assert_refused(refused.value, tmp_path / "ds.pt")


@pytest.mark.parametrize("payload, refused_name", [(TouchPayload, "getattr"), (SystemPayload, "posix.system")])
def test_pickled_code_is_refused_and_never_run(payload, refused_name, tmp_path):
    """DeepSpeed's own checkpoint engine runs the payload; gendist's refuses it on one line."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    from gendist.engine.strategies.deepspeed_checkpoint import WeightsOnlyCheckpointEngine, load_weights_only

    live, marker = tmp_path / "ran-with-deepspeed-loader", tmp_path / "ran-with-gendist-loader"
    torch.save({"w": torch.ones(2), "x": payload(live)}, tmp_path / "live.pt")
    TorchCheckpointEngine().load(str(tmp_path / "live.pt"), map_location="cpu")
    assert live.exists(), "the payload is not live: this test would prove nothing"
    path = tmp_path / "tampered.pt"
    torch.save({"w": torch.ones(2), "x": payload(marker)}, path)
    for load in (load_weights_only, WeightsOnlyCheckpointEngine().load):
        with pytest.raises(UserError) as refused:
            load(str(path), map_location="cpu")
        assert_refused(refused.value, path)
        assert f"({refused_name})" in str(refused.value)
    assert not marker.exists()


SAVE_FORMATS = {"zip": {}, "legacy": {"_use_new_zipfile_serialization": False}, "protocol4": {"pickle_protocol": 4}}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
@pytest.mark.parametrize("save_format", list(SAVE_FORMATS))
def test_engine_folder_scan_refuses_before_any_load(save_format, tmp_path):
    """The scan every rank runs before DeepSpeed loads: a payload is refused and never run, whether the scan
    finds it from the pickle's opcodes (torch's zip format) or needs a weights-only load (legacy format,
    pickle protocol 4, whose opcodes the scan does not follow and weights-only loading refuses)."""
    from gendist.engine.strategies.deepspeed_checkpoint import check_engine_files

    state = tmp_path / "engines" / "generator" / "state"
    state.mkdir(parents=True)
    if save_format != "protocol4":  # (weights-only loading refuses protocol 4 even without a payload)
        torch.save({"module": {"w": torch.ones(2)}}, state / "mp_rank_00_model_states.pt", **SAVE_FORMATS[save_format])
        check_engine_files(tmp_path / "engines")
    marker, path = tmp_path / "payload-ran", state / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": SystemPayload(marker)}, path, **SAVE_FORMATS[save_format])
    with pytest.raises(UserError) as refused:
        check_engine_files(tmp_path / "engines")
    assert_refused(refused.value, path)
    assert not marker.exists()
    if save_format != "protocol4":
        assert "(posix.system)" in str(refused.value)


def test_every_engine_gets_the_weights_only_loader_or_a_one_line_refusal():
    """Engines built by DeepSpeed's default config get the weights-only checkpoint engine; configs whose
    loading would go around it (another writer, universal checkpoints) stop at set-up."""
    from deepspeed.runtime.checkpoint_engine import FastCheckpointEngine, TorchCheckpointEngine

    from gendist.engine.strategies.deepspeed_checkpoint import WeightsOnlyCheckpointEngine, use_weights_only_loader

    class Engine:  # what use_weights_only_loader reads of a DeepSpeedEngine
        def __init__(self, checkpoint_engine, universal: bool = False):
            self.checkpoint_engine, self.universal = checkpoint_engine, universal
            self._config = SimpleNamespace(checkpoint_config={"checkpoint_serialization": True})

        def load_universal_checkpoint(self) -> bool:
            return self.universal

    engine = Engine(TorchCheckpointEngine())
    use_weights_only_loader(engine)
    assert type(engine.checkpoint_engine) is WeightsOnlyCheckpointEngine
    assert engine.checkpoint_engine.zipfile_serialization is True  # saving as DeepSpeed configured it
    for refused, expected in ((Engine(object.__new__(FastCheckpointEngine)), "FastCheckpointEngine"),
                              (Engine(TorchCheckpointEngine(), universal=True), "universal checkpoints")):
        with pytest.raises(UserError, match=expected):
            use_weights_only_loader(refused)


# -- real 2-process DeepSpeed runs -------------------------------------------------------------------------
def tamper(path: Path, folder: Path, marker: Path) -> None:
    """Add a code-running object to a DeepSpeed file and rewrite its manifest entry to match, so the
    checksums pass and only the weights-only load can catch it."""
    from gendist.engine.strategies.deepspeed_checkpoint import load_weights_only

    state = load_weights_only(str(path), "cpu")
    state["smuggled"] = SystemPayload(marker)
    torch.save(state, path)
    data = path.read_bytes()
    manifest = json.loads((folder / MANIFEST).read_text())
    entry = manifest["files"][str(path.relative_to(folder))]
    for key in entry:  # size and whichever checksum the manifest records (sha256, xxh3_128)
        entry[key] = len(data) if key == "bytes" else digest(key, data)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


def digest(name: str, data: bytes) -> str:
    if name in hashlib.algorithms_available:
        return hashlib.new(name, data).hexdigest()
    return getattr(importlib.import_module("xxhash"), name)(data).hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("stage, tampered", [(2, "mp_rank_00_model_states.pt"),
                                             (3, "zero_pp_rank_0_mp_rank_00_optim_states.pt")])
def test_deepspeed_resume_is_weights_only_and_refuses_pickled_code(stage, tampered, tmp_path):
    """DeepSpeed's real ZeRO-2/3 files resume through the weights-only loader; after one engine file gains a
    code-running object (its manifest entry rewritten to match), the resume stops on one line, runs nothing."""
    env = make_env(tmp_path / "cache")
    run_dir, marker = tmp_path / "run", tmp_path / "payload-ran"

    config = f"launch/cpu-deepspeed-zero{stage}.yaml"

    def args(steps: int) -> list[str]:
        return ["train", "configs/gan_ring.yaml", f"run.dir={run_dir}", f"train.max_steps={steps}", "ckpt.every=4",
                "train.batch_size=16", "log.every=2", *QUIET]

    # 4 steps, then a second run of the same command resumes from DeepSpeed's real files (read weights-only):
    # one launch, the two runs one after another (tests/run_many.py)
    run_many(accelerate_launcher(free_port(), config),
             [{"argv": args(4)}, {"argv": args(8), "stdout": str(tmp_path / "resumed.txt")}], tmp_path, env)
    resumed = (tmp_path / "resumed.txt").read_text()
    assert f"gendist: resumed from {run_dir / 'checkpoints' / 'step_00000004'} (step 4)" in resumed
    folder = run_dir / "checkpoints" / "step_00000008"
    path = folder / "engines" / "generator" / "state" / tampered
    tamper(path, folder, marker)
    result = run(accelerate_command(free_port(), *args(12), config=config), env, check=False)
    output = result.stdout + result.stderr
    assert "skipping checkpoint" not in output  # the manifest matched: only the pickle check stood in the way
    errors = {line for line in output.splitlines() if line.startswith("gendist: error:")}
    assert len(errors) == 1, output[-3000:]
    assert errors.pop().startswith(f"gendist: error: checkpoint file {path} {REFUSED} (posix.system)")
    # every rank stops with that line (exit 2: the root cause the launcher reports), the launcher exits 1
    assert result.returncode == 1
    assert re.search(r"Root Cause \(first observed failure\):.*?exitcode\s+: 2 ", result.stderr, re.S), \
        result.stderr[-3000:]
    assert str(ROOT / "gendist") not in output, output[-3000:]  # no traceback through gendist on any rank
    assert not marker.exists()
