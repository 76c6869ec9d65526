"""Input conversion shared by the metrics: numpy arrays or torch tensors in, float64 (N, D) numpy out."""
from __future__ import annotations

from typing import Union

import numpy as np
import torch
from einops import rearrange

ArrayLike = Union[np.ndarray, torch.Tensor]


def to_2d_numpy(data: ArrayLike, name: str = "input") -> np.ndarray:
    """Return `data` as a float64 (N, D) array; images (N, C, H, W) are flattened to (N, C*H*W).

    float64 because the metrics sum many kernel values or take matrix square roots, where float32
    round-off is comparable to the small differences we want to measure.
    """
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().to(torch.float64).numpy()
    array = np.asarray(data, dtype=np.float64)
    if array.ndim == 0:
        raise ValueError(f"{name} must have a sample dimension, got a scalar")
    if array.ndim == 1:  # N scalar samples
        array = array[:, None]
    array = rearrange(array, "n ... -> n (...)")
    if array.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return np.ascontiguousarray(array)


def to_2d_pair(x: ArrayLike, y: ArrayLike, names: tuple[str, str] = ("x", "y")) -> tuple[np.ndarray, np.ndarray]:
    """Convert two samples and check they live in the same feature space."""
    first, second = to_2d_numpy(x, names[0]), to_2d_numpy(y, names[1])
    if first.shape[1] != second.shape[1]:
        raise ValueError(f"{names[0]} and {names[1]} have different feature sizes: "
                         f"{first.shape[1]} vs {second.shape[1]}")
    return first, second
