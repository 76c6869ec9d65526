"""`--features inception:PATH` against torch-fidelity's own metric computation (calculate_metrics) on the same
images with the same network weights: a saved, randomly initialized copy of torch-fidelity's Inception-v3 (the
real weights ship in no package; with them the numbers are the standard FID and KID).

Bound: 1e-4 relative. Round-off floor: both sides run the same float32 network (in different batch sizes) and
differ in the matrix square root (gendist: exact singular values of the cross product; torch-fidelity:
eigenvalues of the 2048 x 2048 product) and KID's precision (torch-fidelity sums its kernels in float32),
measured at 1e-7 to 6e-7 relative (both metrics, grey and colour). The smallest bug caught: images converted to
uint8 by truncation instead of rounding (benchmarks/mutations.py: inception_truncates), another feature layer,
another KID kernel."""
from unittest import mock

import numpy as np
import pytest
import torch

from gendist.evaluation import compare_sets
from gendist.features import build_featurizer, import_torch_fidelity

COUNT = 20  # images per side: Inception-v3 at 299 x 299 costs about 0.1 s per image on 2 cores


def random_inception(path):
    """torch-fidelity's Inception-v3 with He-normal convolutions (so activations neither vanish nor explode
    through its 94 layers), saved as a state dict the way its real weights are."""
    import_torch_fidelity()
    import torch_fidelity.feature_extractor_inceptionv3 as module

    with mock.patch.object(module, "load_state_dict_from_url", lambda *args, **kwargs: {}), \
            mock.patch.object(module.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None):
        torch.manual_seed(0)
        net = module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for layer in net.modules():
        if isinstance(layer, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path)


class _Images(torch.utils.data.Dataset):
    """Images in [0, 1] as torch-fidelity takes them: uint8, 3 channels (the conversion gendist documents)."""

    def __init__(self, x: np.ndarray):
        self.x = torch.from_numpy(np.clip(x, 0, 1) * 255).round().to(torch.uint8)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        image = self.x[index]
        return image.repeat(3, 1, 1) if image.shape[0] == 1 else image


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "inception-random.pth"
    random_inception(path)
    return path


@pytest.mark.parametrize("channels", [1, 3])
def test_frechet_distance_and_kid_equal_torch_fidelitys_on_the_same_images_and_weights(weights, channels):
    """Catches a different image conversion (scaling, rounding, grey images not repeated to RGB), another
    feature layer, or a Frechet/KID formula that departs from the standard one."""
    from sklearn.datasets import load_digits

    torch_fidelity = import_torch_fidelity()
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8) in [0, 1]
    if channels == 3:  # colour: each class tinted its own way
        tint = np.stack([1 - digits.target / 9, np.full(len(images), 0.5), digits.target / 9], 1)[:, :, None, None]
        images = (images * tint).astype(np.float32)
    # two sets far apart (dark strokes on light against light on dark), so that KID stands well above the
    # float32 round-off of torch-fidelity's kernel sums (about 1e-7 absolute: 2.5e-4 of the KID between the two
    # halves of the plain digits, below 1e-6 of this one)
    low, high = images[digits.target < 5][:COUNT], 1 - images[digits.target >= 5][:COUNT]

    ours = compare_sets(low, high, ["fd", "kid"], build_featurizer(f"inception:{weights}", low.shape[1:]))
    theirs = torch_fidelity.calculate_metrics(
        input1=_Images(high), input2=_Images(low), fid=True, kid=True, kid_subset_size=COUNT, cuda=False,
        feature_extractor="inception-v3-compat", feature_extractor_weights_path=str(weights), cache=False,
        verbose=False, save_cpu_ram=True, batch_size=8)
    assert theirs["frechet_inception_distance"] > 1e-3  # the two halves differ in these features
    assert ours["frechet_distance"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-4)
    # KID: subsets of all COUNT samples, so every subset is the whole set and the RNGs don't matter
    print(f"frechet {ours['frechet_distance']:.9g} {theirs['frechet_inception_distance']:.9g} kid {ours['kid']:.9g} "
          f"{theirs['kernel_inception_distance_mean']:.9g}")
    assert ours["kid"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4)
