"""Two unpaired npz domains for CycleGAN: the 8x8 digits (A) and other digits restyled (B: strokes thickened by a
2x2 grey dilation, then intensity inverted), from disjoint halves of scikit-learn's 1,797 digits, each with
labels and a 10% held-out mask. A change of style that is not a per-pixel map (the thickening depends on each
pixel's neighbours), as a new user would bring it (issue: "digits whose strokes were thickened and intensity
inverted, unpaired halves, from npz").

    python benchmarks/restyled_digits.py --out DIR [--seed 0]
    python benchmarks/cyclegan.py --config configs/cyclegan_digits_inverted.yaml data.source=npz:DIR/a.npz \\
        data.source_b=npz:DIR/b.npz
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.ndimage import grey_dilation
from sklearn.datasets import load_digits


def restyle(images: np.ndarray) -> np.ndarray:
    """(N, 1, H, W) in [0, 1] -> strokes thickened (2x2 grey dilation of each image), then 1 - intensity."""
    return 1.0 - grey_dilation(images, size=(1, 1, 2, 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(x))
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows, transform in (("a", order[: len(x) // 2], lambda v: v), ("b", order[len(x) // 2:], restyle)):
        test = np.zeros(len(rows), dtype=bool)
        test[rng.permutation(len(rows))[: len(rows) // 10]] = True
        np.savez(args.out / f"{name}.npz", x=transform(x[rows]).astype(np.float32), y=y[rows], test=test)
        print(f"{args.out / name}.npz: {len(rows)} images, {int(test.sum())} held out")


if __name__ == "__main__":
    main()
