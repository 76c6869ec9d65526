"""Latent noise as a deterministic function of (seed, step, phase, repeat, call) and the global row.

Row r of micro-step m on rank k is global row `(m * world_size + k) * rows + r` of the optimizer step's
block, so a run with 2 ranks x batch b, or 2 micro-steps x b, sees exactly the noise a single process with
batch 2b sees (the data loader's `global` split mode does the same for data). The block is cut into chunks of
CHUNK_ROWS global rows, each drawn by torch's own generator seeded from (key, chunk index): a rank draws only
the chunks its rows fall in, so its cost is its own rows plus at most two partial chunks, whatever the world
size, and one generator per device is reseeded rather than created per call.
"""
from __future__ import annotations

import torch

CHUNK_ROWS = 128
_MASK = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    """splitmix64's step on a Python int (mod 2^64): a cheap, well-mixed seed derivation."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK
    return value ^ (value >> 31)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, step, phase, ...); any change of any part changes it."""
    state = 0
    for part in parts:
        state = _splitmix64(state ^ (int(part) & _MASK))
    return state >> 1


class StepNoise:
    def __init__(self, seed: int, device: torch.device, rank: int, world_size: int, grad_accum: int):
        self.seed, self.device = seed, device
        self.rank, self.world_size, self.grad_accum = rank, world_size, grad_accum
        self.generator = torch.Generator(device=device)
        self.key: tuple[int, ...] = (0, 0, 0)
        self.micro = 0
        self.calls = 0

    def start(self, step: int, phase_index: int, repeat: int, micro: int) -> "StepNoise":
        """Point the stream at one micro-step; returns self for use as a batch's noise source."""
        self.key, self.micro, self.calls = (step, phase_index, repeat), micro, 0
        return self

    def randn(self, rows: int, *tail: int) -> torch.Tensor:
        key = derive_seed(self.seed, *self.key, self.calls)
        self.calls += 1
        first = (self.micro * self.world_size + self.rank) * rows  # this rank's first row of the step's block
        start, stop = first // CHUNK_ROWS, (first + rows - 1) // CHUNK_ROWS + 1
        block = torch.empty((stop - start) * CHUNK_ROWS, *tail, device=self.device)  # drawn in place: no cat
        for index, chunk in enumerate(range(start, stop)):
            self.generator.manual_seed(derive_seed(key, chunk))
            torch.randn(CHUNK_ROWS, *tail, generator=self.generator, device=self.device,
                        out=block[index * CHUNK_ROWS:(index + 1) * CHUNK_ROWS])
        offset = first - start * CHUNK_ROWS
        return block[offset:offset + rows]
