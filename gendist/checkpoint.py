"""Atomic, validated checkpoints, and the one place that spells out a checkpoint folder's layout.

Layout of `RUN/checkpoints/`:
    step_00000500/   manifest.json      size + xxh3-128 of every file (older checkpoints: sha256)
                     trainer.json       step, counters, world size, strategy, W&B run id
                     players/NET.safetensors, players/ema_NET.safetensors   full weights of each network
                     optim.pt           optimizer and loss-scaler state (replicated strategies, FSDP gathered)
                     rank_00000.pt      RNG, data position, per-datapoint rows of each rank
                     engines/UNIT/      DeepSpeed's own files, one engine per trained unit
                     sharded/           FSDP: torch.distributed.checkpoint, each rank writes its own shards
                                        of every unit and optimizer (.metadata + __R_0.distcp), nothing is
                                        gathered; it reshards on load when the world size changed
    latest           name of the newest complete checkpoint

Components hand their state to a `CheckpointWriter` (`add_tensors`, `add_torch`) under the names below; the
writer serializes, checksums (while the bytes are in memory: nothing is read back) and writes each rank's
files, then rank 0 commits. Ordering rules: every rank writes into `.tmp-step_N`, fsyncs, and records its
files' sizes and checksums in `.done-rank_R.json`; once every rank's record is there rank 0 writes the
manifest, renames the folder to `step_N`, fsyncs the parent and only then moves `latest` (write + fsync +
rename). Retention deletes old checkpoints after that, never before. With `ckpt.async_save` the state is
copied to host memory at the step (the only stall) and written and committed by a background thread while
training goes on; the next save, evaluation's best-checkpoint copy and the end of the run wait for it.
Loading checks the manifest; a truncated or bit-flipped checkpoint is reported on one line and the previous
good one is used. Tensors load with `weights_only=True` or from safetensors: a checkpoint never runs
pickled code.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import torch
import xxhash
from safetensors.torch import load_file, save_file

from gendist.distributed import barrier, is_main
from gendist.fsutil import fsync_path, write_bytes_atomic

MANIFEST = "manifest.json"
LATEST = "latest"
TRAINER_FILE = "trainer.json"
NETWORKS_DIR = "players"
OPTIMIZER_FILE = "optim.pt"
ENGINES_DIR = "engines"
SHARDED_DIR = "sharded"  # torch.distributed.checkpoint: each rank's shards of units and optimizers (FSDP)
CHUNK = 1 << 20
DIGEST = "xxh3_128"  # 2+ GB/s on one core (sha256: 0.5): checksumming never dominates a save


# -- layout ------------------------------------------------------------------------------------------------
def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def network_file(network: str) -> str:
    return f"{NETWORKS_DIR}/{network}.safetensors"


def ema_file(network: str) -> str:
    return f"{NETWORKS_DIR}/ema_{network}.safetensors"


def rank_file(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def rank_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("rank_*.pt"))


def engine_dir(folder: Path, unit: str) -> Path:
    return folder / ENGINES_DIR / unit


def _done_file(rank: int) -> str:
    return f".done-rank_{rank:05d}.json"


# -- files -------------------------------------------------------------------------------------------------
def fault_point(name: str, step: int) -> None:
    """Fault injection for tests: GENDIST_FAULT_SAVE=<name>@<step> kills this process (SIGKILL) at that
    point of the save of <step>, as a node failure would. Points, in order: files_written, manifest_written,
    renamed (the folder is complete but `latest` has not moved yet)."""
    if os.environ.get("GENDIST_FAULT_SAVE") == f"{name}@{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def digest_file(path: Path) -> str:
    """xxh3-128 of a file, read in 1 MiB chunks into one reused buffer (page-cache speed)."""
    digest = xxhash.xxh3_128()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


class HashingFile:
    """A write-only file that checksums what passes through it. Each write goes to the file in a helper
    thread while this thread hashes the same bytes (the write syscall releases the GIL, so hashing costs
    no extra time), and returns only when both are done: the caller may reuse its buffer at once."""

    def __init__(self, handle, pool):
        self.handle, self.pool = handle, pool
        self.digest = xxhash.xxh3_128()
        self.size = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if len(view) < CHUNK:  # headers and small records: not worth a thread hop
            self.handle.write(view)
            self.digest.update(view)
        else:
            pending = self.pool.submit(self.handle.write, view)
            self.digest.update(view)
            pending.result()
        self.size += len(view)
        return len(view)

    def flush(self) -> None:
        self.handle.flush()


_WRITER_POOL = None


def _writer_pool():
    global _WRITER_POOL
    if _WRITER_POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _WRITER_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gendist-write")
    return _WRITER_POOL


def write_file(path: Path, data: bytes | memoryview) -> dict:
    """Write + fsync; returns the manifest entry (size and checksum of exactly these bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return {"bytes": len(data), DIGEST: xxhash.xxh3_128(data).hexdigest()}


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> dict:
    """safetensors (written by the library straight to the file), fsynced, then checksummed from the page
    cache: the format has no streaming writer to hash through."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
    fsync_path(path)
    return {"bytes": path.stat().st_size, DIGEST: digest_file(path)}


def save_torch(path: Path, obj) -> dict:
    """torch.save streamed through a HashingFile, fsynced; returns the manifest entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        hashing = HashingFile(handle, _writer_pool())
        torch.save(obj, hashing)
        handle.flush()
        os.fsync(handle.fileno())
    return {"bytes": hashing.size, DIGEST: hashing.digest.hexdigest()}


def load_torch(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def host_copy(obj):
    """`obj` with every tensor copied to host memory (a snapshot that later training steps cannot change)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {key: host_copy(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_copy(value) for value in obj)
    return obj


# -- saving ------------------------------------------------------------------------------------------------
class CheckpointWriter:
    """One save: `begin` (all ranks) -> `add_*` (each rank its own files) -> `commit` (all ranks), or
    `commit_async` (all ranks) then `wait`. Files written straight into `folder` (DeepSpeed's) are
    checksummed by rank 0 at commit by reading them back."""

    def __init__(self, root: Path, step: int, rank: int = 0, world_size: int = 1, timeout_s: float = 1800):
        self.root, self.step, self.rank, self.world_size = root, step, rank, world_size
        self.final = root / step_dir_name(step)
        self.folder = root / f".tmp-{step_dir_name(step)}"
        self.timeout_s = timeout_s
        self.staged: list[tuple[str, str, object]] = []  # (relative path, "tensors" | "torch", state)
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def begin(self) -> Path:
        if is_main():
            self.root.mkdir(parents=True, exist_ok=True)
            if self.folder.exists():  # left by a save that was killed
                shutil.rmtree(self.folder)
            self.folder.mkdir(parents=True)
        barrier()
        return self.folder

    def add_tensors(self, relative: str, tensors: dict[str, torch.Tensor]) -> None:
        self.staged.append((relative, "tensors", tensors))

    def add_torch(self, relative: str, obj) -> None:
        self.staged.append((relative, "torch", obj))

    def write_staged(self) -> dict[str, dict]:
        """Serialize, checksum and write this rank's staged files, then its record of them."""
        entries = {}
        for relative, kind, state in self.staged:
            path = self.folder / relative
            entries[relative] = save_tensors(path, state) if kind == "tensors" else save_torch(path, state)
        self.staged.clear()
        write_file(self.folder / _done_file(self.rank), json.dumps(entries).encode())
        return entries

    def commit(self, trainer_state: dict, keep: int) -> Path:
        """Write this rank's files; rank 0 then writes the manifest, renames, moves `latest` and applies
        retention. Every rank must call it."""
        self.write_staged()
        barrier()  # every rank's files are written and fsynced
        if is_main():
            self._finish(trainer_state, keep)
        barrier()
        return self.final

    def commit_async(self, trainer_state: dict, keep: int) -> None:
        """Snapshot the staged state to host memory now; write (and on rank 0 commit, once every rank's
        record is there) in a background thread. No collective runs in the thread."""
        self.staged = [(relative, kind, host_copy(state)) for relative, kind, state in self.staged]
        barrier()  # files written into the folder directly (none under async strategies) are complete

        def work():
            try:
                self.write_staged()
                if is_main():
                    self._wait_for_ranks()
                    self._finish(trainer_state, keep)
            except BaseException as error:  # re-raised by `wait` in the training thread
                self.error = error

        self.thread = threading.Thread(target=work, name=f"gendist-save-{self.step}", daemon=True)
        self.thread.start()

    def wait(self) -> None:
        """Block until a `commit_async` is done; its error, if any, is raised here."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def _wait_for_ranks(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not all((self.folder / _done_file(rank)).is_file() for rank in range(self.world_size)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"checkpoint step {self.step}: not every rank wrote its files within "
                                   f"{self.timeout_s:.0f} s; the previous checkpoint stays the latest")
            time.sleep(0.01)

    def _finish(self, trainer_state: dict, keep: int) -> None:
        """Rank 0: trainer state, manifest, rename, `latest`, retention (the commit's ordering rules)."""
        files = {TRAINER_FILE: write_file(self.folder / TRAINER_FILE, json.dumps(trainer_state, indent=1).encode())}
        fault_point("files_written", self.step)
        for rank in range(self.world_size):
            record = self.folder / _done_file(rank)
            files.update(json.loads(record.read_text()))
            record.unlink()
        for path in sorted(self.folder.rglob("*")):  # files a component wrote itself (DeepSpeed's engines)
            relative = str(path.relative_to(self.folder))
            if path.is_file() and relative not in files:
                files[relative] = {"bytes": path.stat().st_size, DIGEST: digest_file(path)}
        manifest = {"step": self.step, "files": dict(sorted(files.items()))}
        write_bytes_atomic(self.folder / MANIFEST, json.dumps(manifest, indent=1).encode())
        fault_point("manifest_written", self.step)
        if self.final.exists():  # an older save of the same step (rerun after a crash)
            shutil.rmtree(self.final)
        os.replace(self.folder, self.final)
        fsync_path(self.root)
        fault_point("renamed", self.step)
        write_bytes_atomic(self.root / LATEST, self.final.name.encode())
        apply_retention(self.root, keep)


# -- loading -----------------------------------------------------------------------------------------------
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
        actual = digest_file(path) if DIGEST in expected else sha256_file(path)
        if actual != expected.get(DIGEST, expected.get("sha256")):
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
    return json.loads((folder / TRAINER_FILE).read_text())


def load_network(folder: Path, network: str) -> dict[str, torch.Tensor]:
    return load_tensors(folder / network_file(network))


# torch.distributed.checkpoint's `.metadata` is a pickle that its FileSystemReader loads with a plain
# `pickle.load`: a tampered file would run code. These are the only globals it holds (DCP of torch 2.13:
# dataclasses describing shards, torch.Size, dtypes, the layout helper torch's own weights-only loader
# allows, and the checkpoint's path).
_DCP_METADATA_GLOBALS = {
    *(("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
    ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict"),
}


def load_dcp_metadata(path: Path):
    """DCP's metadata read by an unpickler that builds only the allow-listed types; anything else is a
    one-line UserError naming the file, and nothing in it runs."""
    import pickle

    from gendist.errors import UserError

    class Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if (module, name) in _DCP_METADATA_GLOBALS or (
                    module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
                return super().find_class(module, name)
            raise UserError(f"checkpoint file {path} holds a pickled object gendist refuses to load ({module}."
                            f"{name}); it may have been tampered with: resume from another checkpoint")

    with open(path, "rb") as handle:
        return Restricted(handle).load()


def sharded_reader(folder: Path):
    """A torch.distributed.checkpoint reader of `folder` whose metadata goes through `load_dcp_metadata`
    (its tensors and byte items are read weights-only by DCP itself)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            rank = kwargs.get("rank")
            metadata = load_dcp_metadata(Path(self._get_metadata_path(rank)))
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(str(folder))
