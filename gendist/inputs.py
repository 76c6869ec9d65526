"""Reading the inputs of `gendist encode` / `gendist translate` (any data a user points at) and writing
their outputs (an array, one grid, or a folder of images)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gendist.errors import UserError


def read_inputs(path: Path, split: str = "test") -> np.ndarray:
    """Samples (N, ...) float32 in file order from an .npz (array `x`), an .npy array, an image folder, a
    folder written by `gendist data prepare` (its `split`), or a shard path/glob/brace pattern."""
    return read_labelled_inputs(path, split)[0]


def read_labelled_inputs(path: Path, split: str = "test") -> tuple[np.ndarray, np.ndarray | None]:
    """`read_inputs`' samples and their labels (N,) int64 where the input has them (an .npz's `y`, class
    subfolders, a labelled prepared folder or shards); None where it has none (an .npy array)."""
    from gendist.data import load_manifest, load_source, resolve_shards
    from gendist.engine.data_setup import split_urls

    text = str(path)
    if ".tar" in text:
        return _read_shards(resolve_shards(text), None)
    if not path.exists():
        raise UserError(f"input '{path}' not found; pass an .npz/.npy file, an image folder, a folder made by "
                        "`gendist data prepare`, or shards (train-*.tar)")
    if path.suffix == ".npz":
        source = load_source(f"npz:{path}")
        return source.x, source.y
    if path.suffix == ".npy":
        try:
            x = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise UserError(f"input '{path}': unreadable .npy ({error})") from None
        if x.dtype.kind not in "fiub" or x.ndim < 2:
            raise UserError(f"input '{path}': expected a numeric array (N, ...), got dtype {x.dtype}, shape {x.shape}")
        return x.astype(np.float32), None
    if path.is_dir() and (path / "manifest.json").is_file():
        manifest = load_manifest(path)
        if split not in manifest["splits"]:
            raise UserError(f"input '{path}': no split '{split}' (splits: {', '.join(manifest['splits'])})")
        return _read_shards(split_urls(path, manifest, split), manifest)
    if path.is_dir():
        source = load_source(f"folder:{path}")
        return source.x, source.y
    raise UserError(f"input '{path}': not an .npz/.npy file, an image folder, a prepared data folder or shards")


def _read_shards(urls: list[str], manifest: dict | None) -> tuple[np.ndarray, np.ndarray | None]:
    from gendist.engine.data_setup import iterate_in_order

    batches = list(iterate_in_order(urls, manifest, 256))
    x = np.concatenate([batch["x"].numpy() for batch in batches]).astype(np.float32)
    labelled = all(batch.get("y") is not None for batch in batches)
    return x, np.concatenate([batch["y"].numpy() for batch in batches]).astype(np.int64) if labelled else None


def check_shape(x: np.ndarray, expected: tuple[int, ...], path: Path, what: str) -> None:
    if tuple(x.shape[1:]) != tuple(expected):
        raise UserError(f"input '{path}': samples of shape {tuple(x.shape[1:])}, but the run's {what} has "
                        f"{tuple(expected)}; pass data of the shape the model was trained on")


@torch.no_grad()
def map_batches(function, x: np.ndarray, batch_size: int = 512, labels: np.ndarray | None = None) -> np.ndarray:
    """function(x_batch) per batch of rows, or function(x_batch, labels_batch) when `labels` (N,) are given."""
    outputs = [function(torch.from_numpy(x[start:start + batch_size]),
                        *(() if labels is None else (torch.from_numpy(labels[start:start + batch_size]),)))
               .float().cpu().numpy() for start in range(0, len(x), batch_size)]
    return np.concatenate(outputs)


def check_class(classes: int, requested: int, run_dir: Path) -> None:
    """`--class K` of `gendist sample` / `encode`: a one-line error unless the run has class K."""
    if not classes:
        raise UserError(f"--class: '{run_dir}' is not a class-conditional run (model.conditional=false); "
                        "drop --class")
    if not 0 <= requested < classes:
        raise UserError(f"--class must be in 0..{classes - 1} (the run's classes), got {requested}")


def labels_for(classes: int, requested: int | None, labels: np.ndarray | None, rows: int, path: Path,
               run_dir: Path) -> np.ndarray | None:
    """The labels a run encodes its `rows` inputs at: --class K for every row, or the inputs' own labels (a
    class-conditional run); None for a run without classes. One-line errors for what cannot work."""
    if requested is not None:
        check_class(classes, requested, run_dir)
        return np.full(rows, requested, dtype=np.int64)
    if not classes:
        return None
    if labels is None:
        raise UserError(f"input '{path}' has no labels, and this class-conditional run encodes each image given its "
                        "class: pass labelled data (an .npz with an array y, class subfolders, a labelled prepared "
                        "folder) or --class K")
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise UserError(f"input '{path}': labels in {int(labels.min())}..{int(labels.max())}, but the run has "
                        f"{classes} classes (0..{classes - 1}); pass the labels it was trained with")
    return labels.astype(np.int64)


def write_outputs(array: np.ndarray, out: Path, info) -> str:
    """x.npy: the array; grid.png: one image grid; anything else: a folder of PNGs (images only)."""
    from gendist.tracking import save_samples

    try:
        if out.suffix == ".npy":
            out.parent.mkdir(parents=True, exist_ok=True)
            np.save(out, array)
            return str(out)
        if out.suffix == ".png":
            save_samples(torch.from_numpy(array), info, out)
            return str(out)
        if info.kind != "images":
            raise UserError(f"--out '{out}': points are written as .npy (or a .png plot)")
        from PIL import Image

        out.mkdir(parents=True, exist_ok=True)
        pixels = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)  # (N, C, H, W)
        for index, image in enumerate(pixels):
            image = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)  # (H, W) or (H, W, C)
            Image.fromarray(image).save(out / f"{index:06d}.png")
        return f"{out}/000000.png .. {len(pixels) - 1:06d}.png"
    except OSError as error:
        raise UserError(f"--out '{out}': cannot write ({error.strerror or error}); pass a path you can write") from None
