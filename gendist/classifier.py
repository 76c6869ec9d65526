"""A small classifier trained by gendist on labelled data, used as a feature extractor for evaluation.

`gendist classifier train --data SPEC --out DIR` fits it and prints its held-out accuracy. Its penultimate
layer gives features for Fréchet distance, KID, MMD and precision/recall (`--features classifier:DIR`), and
its predictions give class histograms and mode counts: on data with k times the classifier's channels
(stacked digits: 3 digits as 3 channels, classifier trained on 1-channel digits) each channel group is
classified on its own and a sample's mode is the tuple of its k labels (num_classes^k modes).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gendist.errors import UserError

WEIGHTS, META = "classifier.safetensors", "classifier.json"
FEATURES = 128  # width of the penultimate layer (the feature space)
VERSION = 2  # of the network: a classifier folder of another version is refused (its weights do not fit)


class Classifier(nn.Module):
    """Images: two 3x3 convolutions, each followed by ReLU and 2x2 max pooling, then the flattened map (dropout
    0.3 in training) through a linear layer to FEATURES and the class logits: the map keeps where things are,
    which global pooling threw away (Fashion-MNIST: test accuracy 0.84 with pooling, see benchmarks/RESULTS.md).
    Points: an MLP with the same head."""

    def __init__(self, shape: tuple[int, ...], num_classes: int):
        super().__init__()
        if len(shape) == 3:
            channels, height, width = shape
            pooled = math.ceil(math.ceil(height / 2) / 2) * math.ceil(math.ceil(width / 2) / 2)
            self.body: nn.Module = nn.Sequential(
                nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
                nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
                nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * pooled, FEATURES), nn.ReLU())
        else:
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), 256), nn.ReLU(),
                                      nn.Linear(256, FEATURES), nn.ReLU())
        self.head = nn.Linear(FEATURES, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _split(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, ...]:
    from sklearn.model_selection import train_test_split

    return tuple(train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed))


def read_labelled(data: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) from a folder made by `gendist data prepare` (its splits), or a
    source spec (built-in name, npz:PATH with x and y, folder:PATH of class folders; split 80/20, stratified)."""
    from gendist.data import load_manifest, load_source
    from gendist.data.sources import BUILTIN_SOURCES
    from gendist.engine.data_setup import iterate_in_order, split_urls

    path = Path(data).expanduser()
    if path.is_dir() and (path / "manifest.json").is_file():
        manifest = load_manifest(path)
        arrays = {}
        for split in ("train", "test"):
            batches = list(iterate_in_order(split_urls(path, manifest, split), manifest, 512))
            if not batches or "y" not in batches[0]:
                raise UserError(f"--data '{data}': split '{split}' has no labels; prepare labelled data")
            arrays[split] = (np.concatenate([b["x"].numpy() for b in batches]),
                             np.concatenate([b["y"].numpy() for b in batches]))
        return (*arrays["train"], *arrays["test"])
    if data.partition(":")[0] not in (*BUILTIN_SOURCES, "npz", "folder"):
        raise UserError(f"--data '{data}': not a prepared data folder or a source spec (a built-in name, "
                        "npz:PATH, folder:PATH)")
    source = load_source(data, seed)
    if source.y is None:
        raise UserError(f"--data '{data}': no labels (npz: add an array y; folder: one sub-folder per class)")
    if source.test_rows is not None:  # the source's own test set (Fashion-MNIST's 10,000)
        test = np.zeros(len(source.x), dtype=bool)
        test[source.test_rows] = True
        return source.x[~test], source.y[~test], source.x[test], source.y[test]
    x_train, x_test, y_train, y_test = _split(source.x, source.y, seed)
    return x_train, y_train, x_test, y_test


def train_classifier(data: str, out: Path, epochs: int = 40, seed: int = 0, batch_size: int = 128,
                     lr: float = 1e-3) -> dict:
    """Fit the classifier, write DIR/classifier.safetensors and DIR/classifier.json; returns the metadata."""
    from safetensors.torch import save_file

    x_train, y_train, x_test, y_test = read_labelled(data, seed)
    classes = np.unique(np.concatenate([y_train, y_test]))
    if classes.min() < 0:
        raise UserError(f"--data '{data}': labels must be 0, 1, ..., got {classes.min()}")
    num_classes = int(classes.max()) + 1
    shape = tuple(x_train.shape[1:])
    torch.manual_seed(seed)
    model = Classifier(shape, num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    x_t, y_t = torch.from_numpy(x_train).float(), torch.from_numpy(y_train).long()
    started = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x_t), generator=generator)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            loss = F.cross_entropy(model(x_t[rows]), y_t[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(torch.from_numpy(x_test[s:s + 1024]).float()).argmax(1)
                               for s in range(0, len(x_test), 1024)]).numpy()
    meta = {"version": VERSION, "shape": list(shape), "num_classes": num_classes, "test_accuracy": float((predicted == y_test).mean()),
            "num_train": len(x_train), "num_test": len(x_test), "epochs": epochs, "seed": seed, "data": data,
            "train_seconds": round(time.perf_counter() - started, 1)}
    try:
        out.mkdir(parents=True, exist_ok=True)
        save_file(model.state_dict(), str(out / WEIGHTS))
        (out / META).write_text(json.dumps(meta, indent=1))
    except OSError as error:
        raise UserError(f"--out '{out}': cannot write ({error.strerror or error}); pass a folder you can write") from None
    return meta


def load_classifier(folder: Path) -> tuple[Classifier, dict]:
    from safetensors.torch import load_file

    if not (folder / META).is_file() or not (folder / WEIGHTS).is_file():
        raise UserError(f"classifier '{folder}': no {META}/{WEIGHTS} there; make one with "
                        "`gendist classifier train --data SPEC --out DIR`")
    meta = json.loads((folder / META).read_text())
    if meta.get("version", 1) != VERSION:
        raise UserError(f"classifier '{folder}' was made by another version of gendist's classifier (its network "
                        "changed); train it again with `gendist classifier train --data SPEC --out DIR`")
    model = Classifier(tuple(meta["shape"]), int(meta["num_classes"]))
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    return model.eval(), meta
