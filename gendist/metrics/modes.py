"""Mode coverage of a generator on a known mixture (e.g. the 8-Gaussian ring or the 5x5 grid).

Protocol of Srivastava et al. 2017 ("VEEGAN") and Lin et al. 2018 ("PacGAN"): draw 2,500 samples, assign
each to its nearest mode, call it high quality (HQ) when it lies within `threshold_std` standard deviations
of that mode, then count the modes that received at least one HQ sample and compare the HQ mode histogram
with the uniform one (the papers' "reverse KL").
"""
from __future__ import annotations

import math

import numpy as np
from sklearn.neighbors import NearestNeighbors

from gendist.metrics._arrays import ArrayLike, to_2d_numpy, to_2d_pair

KL_SMOOTHING = 1e-10  # added to every histogram bin so empty modes give a finite log


def kl_to_uniform(counts: np.ndarray) -> float:
    """KL(p || uniform) of the histogram `counts` (smoothed by KL_SMOOTHING); NaN when all counts are 0.

    The KL of any histogram to the uniform lies in [0, log num_modes]; an empty histogram has no
    distribution to compare, so NaN rather than a number that could be mistaken for a good score.
    """
    total = counts.sum()
    if total == 0:
        return math.nan
    probabilities = counts / total + KL_SMOOTHING
    uniform = 1.0 / len(counts)
    return float(np.sum(probabilities * np.log(probabilities / uniform)))


def mode_coverage(samples: ArrayLike, modes: ArrayLike, std: float, threshold_std: float = 3.0) -> dict:
    """Modes covered by high-quality samples (Srivastava et al. 2017; Lin et al. 2018).

    samples: (N, D) generated points; modes: (M, D) mixture centres; std: the mixture components' standard
    deviation. Returns modes_covered, hq_fraction, num_modes, per_mode_counts and kl_mode_histogram.
    """
    if std <= 0 or threshold_std <= 0:
        raise ValueError(f"std and threshold_std must be positive, got {std} and {threshold_std}")
    points, centres = to_2d_pair(samples, to_2d_numpy(modes, "modes"), ("samples", "modes"))
    distances, nearest = NearestNeighbors(n_neighbors=1).fit(centres).kneighbors(points)
    is_high_quality = distances[:, 0] <= threshold_std * std
    counts = np.bincount(nearest[is_high_quality, 0], minlength=len(centres))
    return {
        "modes_covered": int(np.count_nonzero(counts)),
        "hq_fraction": float(is_high_quality.mean()),
        "num_modes": len(centres),
        "per_mode_counts": [int(count) for count in counts],
        "kl_mode_histogram": kl_to_uniform(counts),
    }
