"""Does a generator copy its training images? Pixel distance from each sample to the nearest training image
against the nearest held-out image (as many of each), with real held-out images as the reference.

    python benchmarks/nearest_images.py --data train2000.npz --samples RUN/samples10k.npy [RUN2/samples10k.npy ...]
                                        [--count 5000]

--data: an npz with x (N, ...), and `test` (bool, N) marking the held-out rows (benchmarks/fashion_mnist.py
--train-images writes one). The training set is every non-test row; the held-out comparison set is as many
held-out rows as there are training rows (the first ones), and the reference is the next as many held-out rows,
which no generator has seen. For each sample: ratio = distance to the nearest training image / distance to the
nearest held-out image. A generator that copies has many ratios far below 1 (and a median below 1); one that
does not reads like the reference (median 1.0, half closer to a training image).
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def nearest_ratios(points: torch.Tensor, train: torch.Tensor, held: torch.Tensor, block: int = 1000) -> dict:
    to_train = torch.cat([torch.cdist(points[i:i + block], train).min(1).values for i in range(0, len(points), block)])
    to_held = torch.cat([torch.cdist(points[i:i + block], held).min(1).values for i in range(0, len(points), block)])
    ratio = (to_train / to_held).numpy()
    return {"count": len(points), "median_nearest_train": float(to_train.median()),
            "median_nearest_held_out": float(to_held.median()), "median_ratio": float(np.median(ratio)),
            "closer_to_train": float(np.mean(ratio < 1)), "ratio_below_half": float(np.mean(ratio < 0.5))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--samples", nargs="+", required=True)
    parser.add_argument("--count", type=int, default=5000, help="samples per file")
    args = parser.parse_args()
    data = np.load(args.data)
    x, test = data["x"], data["test"].astype(bool)
    flat = lambda a: torch.from_numpy(np.ascontiguousarray(a).reshape(len(a), -1)).float()  # noqa: E731
    train = flat(x[~test])
    held_rows = x[test]
    if len(held_rows) < 2 * len(train):
        raise SystemExit(f"--data: {len(held_rows)} held-out rows; need {2 * len(train)} (twice the training rows)")
    held, reference = flat(held_rows[:len(train)]), flat(held_rows[len(train):2 * len(train)])
    print(json.dumps({"set": "real held-out images (reference)", **nearest_ratios(reference, train, held)}))
    for path in args.samples:
        samples = flat(np.load(path)[:args.count])
        print(json.dumps({"set": path, **nearest_ratios(samples, train, held)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
