"""Real image sets from Debian packages (`fashion_mnist`, `emoji`) and resizing any image source
(`gendist data prepare --resize H W --crop center|none`, `data.resize`)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from gendist.cli import main
from gendist.config import load_config
from gendist.data import load_source, prepare_dataset
from gendist.data import sources
from gendist.data.sources import FASHION_MNIST_CLASSES, center_box, resize_images
from gendist.errors import UserError


def installed(name: str) -> None:
    """Skip where the Debian package is missing, except under CI, whose set-up installs it (then: fail)."""
    package, path = sources.PACKAGES[name]
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{package} is not installed: launch/setup_env.sh should have installed it")
        pytest.skip(f"needs the Debian package {package}")


def test_fashion_mnist_keeps_its_shipped_split_and_labels(tmp_path):
    """Catches a random split instead of the shipped one (train and test images mixed: the test scores of
    every benchmark would be on training images), lost or shuffled labels, and a wrong pixel scale."""
    installed("fashion_mnist")
    data = load_source("fashion_mnist")
    assert data.x.shape == (70_000, 1, 28, 28) and data.x.dtype == np.float32 and data.image_mode == "L"
    assert 0.0 == data.x.min() and data.x.max() == 1.0
    assert np.bincount(data.y).tolist() == [7_000] * 10 and len(FASHION_MNIST_CLASSES) == 10
    assert data.test_rows.tolist() == list(range(60_000, 70_000))
    manifest = prepare_dataset("fashion_mnist", tmp_path / "fm", shard_size=40_000)
    assert manifest["split"] == "source" and manifest["has_labels"]
    assert {k: v["num_samples"] for k, v in manifest["splits"].items()} == {"train": 60_000, "test": 10_000}
    # the test shards hold exactly the shipped test images, with their labels
    from gendist.data.reading import decode_group, iterate_groups

    blocks = [decode_group(group, None) for shard in manifest["splits"]["test"]["shards"]
              for group in iterate_groups(str(tmp_path / "fm" / shard["name"]))]
    x, y = np.concatenate([b.x for b in blocks]), np.concatenate([b.y for b in blocks])
    stored = sorted((row.tobytes(), label) for row, label in zip(x, y.tolist()))
    shipped = sorted((row.tobytes(), label) for row, label in zip(data.x[60_000:], data.y[60_000:].tolist()))
    assert stored == shipped


def test_emoji_bitmaps_are_composited_on_white():
    """Catches transparent pixels kept black (the alpha channel dropped instead of composited) and glyphs of
    another size left out or stretched into the stack."""
    installed("emoji")
    data = load_source("emoji")
    assert data.x.shape == (3_926, 3, 128, 136) and data.y is None
    corners = data.x[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert np.median(corners) == 1.0  # the background of an emoji is white, not black
    assert 0.3 < data.x.mean() < 0.95  # and there is colour on it


def test_a_missing_package_is_named_in_one_line(monkeypatch):
    monkeypatch.setitem(sources.PACKAGES, "fashion_mnist", ("dataset-fashion-mnist", sources.Path("/nowhere/fm")))
    with pytest.raises(UserError, match="needs the Debian package dataset-fashion-mnist.*apt-get install"):
        load_source("fashion_mnist")


def test_resizing_does_not_alias():
    """Catches a resampling filter that samples instead of averaging (nearest, or bilinear without
    antialiasing): 1-pixel stripes shrunk 4x must become flat grey 0.5 (measured: mean 0.500, spread 0.00; a
    sampling filter picks one stripe's colour: all 0 or all 1)."""
    stripes = np.zeros((2, 1, 64, 64), dtype=np.float32)
    stripes[:, :, :, ::2] = 1.0
    small = resize_images(stripes, (16, 16), crop="none")
    assert small.shape == (2, 1, 16, 16)
    assert abs(small.mean() - 0.5) < 0.02 and small.std() < 0.05, (small.mean(), small.std())
    # NEAREST on the same image aliases: the test's own yardstick
    nearest = np.asarray(Image.fromarray(stripes[0, 0], mode="F").resize((16, 16), Image.NEAREST))
    assert abs(nearest.mean() - 0.5) > 0.4


def test_center_crop_keeps_the_middle_and_none_stretches():
    """Catches the crop box computed from (width, height) swapped, or crop=center ignored."""
    assert center_box(10, 20, (8, 8)) == (5, 0, 15, 10)  # a wide image loses its sides
    assert center_box(20, 10, (8, 8)) == (0, 5, 10, 15)
    image = np.zeros((1, 3, 10, 20), dtype=np.float32)
    image[..., 5:15] = 1.0  # the middle square is white, the sides black
    assert resize_images(image, (8, 8), crop="center").min() > 0.99
    stretched = resize_images(image, (8, 8), crop="none")
    assert stretched[..., 0].max() < 0.05 and stretched[..., 4].min() > 0.95


def test_prepare_resize_makes_one_shape_from_a_folder_of_mixed_sizes(tmp_path, capsys):
    """`gendist data prepare --resize H W`: photos of mixed sizes and aspect ratios become one shape."""
    rng = np.random.default_rng(0)
    (tmp_path / "photos").mkdir()
    for index, (h, w) in enumerate([(30, 40), (64, 48), (20, 20), (100, 37)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").save(tmp_path / "photos" / f"{index}.png")
    code = main(["data", "prepare", "--source", f"folder:{tmp_path / 'photos'}", "--out", str(tmp_path / "out"),
                 "--resize", "16", "24", "--test-fraction", "0.25"])
    assert code == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["sample_shape"] == [3, 16, 24] and manifest["resize"] == [16, 24] and manifest["crop"] == "center"


@pytest.mark.parametrize("argv, message", [
    (["--resize", "2", "8"], "two sizes H W between 4 and 4096"),
])
def test_bad_resize_exits_2_with_one_line(argv, message, tmp_path, capsys):
    code = main(["data", "prepare", "--source", "digits", "--out", str(tmp_path / "o"), *argv])
    assert code == 2 and message in capsys.readouterr().err


def test_resize_of_points_and_bad_config_are_refused(tmp_path):
    with pytest.raises(UserError, match="resize applies to image sources only"):
        load_source("ring", resize=(8, 8), num_samples=10)
    with pytest.raises(UserError, match="data.resize"):
        load_config(None, ["data.source=digits", "data.resize=[3]", f"run.dir={tmp_path}"])
    config = load_config(None, ["data.source=digits", "data.resize=[16,16]", f"run.dir={tmp_path}"])
    assert config.data.resize == [16, 16] and config.data.crop == "center"


@pytest.mark.parametrize("base, variant", [("digits", "digits_inverted"), ("fashion_mnist", "fashion_mnist_inverted")])
def test_style_variants_are_the_base_images_transformed_and_two_domains_take_disjoint_halves(base, variant, tmp_path):
    """Catches a variant that is not exactly 1 - intensity of its base (labels and split kept), and two-domain
    data of a source and its variant that share samples: CycleGAN would see paired images, and a benchmark of
    unpaired translation would measure memorized pairs."""
    if base == "fashion_mnist":
        installed("fashion_mnist")
    data, changed = load_source(base), load_source(variant)
    assert np.array_equal(changed.x, 1.0 - data.x) and np.array_equal(changed.y, data.y)
    assert (changed.test_rows is None) == (data.test_rows is None)
    from gendist.data.shards import prepare_two_domains
    from gendist.data.reading import decode_group, iterate_groups

    manifests = prepare_two_domains(base, variant, tmp_path / "ab", shard_size=100_000)
    rows = {}
    for domain, folder in (("a", tmp_path / "ab"), ("b", tmp_path / "ab" / "b")):
        splits = manifests[domain]["splits"]
        x = np.concatenate([decode_group(group, None).x for split in splits.values() for shard in split["shards"]
                            for group in iterate_groups(str(folder / shard["name"]))])
        rows[domain] = {(row if domain == "a" else 1.0 - row).tobytes() for row in x}
    assert len(rows["a"]) > 0.45 * len(data.x) and len(rows["b"]) > 0.45 * len(data.x)
    assert not rows["a"] & rows["b"]
