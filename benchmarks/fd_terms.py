"""The Fréchet distance split into its two terms, to see why two sample sets differ in it:
||mu_r - mu_f||^2 (the means) and tr(C_r + C_f - 2 (C_r C_f)^1/2) (the covariances), with tr(C) of each set
(how far its features spread).

    python benchmarks/fd_terms.py --features classifier:DIR --real test.npy --fake A.npy [B.npy ...]

Features as `gendist eval` computes them (gendist.features); float64 statistics, scipy's sqrtm (this is a
diagnostic for a few hundred feature dimensions, not the evaluation's own exact form).
"""
from __future__ import annotations

import argparse
import json

import numpy as np
from scipy import linalg


def featurize(featurizer, x: np.ndarray, block: int = 500) -> np.ndarray:
    return np.concatenate([featurizer.features(x[i:i + block]) for i in range(0, len(x), block)]).astype(np.float64)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", required=True)
    parser.add_argument("--real", required=True)
    parser.add_argument("--fake", nargs="+", required=True)
    args = parser.parse_args()
    from gendist.features import build_featurizer

    real = np.load(args.real)
    featurizer = build_featurizer(args.features, tuple(real.shape[1:]))
    fr = featurize(featurizer, real)
    mean_r, cov_r = fr.mean(0), np.cov(fr, rowvar=False)
    for path in args.fake:
        ff = featurize(featurizer, np.load(path))
        mean_f, cov_f = ff.mean(0), np.cov(ff, rowvar=False)
        mean_term = float(((mean_r - mean_f) ** 2).sum())
        cov_term = float(np.trace(cov_r + cov_f - 2 * linalg.sqrtm(cov_r @ cov_f).real))
        print(json.dumps({"fake": path, "frechet_distance": mean_term + cov_term, "mean_term": mean_term,
                          "covariance_term": cov_term, "trace_cov_real": float(np.trace(cov_r)),
                          "trace_cov_fake": float(np.trace(cov_f))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
