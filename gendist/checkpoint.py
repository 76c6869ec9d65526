"""Atomic, validated checkpoints.

Layout of `RUN/checkpoints/`:
    step_00000500/   manifest.json (sizes + sha256 of every file), trainer.json, players/*.safetensors,
                     optim.pt, rank_00000.pt (RNG + data position of each rank), engines/ (DeepSpeed)
    latest           name of the newest complete checkpoint

Ordering rules: every rank writes into `.tmp-step_N` and fsyncs; after a barrier rank 0 writes the manifest,
renames the folder to `step_N`, fsyncs the parent and only then moves `latest` (write + fsync + rename).
Retention deletes old checkpoints after that, never before. Loading checks the manifest; a truncated or
bit-flipped checkpoint is reported on one line and the previous good one is used. Tensors load with
`weights_only=True` or from safetensors: a checkpoint never runs pickled code.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from gendist.distributed import barrier, is_main
from gendist.fsutil import fsync_path, write_bytes_atomic

MANIFEST = "manifest.json"
LATEST = "latest"
CHUNK = 1 << 20


def fault_point(name: str, step: int) -> None:
    """Fault injection for tests: GENDIST_FAULT_SAVE=<name>@<step> kills this process (SIGKILL) at that
    point of the save of <step>, as a node failure would. Points, in order: files_written, manifest_written,
    renamed (the folder is complete but `latest` has not moved yet)."""
    if os.environ.get("GENDIST_FAULT_SAVE") == f"{name}@{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
    fsync_path(path)


def save_torch(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())


def load_torch(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


class CheckpointWriter:
    """One save: `begin` (all ranks) -> write files into `.folder` -> `commit` (all ranks)."""

    def __init__(self, root: Path, step: int):
        self.root, self.step = root, step
        self.final = root / step_dir_name(step)
        self.folder = root / f".tmp-{step_dir_name(step)}"

    def begin(self) -> Path:
        if is_main():
            self.root.mkdir(parents=True, exist_ok=True)
            if self.folder.exists():  # left by a save that was killed
                shutil.rmtree(self.folder)
            self.folder.mkdir(parents=True)
        barrier()
        return self.folder

    def commit(self, trainer_state: dict, keep: int) -> Path:
        """Manifest, rename, move `latest`, then retention. Every rank must call it."""
        barrier()  # every rank's files are written and fsynced
        if is_main():
            write_bytes_atomic(self.folder / "trainer.json", json.dumps(trainer_state, indent=1).encode())
            fault_point("files_written", self.step)
            files = {str(p.relative_to(self.folder)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                     for p in sorted(self.folder.rglob("*")) if p.is_file()}
            manifest = {"step": self.step, "files": files}
            write_bytes_atomic(self.folder / MANIFEST, json.dumps(manifest, indent=1).encode())
            fault_point("manifest_written", self.step)
            if self.final.exists():  # an older save of the same step (rerun after a crash)
                shutil.rmtree(self.final)
            os.replace(self.folder, self.final)
            fsync_path(self.root)
            fault_point("renamed", self.step)
            write_bytes_atomic(self.root / LATEST, self.final.name.encode())
            apply_retention(self.root, keep)
        barrier()
        return self.final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete-looking checkpoint folders, newest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_")]
    return sorted(found, key=lambda p: p.name, reverse=True)


def apply_retention(root: Path, keep: int) -> None:
    for old in list_checkpoints(root)[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def verify(folder: Path) -> str | None:
    """None if the checkpoint matches its manifest, else what is wrong (one line)."""
    manifest_path = folder / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as error:
        return f"{manifest_path}: unreadable manifest ({error.__class__.__name__})"
    for name, expected in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            return f"{path}: missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{path}: {path.stat().st_size} bytes, manifest says {expected['bytes']} (truncated?)"
        if sha256_file(path) != expected["sha256"]:
            return f"{path}: checksum mismatch (corrupted)"
    return None


def find_resumable(root: Path) -> Path | None:
    """The newest checkpoint that verifies, `latest` first; every rejected one is reported loudly."""
    candidates = list_checkpoints(root)
    pointer = root / LATEST
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if named in candidates:
            candidates.remove(named)
            candidates.insert(0, named)
    for folder in candidates:
        problem = verify(folder)
        if problem is None:
            return folder
        if is_main():
            print(f"gendist: WARNING: skipping checkpoint {folder.name}: {problem}; trying an older one",
                  file=sys.stderr, flush=True)
    return None


def read_trainer_state(folder: Path) -> dict:
    return json.loads((folder / "trainer.json").read_text())
