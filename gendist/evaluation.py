"""Sample-based evaluation shared by the recipes: metrics that fit the data, not likelihood alone."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from gendist.data.info import DataInfo

MAX_REFERENCE_SAMPLES = 2500


def _reference(test_data: Iterable[torch.Tensor], limit: int) -> np.ndarray:
    rows, total = [], 0
    for x in test_data:
        rows.append(x.detach().float().cpu().reshape(x.shape[0], -1).numpy())
        total += x.shape[0]
        if total >= limit:
            break
    return np.concatenate(rows)[:limit]


def sample_metrics(samples: torch.Tensor, test_data: Iterable[torch.Tensor], info: DataInfo,
                   seed: int) -> dict[str, float]:
    """Mode coverage for mixtures; MMD, KID, Fréchet distance and precision/recall against held-out data."""
    from gendist.metrics import frechet_distance, kernel_inception_distance, mmd2, mode_coverage, precision_recall

    generated = samples.detach().float().cpu().reshape(samples.shape[0], -1).numpy()  # (N, D)
    metrics: dict[str, float] = {}
    if info.modes is not None and info.mode_std is not None:
        coverage = mode_coverage(generated, np.asarray(info.modes), info.mode_std)
        metrics.update(modes_covered=int(coverage["modes_covered"]), num_modes=int(coverage["num_modes"]),
                       hq_fraction=float(coverage["hq_fraction"]),
                       kl_mode_histogram=float(coverage["kl_mode_histogram"]))
    reference = _reference(test_data, MAX_REFERENCE_SAMPLES)
    if len(reference) >= 2:
        count = min(len(reference), len(generated))
        metrics["mmd2"] = float(mmd2(generated[:count], reference[:count]))
        metrics["frechet_distance"] = float(frechet_distance(generated, reference))
        kid = kernel_inception_distance(generated, reference, seed=seed)
        metrics["kid"] = float(kid["kid"])
        pr = precision_recall(reference, generated[:count])
        metrics.update(precision=float(pr["precision"]), recall=float(pr["recall"]))
    return metrics
