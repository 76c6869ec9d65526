"""Feature spaces for two-sample evaluation: `pixels`, `classifier:DIR` (a classifier trained by
`gendist classifier train`) and `inception:PATH` (Inception-v3 through torch-fidelity, from weights on local
disk; nothing is downloaded)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gendist.errors import UserError

FEATURE_SPECS = "pixels, classifier:DIR, inception:PATH"
BATCH = 1024


class Featurizer:
    """Maps samples (N, ...) to features (N, F); `labels` gives predicted classes (or modes) where it can."""

    name = "pixels"
    num_modes: int | None = None

    def features(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1).astype(np.float32)

    def labels(self, x: np.ndarray) -> np.ndarray | None:
        return None


class ClassifierFeatures(Featurizer):
    """The penultimate layer of a gendist classifier. Samples with k times its channels (same H x W) are
    split into k channel groups, each featurized and classified alone: features are concatenated and the
    mode is the k labels read as a number in base num_classes (stacked digits: 10^3 modes)."""

    def __init__(self, folder: Path, sample_shape: tuple[int, ...], key: str = "--features"):
        from gendist.classifier import load_classifier

        self.model, meta = load_classifier(folder)
        self.name = f"classifier:{folder}"
        shape, classes = tuple(meta["shape"]), int(meta["num_classes"])
        if len(shape) != len(sample_shape) or tuple(sample_shape[1:]) != shape[1:] or sample_shape[0] % shape[0]:
            raise UserError(f"{key} {self.name}: the classifier takes samples of shape {shape} (or k times its "
                            f"channels), the data have {tuple(sample_shape)}; train a classifier on data of this shape")
        self.groups = sample_shape[0] // shape[0] if len(shape) == 3 else 1
        self.channels, self.classes = shape[0], classes
        self.num_modes = classes ** self.groups

    def _groups(self, x: np.ndarray):
        for start in range(0, len(x), BATCH):
            batch = torch.from_numpy(np.ascontiguousarray(x[start:start + BATCH])).float()
            if self.groups == 1:
                yield [batch]
            else:
                yield [batch[:, g * self.channels:(g + 1) * self.channels] for g in range(self.groups)]

    @torch.no_grad()
    def features(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([torch.cat([self.model.features(part) for part in parts], 1).numpy()
                               for parts in self._groups(x)])

    @torch.no_grad()
    def labels(self, x: np.ndarray) -> np.ndarray:
        out = []
        for parts in self._groups(x):
            mode = torch.zeros(len(parts[0]), dtype=torch.long)
            for part in parts:
                mode = mode * self.classes + self.model(part).argmax(1)
            out.append(mode.numpy())
        return np.concatenate(out)


class InceptionFeatures(Featurizer):
    """2048-d pool features of torch-fidelity's Inception-v3 (the FID network) from a local weights file.
    Images are scaled to 0..255 uint8 and grey ones repeated to 3 channels, as torch-fidelity expects."""

    def __init__(self, weights: Path, sample_shape: tuple[int, ...], key: str = "--features"):
        if len(sample_shape) != 3 or sample_shape[0] not in (1, 3):
            raise UserError(f"{key} inception:{weights}: needs 1- or 3-channel images, the data have "
                            f"{tuple(sample_shape)}")
        if not weights.is_file():
            raise UserError(f"{key} inception:{weights}: no such file; pass the path of torch-fidelity's "
                            "Inception-v3 weights (pt_inception-2015-12-05-6726825d.pth) on local disk")
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError:
            raise UserError("--features inception:PATH needs torch-fidelity: pip install torch-fidelity "
                            "(it brings torchvision; install the CPU or CUDA build matching your torch)") from None
        self.name = f"inception:{weights}"
        self.model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                 feature_extractor_weights_path=str(weights)).eval()

    @torch.no_grad()
    def features(self, x: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(x), 256):
            batch = torch.from_numpy(np.clip(x[start:start + 256], 0.0, 1.0) * 255).round().to(torch.uint8)
            if batch.shape[1] == 1:
                batch = batch.repeat(1, 3, 1, 1)
            out.append(self.model(batch)[0].float().numpy())
        return np.concatenate(out)


def build_featurizer(spec: str, sample_shape: tuple[int, ...], key: str = "--features") -> Featurizer:
    """`key` names the option in error messages (--features, eval.features)."""
    name, _, argument = spec.partition(":")
    if spec == "pixels":
        return Featurizer()
    if name == "classifier" and argument:
        return ClassifierFeatures(Path(argument).expanduser(), sample_shape, key)
    if name == "inception" and argument:
        return InceptionFeatures(Path(argument).expanduser(), sample_shape, key)
    raise UserError(f"{key}: unknown feature space '{spec}'; expected one of {FEATURE_SPECS}")
