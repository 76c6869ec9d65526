"""Deterministic, resumable, rank-aware loader over webdataset shards.

Everything a rank reads in an epoch is a pure function of (seed, epoch, rank, worker):
- the shard order is `default_rng([seed, epoch])`'s permutation of the shard list;
- `split_mode="shard"`: rank r, worker w read shards `order[r + world*w :: world*workers]`, or, when there
  are fewer shards than (rank, worker) slots, every slot reads all shards but decodes only the blocks whose
  running index falls on its slot; every rank then stops after the same number of batches (the minimum over
  ranks, computed from per-block sample counts) so collectives never wait on a rank that ran dry;
- `split_mode="global"`: all ranks read one stream (shuffle not seeded by rank) in batches of
  `batch_size * world_size * micro_batches` (one optimizer step's rows; `micro_batches` = train.grad_accum) and
  keep their `batch_size` rows of each micro-step: micro-step m of rank r gets rows
  `[(m * world_size + r) * batch_size, +batch_size)`, the layout of gendist.engine.noise. The data, epoch
  boundaries and shuffle-buffer flushes included, then depend only on the optimizer step's global batch;
- `split_mode="owner"`: a stable sample-to-rank assignment: rank r reads every shard and keeps the samples
  whose id % world_size == r, in its own seeded shuffle; per-datapoint state (a VAE's variational parameters
  per sample, gendist.engine.local_tables) then lives on the rank that reads the sample. The per-block counts
  of owned samples come from one scan of the sample ids at start-up;
- the shuffle buffer is seeded with `default_rng([seed, epoch, rank, worker])` (rank 0 in global mode).

Resume is replay-and-discard: `load_state_dict` makes the next epoch restart and drop the batches already
consumed. That costs reading them again, which is cheap because small samples are packed into blocks.

With `memory_cache_bytes > 0` (and no worker processes), a shard's decoded blocks are kept in memory once it has
been read whole without errors, up to that many bytes: later epochs then skip tar reading and decoding. The
cache holds blocks, not batches, so the shuffle and therefore every batch are the same with and without it.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from gendist.data.batching import count_batches, shuffle_batches, take_rows
from gendist.data.manifest import shard_block_sizes
from gendist.data.reading import Block, ShardError, ShardTask, SkipCounter, read_blocks
from gendist.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoaderPlan:
    """Everything that decides what a (rank, worker) reads; small and picklable for worker processes."""

    urls: tuple[str, ...]
    block_sizes: tuple[tuple[int, ...], ...]  # samples per block, per url
    seed: int
    batch_size: int
    rank: int
    world_size: int
    split_mode: str
    num_workers: int
    drop_last: bool
    shuffle_buffer: int
    on_error: str
    image_mode: str | None
    # owner mode: samples rank r owns in each block, [rank][url][block]
    owned_block_sizes: tuple[tuple[tuple[int, ...], ...], ...] | None = None
    micro_batches: int = 1  # global mode: micro-steps per optimizer step (train.grad_accum)

    @property
    def workers(self) -> int:
        return max(1, self.num_workers)

    @property
    def num_slots(self) -> int:
        return self.workers if self.split_mode in ("global", "owner") else self.world_size * self.workers

    @property
    def stream_batch_size(self) -> int:
        """Rows per batch of one slot's stream (global mode: one optimizer step's whole global batch)."""
        if self.split_mode == "global":
            return self.batch_size * self.world_size * self.micro_batches
        return self.batch_size

    @property
    def batches_per_stream_batch(self) -> int:
        """Batches this rank yields per stream batch (global mode: one per micro-step)."""
        return self.micro_batches if self.split_mode == "global" else 1

    def slot(self, rank: int, worker: int) -> int:
        # shard mode: order[rank::world][worker::workers] == order[rank + world*worker :: world*workers]
        return worker if self.split_mode in ("global", "owner") else rank + self.world_size * worker


def build_slot_tasks(plan: LoaderPlan, epoch: int, slot: int) -> list[ShardTask]:
    """Shards (and blocks within them) that `slot` reads in `epoch`, in reading order."""
    order = np.random.default_rng([plan.seed, epoch]).permutation(len(plan.urls))
    if len(plan.urls) >= plan.num_slots:
        return [ShardTask(plan.urls[i], plan.block_sizes[i]) for i in order[slot::plan.num_slots]]
    tasks, running = [], 0  # running: index of the shard's first block in the epoch's block stream
    for i in order:
        sizes = plan.block_sizes[i]
        keep = frozenset(b for b in range(len(sizes)) if (running + b) % plan.num_slots == slot)
        running += len(sizes)
        if keep:
            tasks.append(ShardTask(plan.urls[i], sizes, keep))
    return tasks


def slot_num_samples(plan: LoaderPlan, epoch: int, slot: int, rank: int = 0) -> int:
    tasks = build_slot_tasks(plan, epoch, slot)
    if plan.owned_block_sizes is None:
        return sum(sum(s for b, s in enumerate(t.block_sizes) if t.keep is None or b in t.keep) for t in tasks)
    owned = dict(zip(plan.urls, plan.owned_block_sizes[rank]))  # owner mode: the rank's samples per block
    return sum(sum(s for b, s in enumerate(owned[t.url]) if t.keep is None or b in t.keep) for t in tasks)


def batches_per_epoch(plan: LoaderPlan, epoch: int) -> int:
    """Batches every rank yields in `epoch`: the fewest any rank can fill (equal on all ranks)."""
    ranks = [0] if plan.split_mode == "global" else range(plan.world_size)
    return plan.batches_per_stream_batch * min(
        sum(count_batches(slot_num_samples(plan, epoch, plan.slot(rank, worker), rank), plan.stream_batch_size,
                          plan.drop_last) for worker in range(plan.workers))
        for rank in ranks)


class BlockCache:
    """Decoded blocks of whole shards, keyed by (url, blocks kept), up to `budget` bytes (first come first kept).

    A shard enters only when it was read to its end with no bad member skipped, so a cached epoch yields the
    same blocks, and the same skip count (zero), as reading the shard again would."""

    def __init__(self, budget: int) -> None:
        self.budget, self.used = budget, 0
        self.shards: dict[tuple[str, frozenset[int] | None], list[Block]] = {}

    def blocks(self, tasks: list[ShardTask], image_mode: str | None, on_error: str,
               skipped: SkipCounter) -> Iterator[Block]:
        for task in tasks:
            key = (task.url, task.keep)
            if key in self.shards:
                yield from self.shards[key]
                continue
            before, kept, size = skipped.count, [], 0
            for block in read_blocks([task], image_mode, on_error, skipped):
                if kept is not None:
                    size += sum(a.nbytes for a in block if a is not None)
                    if self.used + size <= self.budget:
                        kept.append(block)
                    else:
                        kept = None  # over the budget: this shard stays on disk
                yield block
            if kept is not None and skipped.count == before:
                self.shards[key], self.used = kept, self.used + size


def owned_rows(blocks, rank: int, world_size: int):
    """Owner mode: each block cut down to the samples this rank owns (id % world_size == rank)."""
    for block in blocks:
        rows = np.flatnonzero(block.idx % world_size == rank)
        if len(rows):
            yield take_rows(block, rows)


def count_owned(urls: list[str], block_sizes, image_mode: str | None, on_error: str, world_size: int, rank: int,
                cache: BlockCache | None = None):
    """([rank][url][block] -> samples of that block the rank owns, this rank's sample ids), from one scan.
    (The scan decodes every block once: the shards hold no separate id index; with a cache, it fills it.)"""
    counts = [[[0] * len(sizes) for sizes in block_sizes] for _ in range(world_size)]
    owned_ids = []
    try:
        for url_index, (url, sizes) in enumerate(zip(urls, block_sizes)):
            task = ShardTask(url, tuple(sizes))
            blocks = (cache.blocks if cache is not None else read_blocks)([task], image_mode, on_error, SkipCounter())
            for block_index, block in enumerate(blocks):
                owners = np.bincount(block.idx % world_size, minlength=world_size)
                for owner in range(world_size):
                    counts[owner][url_index][block_index] = int(owners[owner])
                owned_ids.append(block.idx[block.idx % world_size == rank])
    except ShardError as error:
        raise UserError(error.user_message()) from None
    ids = np.unique(np.concatenate(owned_ids)) if owned_ids else np.zeros(0, np.int64)
    return tuple(tuple(tuple(per_url) for per_url in per_rank) for per_rank in counts), ids


def iterate_slot(plan: LoaderPlan, epoch: int, worker: int, skipped: SkipCounter,
                 cache: BlockCache | None = None) -> Iterator[dict[str, Any]]:
    """Torch batches of this rank's `worker` in `epoch`; ShardError under on_error="raise"."""
    global_mode = plan.split_mode == "global"
    shuffle_rank = 0 if global_mode else plan.rank  # global mode: one stream shared by all ranks
    rng = np.random.default_rng([plan.seed, epoch, shuffle_rank, worker])
    tasks = build_slot_tasks(plan, epoch, plan.slot(plan.rank, worker))
    blocks = (cache.blocks(tasks, plan.image_mode, plan.on_error, skipped) if cache is not None
              else read_blocks(tasks, plan.image_mode, plan.on_error, skipped))
    if plan.split_mode == "owner":
        blocks = owned_rows(blocks, plan.rank, plan.world_size)
    if global_mode:  # micro-step m of this rank: global rows (m * world_size + rank) * batch_size onwards
        firsts = [(m * plan.world_size + plan.rank) * plan.batch_size for m in range(plan.micro_batches)]
        keep = tuple(slice(first, first + plan.batch_size) for first in firsts)
    else:
        keep = (slice(None),)
    for batch in shuffle_batches(blocks, rng, plan.stream_batch_size, plan.shuffle_buffer, plan.drop_last, keep):
        yield {key: torch.from_numpy(value) for key, value in batch.items()}


class EpochStream(IterableDataset):
    """One epoch of one rank for DataLoader workers: worker w yields its slot's batches, plus the skip count
    and any error as plain fields (a worker's exception would otherwise arrive as a multi-line traceback).
    The micro-batches cut from one stream batch travel as one item, `{"_batches": [...]}`: the DataLoader
    alternates workers per item, and one optimizer step's micro-batches must come from the same worker."""

    def __init__(self, plan: LoaderPlan, epoch: int) -> None:
        super().__init__()
        self.plan, self.epoch = plan, epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        skipped = SkipCounter()
        reported, group = 0, []
        try:
            for batch in iterate_slot(self.plan, self.epoch, worker, skipped):
                group.append(batch)
                if len(group) < self.plan.batches_per_stream_batch:
                    continue
                item = {"_batches": group, "_skipped": skipped.count - reported}
                reported, group = skipped.count, []
                yield item
        except ShardError as error:
            yield {"_error": error.user_message()}
        if skipped.count > reported:  # bad data after this worker's last batch: report it, without a batch
            yield {"_skipped": skipped.count - reported}


class ShardLoader:
    """Infinite iterable of batches `{"x": float32 (B, ...), "y": int64 (B,) if labelled, "idx": int64 (B,)}`.

    `manifest` (from `load_manifest`) gives per-block sample counts; without it each shard is scanned once.
    `skipped` counts bad shards/member groups passed over with `on_error="skip"`; in that mode a rank may end an
    epoch with fewer batches than the others (there is no data to fill them).
    With `drop_last=False` in global mode the last global batch may leave a high rank fewer (or zero) rows.
    With `num_workers > 0`, workers are started per epoch (an epoch is one DataLoader pass).
    `memory_cache_bytes`: decoded shards kept in memory between epochs (see the module's docstring); used only
    with `num_workers == 0`, where the blocks are decoded in this process.
    `pin_memory` (training on CUDA): worker batches arrive in page-locked memory, pinned by DataLoader's own
    thread, so the trainer's non-blocking copy to the device returns at once (with `num_workers == 0` batches
    are decoded, and would be pinned, on the training thread itself: not pinned).
    """

    def __init__(self, shard_urls: list[str], manifest: dict | None, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, split_mode: str = "shard", num_workers: int = 0, drop_last: bool = True,
                 shuffle_buffer: int = 4096, on_error: str = "raise", memory_cache_bytes: int = 0,
                 micro_batches: int = 1, pin_memory: bool = False) -> None:
        check_loader_arguments(shard_urls, batch_size, rank, world_size, split_mode, num_workers, on_error)
        if micro_batches < 1:
            raise UserError(f"train.grad_accum must be >= 1, got {micro_batches}")
        sizes, self.skipped = shard_block_sizes(list(shard_urls), manifest, on_error)
        self.plan = LoaderPlan(
            urls=tuple(shard_urls), block_sizes=tuple(tuple(s) for s in sizes), seed=seed, batch_size=batch_size,
            rank=rank, world_size=world_size, split_mode=split_mode, num_workers=num_workers, drop_last=drop_last,
            shuffle_buffer=shuffle_buffer, on_error=on_error,
            image_mode=(manifest or {}).get("image_mode"), micro_batches=micro_batches)
        self.cache = BlockCache(memory_cache_bytes) if memory_cache_bytes > 0 and num_workers == 0 else None
        self.pin_memory = pin_memory
        self.owned_ids: np.ndarray | None = None  # owner mode: the sample ids this rank reads
        if split_mode == "owner":
            owned, self.owned_ids = count_owned(list(shard_urls), sizes, self.plan.image_mode, on_error, world_size,
                                                rank, self.cache)
            self.plan = dataclasses.replace(self.plan, owned_block_sizes=owned)
        self.epoch = 0
        self.batches_in_epoch = 0  # batches of `epoch` already handed to the caller
        self._batch_counts: dict[int, int] = {}  # epoch -> batches per epoch
        self.num_batches(0)  # fail now, not mid-training, when the batch does not fit the data

    def num_batches(self, epoch: int | None = None) -> int:
        """Batches per epoch (default: the current one); the same on every rank."""
        epoch = self.epoch if epoch is None else epoch
        if epoch not in self._batch_counts:
            self._batch_counts = {epoch: batches_per_epoch(self.plan, epoch)}  # keep one: epochs go forward
        total = self._batch_counts[epoch]
        if total == 0:
            total_samples = sum(sum(sizes) for sizes in self.plan.block_sizes)
            accum = f" x grad_accum={self.plan.micro_batches}" if self.plan.micro_batches > 1 else ""
            raise UserError(f"data: batch_size={self.plan.batch_size} x world_size={self.plan.world_size}{accum} leaves "
                            f"no full batch for some rank in epoch {epoch} ({total_samples} samples in "
                            f"{len(self.plan.urls)} shards) — lower train.batch_size or add data")
        return total

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch at the next `iter()`."""
        self.epoch, self.batches_in_epoch = epoch, 0

    def state_dict(self) -> dict[str, Any]:
        """Position of the caller: `batches_in_epoch` batches of `epoch` have been yielded."""
        plan = self.plan
        return {"epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch, "seed": plan.seed,
                "batch_size": plan.batch_size, "rank": plan.rank, "world_size": plan.world_size,
                "split_mode": plan.split_mode, "num_workers": plan.num_workers, "micro_batches": plan.micro_batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at `state`'s position; call before `iter()`. Other settings that changed are logged: the
        position is then still honoured but the data stream differs from the saved run's."""
        changed = [key for key in ("seed", "batch_size", "rank", "world_size", "split_mode", "num_workers",
                                   "micro_batches")
                   if key in state and state[key] != getattr(self.plan, key)]
        if changed:
            log.warning("data loader: resuming with changed %s; the batch order will differ", ", ".join(changed))
        self.epoch, self.batches_in_epoch = int(state["epoch"]), int(state["batches_in_epoch"])

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield from self._iterate_epoch()

    def _iterate_epoch(self) -> Iterator[dict[str, torch.Tensor]]:
        """The rest of the current epoch: replays the already-consumed batches and discards them."""
        epoch, consumed = self.epoch, self.batches_in_epoch
        total = self.num_batches(epoch)
        if consumed >= total:  # a state saved at the very end of an epoch
            self.epoch, self.batches_in_epoch = epoch + 1, 0
            return
        produced = 0
        for batch in self._open_epoch(epoch):
            produced += 1
            if produced <= consumed:
                continue
            # advance the position before handing the batch over: a state_dict taken now resumes after it
            self.epoch, self.batches_in_epoch = (epoch + 1, 0) if produced == total else (epoch, produced)
            yield batch
            if produced == total:
                return
        if produced <= consumed:
            raise UserError(f"data: epoch {epoch} yielded no batches: every shard was unreadable "
                            f"({self.skipped} skipped) — re-run `gendist data prepare`")
        log.warning("data loader: epoch %d ended after %d of %d batches (%d bad shards/samples skipped)",
                    epoch, produced, total, self.skipped)
        self.epoch, self.batches_in_epoch = epoch + 1, 0

    def _open_epoch(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        if self.plan.num_workers == 0:
            counter = SkipCounter(self.skipped)
            try:
                for batch in iterate_slot(self.plan, epoch, 0, counter, self.cache):
                    self.skipped = counter.count
                    yield batch
            except ShardError as error:
                raise UserError(error.user_message()) from None
            self.skipped = counter.count
            return
        # DataLoader hands out worker batches round-robin in worker order: deterministic
        loader = DataLoader(EpochStream(self.plan, epoch), batch_size=None, num_workers=self.plan.num_workers,
                            pin_memory=self.pin_memory)
        for batch in loader:
            if "_error" in batch:
                raise UserError(batch["_error"])
            self.skipped += int(batch.pop("_skipped"))
            yield from batch.get("_batches", ())


def check_loader_arguments(urls: list[str], batch_size: int, rank: int, world_size: int, split_mode: str,
                           num_workers: int, on_error: str) -> None:
    if not urls:
        raise UserError("data: no shards given — run `gendist data prepare` or fix data.shards")
    if batch_size < 1:
        raise UserError(f"train.batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"data loader: rank {rank} is not in [0, world_size={world_size})")
    if split_mode not in ("shard", "global", "owner"):
        raise UserError(f"data.split_mode must be 'shard', 'global' or 'owner', got '{split_mode}'")
    if num_workers < 0:
        raise UserError(f"data.num_workers must be >= 0, got {num_workers}")
    if on_error not in ("raise", "skip"):
        raise UserError(f"data.on_error must be 'raise' or 'skip', got '{on_error}'")


def measure_throughput(urls: list[str], manifest: dict | None, batch_size: int, num_workers: int = 0,
                       shuffle_buffer: int = 4096) -> float:
    """Samples/s over one epoch (after a warm-up batch): reading, unpacking, shuffling, batching to tensors."""
    loader = ShardLoader(urls, manifest, batch_size=batch_size, seed=0, num_workers=num_workers,
                         shuffle_buffer=shuffle_buffer)
    total = loader.num_batches(0)
    batches = iter(loader)
    next(batches)
    start = time.perf_counter()
    samples = 0
    for _ in range(total - 1):
        samples += len(next(batches)["idx"])
    return samples / max(time.perf_counter() - start, 1e-9)


__all__ = ["ShardLoader", "LoaderPlan", "measure_throughput", "batches_per_epoch", "build_slot_tasks"]
