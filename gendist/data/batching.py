"""Seeded shuffle buffer and batching over a stream of blocks, vectorized with numpy.

A per-sample Python shuffle buffer would cap throughput near a million samples/s; here the buffer is a list
of blocks that is merged and permuted in one go whenever it holds `capacity + max(capacity, batch_size)`
rows. Every emitted batch is thus drawn uniformly from at least `capacity` buffered rows, each row is copied
about twice, and the order is a pure function of the block stream and the numpy generator passed in.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from gendist.data.reading import Block


def merge_blocks(blocks: list[Block]) -> Block:
    if len(blocks) == 1:
        return blocks[0]
    has_labels = blocks[0].y is not None
    return Block(np.concatenate([b.x for b in blocks]),
                 np.concatenate([b.y for b in blocks]) if has_labels else None,
                 np.concatenate([b.idx for b in blocks]))


def take_rows(block: Block, rows: np.ndarray) -> Block:
    return Block(block.x[rows], block.y[rows] if block.y is not None else None, block.idx[rows])


def to_batch(block: Block, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Gather `rows` into a batch dict; uint8 images become float32 in [0, 1] only here, at the last moment."""
    picked = take_rows(block, rows)
    x = picked.x.astype(np.float32) / 255.0 if picked.x.dtype == np.uint8 else picked.x
    batch = {"x": x, "idx": picked.idx}
    if picked.y is not None:
        batch["y"] = picked.y
    return batch


def shuffle_batches(blocks: Iterable[Block], rng: np.random.Generator, batch_size: int, capacity: int,
                    drop_last: bool, keep: slice | tuple[slice, ...] = slice(None)) -> Iterator[dict[str, np.ndarray]]:
    """Batches of `batch_size` rows drawn through a shuffle buffer of `capacity` rows (<= 1: stream order).

    `keep` selects rows of every batch (global split mode: this rank's share of a global batch); a tuple of
    slices yields one batch per slice, in order, from every batch of the stream (one per micro-step).
    """
    keeps = keep if isinstance(keep, tuple) else (keep,)
    shuffle = capacity > 1
    reserve = capacity if shuffle else 0  # rows held back to mix with what arrives next
    threshold = reserve + max(reserve, batch_size)
    pending: list[Block] = []
    count = 0
    for block in blocks:
        pending.append(block)
        count += len(block.idx)
        if count < threshold:
            continue
        merged = merge_blocks(pending)
        order = rng.permutation(count) if shuffle else np.arange(count)
        num_batches = (count - reserve) // batch_size
        for start in range(0, num_batches * batch_size, batch_size):
            rows = order[start:start + batch_size]
            for part in keeps:
                yield to_batch(merged, rows[part])
        rest = order[num_batches * batch_size:]
        pending, count = [take_rows(merged, rest)], len(rest)
    if count == 0:
        return
    merged = merge_blocks(pending)
    order = rng.permutation(count) if shuffle else np.arange(count)
    for start in range(0, count, batch_size):
        rows = order[start:start + batch_size]
        if len(rows) < batch_size and drop_last:
            return
        for part in keeps:
            yield to_batch(merged, rows[part])


def count_batches(num_samples: int, batch_size: int, drop_last: bool) -> int:
    """Batches `shuffle_batches` yields for a stream of `num_samples` rows."""
    return num_samples // batch_size if drop_last else -(-num_samples // batch_size)


__all__ = ["shuffle_batches", "count_batches"]
