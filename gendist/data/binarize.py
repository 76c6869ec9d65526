"""Stochastic binarization of [0, 1] images for Bernoulli decoders (`data.binarize`).

fixed: each sample is binarized once, the same way every time it is read (a function of (seed, sample id));
dynamic: a new draw each time a sample is read (Burda et al. 2016), a function of (seed, step, phase, repeat,
micro-step, sample id). Both are keyed by the global sample id, never by a rank's position in the batch, so
2 ranks x batch b binarize exactly as 1 rank x batch 2b, and a resumed run redraws what the uninterrupted run
drew. The uniforms come from a counter-based hash (splitmix64) computed in torch: one vectorized pass per
batch, no generator object per sample.
"""
from __future__ import annotations

import numpy as np
import torch

_MASKS = {shift: (1 << (64 - shift)) - 1 for shift in (27, 30, 31, 40)}


def _signed(constant: int) -> int:
    return constant - (1 << 64) if constant >= 1 << 63 else constant


_MUL1, _MUL2 = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _logical_shift(values: torch.Tensor, shift: int) -> torch.Tensor:
    return (values >> shift) & _MASKS[shift]  # int64 >> is arithmetic: mask off the copied sign bits


def _mix(values: torch.Tensor) -> torch.Tensor:
    """splitmix64's finalizer on int64 tensors (multiplication wraps modulo 2^64)."""
    values = (values ^ _logical_shift(values, 30)) * _MUL1
    values = (values ^ _logical_shift(values, 27)) * _MUL2
    return values ^ _logical_shift(values, 31)


def base_key(*parts: int) -> int:
    """An int63 key from integers (seed, step, ...)."""
    state = np.random.SeedSequence([int(part) for part in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & ((1 << 63) - 1)


def hashed_uniforms(key: int, ids: torch.Tensor, shape: tuple[int, ...], device) -> torch.Tensor:
    """Uniforms in (0, 1) of shape (B, *shape), row i a function of (key, ids[i]) alone."""
    width = int(np.prod(shape))
    counters = ids.to(device=device, dtype=torch.int64).reshape(-1, 1) * width + torch.arange(
        width, device=device, dtype=torch.int64)  # (B, D)
    bits = _logical_shift(_mix(_mix(counters ^ key) + key), 40)  # top 24 bits
    return ((bits.double() + 0.5) / float(1 << 24)).reshape(len(ids), *shape)  # float64: never exactly 1


def binarize(x: torch.Tensor, ids: torch.Tensor, mode: str, seed: int, read_key: tuple[int, ...]) -> torch.Tensor:
    """x in [0, 1] (B, ...) -> {0, 1} with P(1) = x. `read_key` names the read (dynamic mode only)."""
    if mode == "none":
        return x
    key = base_key(seed, 7, *read_key) if mode == "dynamic" else base_key(seed, 11)
    uniforms = hashed_uniforms(key, ids, tuple(x.shape[1:]), x.device)
    return (uniforms < x.double()).to(x.dtype)


def binarize_held_out(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Held-out images binarized once by evaluation's per-chunk generator (fixed for a given seed and chunk)."""
    return (torch.rand(x.shape, generator=generator).to(x.device) < x.float()).to(x.dtype)
