"""Latent noise as a deterministic function of (seed, step, phase, repeat, call) and the global row.

For one optimizer step the engine draws one block of `grad_accum * world_size * rows` rows and each
(micro-step, rank) takes its slice, so a run with 2 ranks x batch b, or 2 micro-steps x b, sees exactly the
noise a single process with batch 2b sees (the data loader's `global` split mode does the same for data).
"""
from __future__ import annotations

import numpy as np
import torch


class StepNoise:
    def __init__(self, seed: int, device: torch.device, rank: int, world_size: int, grad_accum: int):
        self.seed, self.device = seed, device
        self.rank, self.world_size, self.grad_accum = rank, world_size, grad_accum
        self.key: tuple[int, ...] = (0, 0, 0)
        self.micro = 0
        self.calls = 0

    def start(self, step: int, phase_index: int, repeat: int, micro: int) -> "StepNoise":
        """Point the stream at one micro-step; returns self for use as a batch's noise source."""
        self.key, self.micro, self.calls = (step, phase_index, repeat), micro, 0
        return self

    def randn(self, rows: int, *tail: int) -> torch.Tensor:
        state = np.random.SeedSequence([self.seed, *self.key, self.calls]).generate_state(2, dtype=np.uint32)
        self.calls += 1
        generator = torch.Generator(device=self.device).manual_seed(int(state[0]) << 32 | int(state[1]))
        total = self.grad_accum * self.world_size * rows
        block = torch.randn(total, *tail, generator=generator, device=self.device)  # (accum * world * rows, ...)
        start = (self.micro * self.world_size + self.rank) * rows
        return block[start:start + rows]
