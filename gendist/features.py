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

    def __init__(self, folder: Path, sample_shape: tuple[int, ...], key: str = "--features",
                 device: torch.device | str = "cpu"):
        from gendist.classifier import load_classifier

        self.model, meta = load_classifier(folder)
        self.device = torch.device(device)
        self.model.to(self.device)
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
            batch = torch.from_numpy(np.ascontiguousarray(x[start:start + BATCH])).float().to(self.device)
            if self.groups == 1:
                yield [batch]
            else:
                yield [batch[:, g * self.channels:(g + 1) * self.channels] for g in range(self.groups)]

    @torch.no_grad()
    def features(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([torch.cat([self.model.features(part) for part in parts], 1).cpu().numpy()
                               for parts in self._groups(x)])

    @torch.no_grad()
    def labels(self, x: np.ndarray) -> np.ndarray:
        out = []
        for parts in self._groups(x):
            mode = torch.zeros(len(parts[0]), dtype=torch.long, device=self.device)
            for part in parts:
                mode = mode * self.classes + self.model(part).argmax(1)
            out.append(mode.cpu().numpy())
        return np.concatenate(out)


# torchvision's operators whose fake kernels its package registers at import whether or not its C++ library loaded
_TORCHVISION_UNCONDITIONAL_FAKES = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_declared_torchvision_ops = None  # the torch.library.Library that holds them (its lifetime is the declaration's)


def import_torch_fidelity():
    """torch-fidelity, imported. Its package imports torchvision (for its data sets and other feature
    extractors, none of which gendist uses). PyPI's torchvision for Linux is built against CUDA torch: beside a CPU
    build of torch its C++ library does not load, and its import then stops where it registers fake kernels for two
    of those operators (torchvision::nms, ::qnms). When that is the failure, the two operator schemas are declared
    (with no kernel: calling them still fails) and the import retried, so torch-fidelity's own Inception-v3 and
    metric code run on such machines as on GPU ones. A torchvision whose library loads is imported untouched."""
    global _declared_torchvision_ops
    import sys

    try:
        import torch_fidelity
        return torch_fidelity
    except ModuleNotFoundError as error:
        raise UserError(f"inception features need torch-fidelity ({error}): pip install torch-fidelity (it brings "
                        "torchvision; install the build matching your torch)") from None
    except RuntimeError as error:
        if "torchvision::" not in str(error) or _declared_torchvision_ops is not None:
            raise
    for name in [name for name in sys.modules if name.split(".")[0] in ("torchvision", "torch_fidelity")]:
        del sys.modules[name]  # the partial imports of the failed attempt
    library = torch.library.Library("torchvision", "FRAGMENT")
    for op, schema in _TORCHVISION_UNCONDITIONAL_FAKES.items():
        if not hasattr(torch.ops.torchvision, op):
            library.define(schema)
    _declared_torchvision_ops = library
    import torch_fidelity
    return torch_fidelity


class InceptionFeatures(Featurizer):
    """2048-d pool features of torch-fidelity's Inception-v3 (the FID network) from a local weights file, computed
    on `device`. Images are scaled to 0..255 uint8 and grey ones repeated to 3 channels, as torch-fidelity does
    with its own inputs (tests/test_inception_parity.py holds the two pipelines equal)."""

    def __init__(self, weights: Path, sample_shape: tuple[int, ...], key: str = "--features",
                 device: torch.device | str = "cpu"):
        if len(sample_shape) != 3 or sample_shape[0] not in (1, 3):
            raise UserError(f"{key} inception:{weights}: needs 1- or 3-channel images, the data have "
                            f"{tuple(sample_shape)}")
        if not weights.is_file():
            raise UserError(f"{key} inception:{weights}: no such file; pass the path of torch-fidelity's "
                            "Inception-v3 weights (pt_inception-2015-12-05-6726825d.pth) on local disk")
        import_torch_fidelity()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.name = f"inception:{weights}"
        self.device = torch.device(device)
        try:
            model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                feature_extractor_weights_path=str(weights))
        except (RuntimeError, KeyError, OSError, EOFError) as error:
            raise UserError(f"{key} inception:{weights}: not a torch-fidelity Inception-v3 state dict "
                            f"({str(error).splitlines()[0][:120]})") from None
        self.model = model.eval().to(self.device)

    @torch.no_grad()
    def features(self, x: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(x), 256):
            batch = torch.from_numpy(np.clip(x[start:start + 256], 0.0, 1.0) * 255).round().to(torch.uint8)
            if batch.shape[1] == 1:
                batch = batch.repeat(1, 3, 1, 1)
            out.append(self.model(batch.to(self.device, non_blocking=True))[0].float().cpu().numpy())
        return np.concatenate(out)


def build_featurizer(spec: str, sample_shape: tuple[int, ...], key: str = "--features",
                     device: torch.device | str = "cpu") -> Featurizer:
    """`key` names the option in error messages (--features, eval.features); `device` is where the network
    featurizes (evaluation passes the training device, so each rank featurizes its chunks on its own GPU)."""
    name, _, argument = spec.partition(":")
    if spec == "pixels":
        return Featurizer()
    if name == "classifier" and argument:
        return ClassifierFeatures(Path(argument).expanduser(), sample_shape, key, device)
    if name == "inception" and argument:
        return InceptionFeatures(Path(argument).expanduser(), sample_shape, key, device)
    raise UserError(f"{key}: unknown feature space '{spec}'; expected one of {FEATURE_SPECS}")
