"""Data sources: built-in toy mixtures (`ring`, `grid`), scikit-learn's `digits`, the Debian-packaged image sets
`fashion_mnist` and `emoji`, and user data (`npz:PATH`, `folder:PATH`), all returned as one in-memory
`SourceData` that `prepare_dataset` turns into shards. Any image source can be resized (and centre-cropped to the
new aspect ratio) with an antialiasing filter: `resize_images`."""
from __future__ import annotations

import dataclasses
import gzip
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from einops import rearrange

from gendist.errors import UserError

VALID_SOURCES = ("ring, grid, swissroll, mixture1d, digits, digits_rot90, digits_inverted, stacked_digits, "
                 "fashion_mnist, fashion_mnist_inverted, emoji, npz:PATH, folder:PATH")
# Real image sets that ship as Debian packages (no download at run time): where they install, and the package
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
PACKAGES = {"fashion_mnist": ("dataset-fashion-mnist", FASHION_MNIST_DIR),
            "emoji": ("fonts-noto-color-emoji", EMOJI_FONT)}
CROPS = ("center", "none")

# The 1-D two-component mixture of the f-GAN Gaussian-fit experiment (Nowozin et al. 2016, section 4):
# unequal weights and widths make every divergence's best single Gaussian different and unique.
MIXTURE_1D = {"weights": (0.6, 0.4), "means": (-2.0, 2.0), "stds": (0.5, 1.0)}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
# PIL modes that carry no colour: such images are stored as one channel ("L").
GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "F"}


@dataclass
class SourceData:
    """A whole data set in memory: samples, optional labels, and what evaluation needs to know about it."""

    x: np.ndarray  # float32 (N, ...): (N, D) points or (N, C, H, W) images in [0, 1]
    y: np.ndarray | None  # int64 (N,) labels (mixture mode index, digit, class folder)
    kind: str  # "points" | "images"
    modes: np.ndarray | None  # (K, 2) mixture mode centres, for mode-coverage metrics
    mode_std: float | None  # std of every mixture component
    name: str
    image_mode: str | None = None  # PIL mode ("L" | "RGB") of folder images
    # folder sources only: the (extension, bytes) each image is stored as, so shards keep the original encoding
    encoded: list[tuple[str, bytes]] | None = None
    # rows of the source's own held-out split (Fashion-MNIST's 10,000 test images), used instead of a random split
    test_rows: np.ndarray | None = None


def source_revision(spec: str) -> str:
    """What a built-in source's data depends on besides (spec, seed): part of its cache key, so changing a
    built-in generator never reuses shards of the old one."""
    name = base_source(spec)
    if name in PACKAGES and PACKAGES[name][1].exists():  # the installed package's files
        files = sorted(PACKAGES[name][1].glob("*")) if PACKAGES[name][1].is_dir() else [PACKAGES[name][1]]
        return ",".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    return {"mixture1d": repr(sorted(MIXTURE_1D.items())), "swissroll": "noise=0.25,scale=1/7.5"}.get(name, "")


# Style/geometry variants of a built-in image source: the same images transformed, second domains for unpaired
# translation (CycleGAN). "rot90" turns every image by 90 degrees counter-clockwise; "inverted" is 1 - intensity
# (dark shapes on a light ground become light on dark: a change of style, not of geometry).
VARIANT_SOURCES = {"digits_rot90": ("digits", "rot90"), "digits_inverted": ("digits", "inverted"),
                   "fashion_mnist_inverted": ("fashion_mnist", "inverted")}
BUILTIN_SOURCES = ("ring", "grid", "swissroll", "mixture1d", "digits", "digits_rot90", "digits_inverted",
                   "stacked_digits", "fashion_mnist", "fashion_mnist_inverted", "emoji")
PATH_SOURCES = ("npz", "folder")


def check_source_spec(spec: str, key: str = "data.source") -> None:
    """A one-line UserError unless `spec` names a built-in source or `npz:PATH` / `folder:PATH`."""
    name, _, argument = spec.partition(":")
    if not ((name in BUILTIN_SOURCES and not argument) or (name in PATH_SOURCES and argument)):
        raise UserError(f"{key}: unknown source '{spec}' — valid sources: {VALID_SOURCES}")


def load_source(spec: str, seed: int = 0, *, num_samples: int | None = None,
                resize: tuple[int, int] | list[int] | None = None, crop: str = "center") -> SourceData:
    """Load the source named by `spec`; the same (spec, seed, resize, crop) always gives the same data.

    `num_samples` overrides the size of the synthetic mixtures; `resize` (H, W) brings every image to that size
    (`crop`: "center" crops each image to the new aspect ratio first, "none" stretches; see resize_images).
    """
    check_source_spec(spec)
    size = check_resize(resize, crop)
    data = _load(spec, seed, num_samples, size, crop)
    if size is None or data.x.shape[2:] == size:
        return data
    if data.kind != "images":
        raise UserError(f"--resize / data.resize: '{spec}' holds points of shape {data.x.shape[1:]}, not images — "
                        "resize applies to image sources only")
    return dataclasses.replace(data, x=resize_images(data.x, size, crop), encoded=None)


def check_resize(resize, crop: str) -> tuple[int, int] | None:
    """(H, W) or None; a one-line UserError for anything else."""
    if crop not in CROPS:
        raise UserError(f"--crop / data.crop: unknown '{crop}' — use one of {', '.join(CROPS)}")
    if resize is None or len(resize) == 0:
        return None
    if len(resize) != 2 or not all(isinstance(v, (int, np.integer)) and 4 <= v <= 4096 for v in resize):
        raise UserError(f"--resize / data.resize: expected two sizes H W between 4 and 4096, got {list(resize)}")
    return int(resize[0]), int(resize[1])


def center_box(height: int, width: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the largest centred box of an image with the aspect ratio of `size`."""
    target = size[1] / size[0]  # width / height
    if width / height > target:  # too wide: crop the sides
        keep = max(1, round(height * target))
        left = (width - keep) // 2
        return left, 0, left + keep, height
    keep = max(1, round(width / target))
    top = (height - keep) // 2
    return 0, top, width, top + keep


def resize_images(x: np.ndarray, size: tuple[int, int], crop: str = "center") -> np.ndarray:
    """(N, C, H, W) float images in [0, 1] -> (N, C, *size), each channel resampled with PIL's LANCZOS filter in
    floating point ("F" mode: no 8-bit rounding between steps). LANCZOS widens its kernel by the
    downscaling factor, so shrinking a 136x128 bitmap to 32x32 does not alias (bilinear sampling would skip
    most source pixels). crop="center" first cuts the largest centred box of the target's aspect ratio."""
    from PIL import Image

    height, width = x.shape[2:]
    left, top, right, bottom = center_box(height, width, size) if crop == "center" else (0, 0, width, height)
    x = x[:, :, top:bottom, left:right]  # cut first: a box given to PIL's resize still reads pixels outside it
    out = np.empty((len(x), x.shape[1], *size), dtype=np.float32)
    for index, image in enumerate(x):
        for channel, plane in enumerate(image):
            resized = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F").resize(
                (size[1], size[0]), Image.LANCZOS)
            out[index, channel] = np.asarray(resized)
    return np.clip(out, 0.0, 1.0)  # LANCZOS overshoots slightly at edges


def require_package(name: str, shown: str = "") -> Path:
    """The installed path of a Debian-packaged source, or a one-line error naming the package (and the source
    `shown`, a variant's name, or `name`)."""
    package, path = PACKAGES[name]
    if not path.exists():
        raise UserError(f"data.source: '{shown or name}' needs the Debian package {package} ({path} is missing) — "
                        f"install it with `apt-get install {package}` (launch/setup_env.sh does when it can)")
    return path


def _load(spec: str, seed: int, num_samples: int | None, size: tuple[int, int] | None, crop: str) -> SourceData:
    name, _, argument = spec.partition(":")
    if name == "ring":
        return build_ring(seed, num_samples or 100_000)
    if name == "grid":
        return build_grid(seed, num_samples or 100_000)
    if name == "swissroll":
        return build_swissroll(seed, num_samples or 100_000)
    if name == "mixture1d":
        return build_mixture1d(seed, num_samples or 200_000)
    base, variant = VARIANT_SOURCES.get(name, (name, ""))
    if base == "digits":
        return build_digits(variant)
    if name == "stacked_digits":
        return build_stacked_digits(seed, num_samples or 60_000)
    if base == "fashion_mnist":
        return build_fashion_mnist(variant)
    if name == "emoji":
        return build_emoji()
    if name == "npz":
        return load_npz(Path(argument).expanduser())
    return load_folder(Path(argument).expanduser(), size, crop)


def sample_mixture(modes: np.ndarray, std: float, num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw from an equal-weight isotropic Gaussian mixture; returns (points float32, mode index int64)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(modes), size=num_samples)
    points = modes[labels] + std * rng.standard_normal((num_samples, modes.shape[1]))
    return points.astype(np.float32), labels.astype(np.int64)


def build_ring(seed: int, num_samples: int = 100_000) -> SourceData:
    """8 Gaussians (std 0.01) evenly spaced on the unit circle: the classic mode-collapse test."""
    angles = 2 * math.pi * np.arange(8) / 8
    modes = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    x, y = sample_mixture(modes, 0.01, num_samples, seed)
    return SourceData(x=x, y=y, kind="points", modes=modes, mode_std=0.01, name="ring")


def build_grid(seed: int, num_samples: int = 100_000) -> SourceData:
    """25 Gaussians (std 0.05) on the grid {-4,-2,0,2,4}^2."""
    axis = np.arange(-4.0, 5.0, 2.0)
    modes = np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1).reshape(-1, 2)  # (5, 5, 2) -> (25, 2)
    x, y = sample_mixture(modes, 0.05, num_samples, seed)
    return SourceData(x=x, y=y, kind="points", modes=modes, mode_std=0.05, name="grid")


def build_swissroll(seed: int, num_samples: int = 100_000) -> SourceData:
    """scikit-learn's swiss roll (noise 0.25) projected on its (x, z) plane and scaled by 1/7.5: a curved
    1-D manifold with no discrete modes, judged by MMD and precision/recall against held-out data."""
    from sklearn.datasets import make_swiss_roll

    points, _ = make_swiss_roll(num_samples, noise=0.25, random_state=seed)
    x = (points[:, [0, 2]] / 7.5).astype(np.float32)  # (N, 3) -> (N, 2)
    return SourceData(x=x, y=None, kind="points", modes=None, mode_std=None, name="swissroll")


def build_mixture1d(seed: int, num_samples: int = 200_000) -> SourceData:
    """Samples (N, 1) of MIXTURE_1D; `y` is the component."""
    rng = np.random.default_rng(seed)
    weights, means, stds = (np.asarray(MIXTURE_1D[key]) for key in ("weights", "means", "stds"))
    labels = rng.choice(len(weights), size=num_samples, p=weights)
    x = means[labels] + stds[labels] * rng.standard_normal(num_samples)
    return SourceData(x=x[:, None].astype(np.float32), y=labels.astype(np.int64), kind="points", modes=None,
                      mode_std=None, name="mixture1d")


def base_source(spec: str) -> str:
    """The source a variant is made from (`digits_inverted` -> `digits`); any other source's own name."""
    name = spec.partition(":")[0]
    return VARIANT_SOURCES.get(name, (name, ""))[0]


def apply_variant(images: np.ndarray, variant: str) -> np.ndarray:
    """(N, C, H, W) images in [0, 1] transformed by a variant of VARIANT_SOURCES ("" leaves them)."""
    if variant == "rot90":
        return np.ascontiguousarray(np.rot90(images, k=1, axes=(2, 3)))
    if variant == "inverted":
        return 1.0 - images
    if variant:
        raise ValueError(f"unknown variant {variant!r}")
    return images


def build_digits(variant: str = "") -> SourceData:
    """scikit-learn's 1,797 8x8 digits (bundled with the package, no download), scaled from 0..16 to [0, 1];
    `variant` (VARIANT_SOURCES: "rot90", "inverted") transforms them into a second domain."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = apply_variant(rearrange(digits.images.astype(np.float32) / 16.0, "n h w -> n 1 h w"), variant)
    return SourceData(x=images, y=digits.target.astype(np.int64), kind="images", modes=None, mode_std=None,
                      name="digits" + (f"_{variant}" if variant else ""))


def build_stacked_digits(seed: int, num_samples: int = 60_000) -> SourceData:
    """Stacked digits: the stacked-MNIST mode-collapse benchmark (VEEGAN, PacGAN, R3GAN) made from the
    bundled 8x8 digits. Each sample stacks three digits drawn at random as its three channels, so there are
    10^3 = 1,000 equally likely modes; y = 100 a + 10 b + c for channel digits (a, b, c). `gendist eval
    --metrics modes --features classifier:RUN` counts the modes a generator covers with a digit classifier
    applied to each channel."""
    digits = build_digits()
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(digits.x), size=(num_samples, 3))  # (N, 3) digit indices
    x = np.ascontiguousarray(digits.x[picks, 0])  # (N, 3, 8, 8)
    y = (digits.y[picks] * np.array([100, 10, 1])).sum(axis=1).astype(np.int64)
    return SourceData(x=x, y=y, kind="images", modes=None, mode_std=None, name="stacked_digits")


FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST family's format, gzip-compressed): a big-endian header of magic, dimension sizes,
    then uint8 data. Read with numpy: the format is 10 lines to parse, and the libraries that read it
    (torchvision, tensorflow-datasets) would be a large dependency for it."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as error:
        raise UserError(f"data.source: cannot read '{path}' ({error}) — reinstall its Debian package") from None
    dims = raw[3]
    if raw[:3] != b"\x00\x00\x08" or not 1 <= dims <= 3:  # 0x08: unsigned bytes
        raise UserError(f"data.source: '{path}' is not an IDX file of unsigned bytes — reinstall its Debian package")
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=dims, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
    if data.size != math.prod(shape):
        raise UserError(f"data.source: '{path}' is truncated ({data.size} of {math.prod(shape)} values)")
    return data.reshape(shape)


def build_fashion_mnist(variant: str = "") -> SourceData:
    """Fashion-MNIST (Xiao et al. 2017) from the Debian package dataset-fashion-mnist: 60,000 training and
    10,000 test 28x28 grey images of 10 clothing classes (FASHION_MNIST_CLASSES), in [0, 1], with labels. The
    shipped split is kept: the last 10,000 rows are the test set (`test_rows`). `variant` ("inverted":
    VARIANT_SOURCES) transforms the images into a second domain."""
    name = "fashion_mnist" + (f"_{variant}" if variant else "")
    folder = require_package("fashion_mnist", name)
    parts = {split: (read_idx(folder / f"{prefix}-images-idx3-ubyte.gz"), read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz"))
             for split, prefix in (("train", "train"), ("test", "t10k"))}
    for split, (images, labels) in parts.items():
        if images.ndim != 3 or len(images) != len(labels):
            raise UserError(f"data.source: fashion_mnist's {split} files disagree ({images.shape} images, "
                            f"{labels.shape} labels) — reinstall dataset-fashion-mnist")
    images = np.concatenate([parts["train"][0], parts["test"][0]])
    labels = np.concatenate([parts["train"][1], parts["test"][1]]).astype(np.int64)
    x = apply_variant(rearrange(images, "n h w -> n 1 h w").astype(np.float32) / 255.0, variant)
    test_rows = np.arange(len(parts["train"][0]), len(images))
    return SourceData(x=x, y=labels, kind="images", modes=None, mode_std=None, name=name, image_mode="L",
                      test_rows=test_rows)


def build_emoji() -> SourceData:
    """The colour bitmaps of Noto Color Emoji (Debian package fonts-noto-color-emoji): every glyph's PNG in the
    font's CBDT table (128 high x 136 wide at the shipped strike), composited on white, RGB in [0, 1], no labels. Read with
    fontTools (the font library matplotlib already depends on)."""
    from fontTools.ttLib import TTFont
    from PIL import Image

    path = require_package("emoji")
    try:
        font = TTFont(str(path), lazy=True)
        strikes = font["CBDT"].strikeData
    except Exception as error:  # fontTools raises many types for a damaged font
        raise UserError(f"data.source: cannot read the emoji bitmaps of '{path}' ({error}) — reinstall "
                        "fonts-noto-color-emoji") from None
    images, size = [], None
    for name in sorted(strikes[0]):  # the first (only) strike; glyph names sorted: a fixed order
        bitmap = strikes[0][name]
        data = getattr(bitmap, "imageData", None)
        if not data:
            continue
        picture = Image.open(io.BytesIO(data)).convert("RGBA")
        size = size or picture.size
        if picture.size != size:  # glyphs of another width: centre-cropped to the common size's aspect, resampled
            picture = picture.crop(center_box(picture.size[1], picture.size[0], (size[1], size[0]))).resize(
                size, Image.LANCZOS)
        white = Image.new("RGBA", size, (255, 255, 255, 255))
        images.append(np.asarray(Image.alpha_composite(white, picture).convert("RGB"), dtype=np.uint8))
    if not images:
        raise UserError(f"data.source: '{path}' holds no colour bitmaps — reinstall fonts-noto-color-emoji")
    x = rearrange(np.stack(images), "n h w c -> n c h w").astype(np.float32) / 255.0
    return SourceData(x=x, y=None, kind="images", modes=None, mode_std=None, name="emoji", image_mode="RGB")


def same_base_data(spec_a: str, spec_b: str) -> bool:
    """Both sources are made from the same samples (a built-in source and a variant of it, or two variants):
    two-domain data then takes disjoint halves, so no sample appears in both domains (unpaired)."""
    base = base_source(spec_a)
    variant_bases = {b for b, _ in VARIANT_SOURCES.values()}
    return base == base_source(spec_b) and base in variant_bases


def load_npz(path: Path) -> SourceData:
    """User arrays: `x` (N, D) points, (N, H, W) or (N, C, H, W) images; optional `y` (N,) labels and `test` (N,)
    booleans (the held-out rows: the data's own split, kept by `data prepare` instead of a random one)."""
    if not path.is_file():
        raise UserError(f"data.source: npz file '{path}' does not exist — fix the path")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            contents = {key: arrays[key] for key in arrays.files}
    except (OSError, ValueError) as error:
        raise UserError(f"data.source: '{path}' is not a readable .npz file ({error})") from None
    if "x" not in contents:
        raise UserError(f"data.source: '{path}' has no array 'x' (found: {sorted(contents)}) — "
                        "save it with np.savez(path, x=..., y=...)")
    x = contents["x"]
    if x.ndim < 1 or len(x) == 0 or x.ndim > 4:
        raise UserError(f"data.source: '{path}' array x has shape {x.shape}; "
                        "expected (N, D), (N, H, W) or (N, C, H, W) with N >= 1")
    if x.dtype.kind not in "biuf":
        raise UserError(f"data.source: '{path}' array x has dtype {x.dtype}; expected numbers (float points or "
                        "images in [0, 1], or uint8 images)")
    # uint8 images are the common on-disk form: bring them to [0, 1] like every other image source
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    if not np.isfinite(x).all():
        raise UserError(f"data.source: '{path}' array x contains NaN or infinite values")
    kind = "images" if x.ndim >= 3 else "points"
    if x.ndim == 3:
        x = rearrange(x, "n h w -> n 1 h w")
    elif x.ndim == 1:
        x = rearrange(x, "n -> n 1")
    y = contents.get("y")
    if y is not None:
        if y.shape != (len(x),):
            raise UserError(f"data.source: '{path}' has len(y)={len(y) if y.ndim else 0} but len(x)={len(x)}; "
                            "they must match")
        if y.dtype.kind not in "biu" and not (y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all()):
            raise UserError(f"data.source: '{path}' array y has dtype {y.dtype}; labels must be integers")
        y = y.astype(np.int64)
    test_rows = None
    if "test" in contents:
        test = contents["test"]
        if test.shape != (len(x),) or test.dtype.kind not in "bui" or not np.isin(test, (0, 1)).all():
            raise UserError(f"data.source: '{path}' array test must be {len(x)} booleans (True: a held-out row), "
                            f"got dtype {test.dtype} and shape {test.shape}")
        test_rows = np.flatnonzero(test.astype(bool))
        if not 0 < len(test_rows) < len(x):
            raise UserError(f"data.source: '{path}' array test marks {len(test_rows)} of {len(x)} rows held out; "
                            "both splits need at least one row")
    return SourceData(x=x, y=y, kind=kind, modes=None, mode_std=None, name=path.stem, test_rows=test_rows)


def find_images(root: Path) -> tuple[list[Path], np.ndarray | None]:
    """Image files under `root` (sorted, recursive) and labels from their top-level sub-folder, if any."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise UserError(f"data.source: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under '{root}'")
    relative = [p.relative_to(root) for p in files]
    class_names = sorted({r.parts[0] for r in relative if len(r.parts) > 1})
    if not class_names:
        return files, None
    loose = [r for r in relative if len(r.parts) == 1]
    if loose:
        raise UserError(f"data.source: '{root / loose[0]}' sits next to class sub-folders — move it into one")
    class_ids = {name: index for index, name in enumerate(class_names)}
    return files, np.array([class_ids[r.parts[0]] for r in relative], dtype=np.int64)


def load_folder(root: Path, size: tuple[int, int] | None = None, crop: str = "center") -> SourceData:
    """Images under `root`; each top-level sub-folder is a class (sorted names -> ids 0, 1, ...).

    All images become one mode (L if every image is grayscale, else RGB) and one size: `size` (H, W), or the
    first image's; an image of another size is centre-cropped (crop="center") and resampled with LANCZOS. The
    original encoded bytes are kept when no resize was needed.
    """
    from PIL import Image

    if not root.is_dir():
        raise UserError(f"data.source: folder '{root}' does not exist — fix the path")
    files, labels = find_images(root)
    images, raw = [], []
    for path in files:
        data = path.read_bytes()
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except Exception as error:  # PIL raises many types for bad files
            raise UserError(f"data.source: cannot read image '{path}' ({error}) — remove or fix it") from None
        images.append(image)
        raw.append(data)
    mode = "L" if all(image.mode in GRAYSCALE_MODES for image in images) else "RGB"
    target = (size[1], size[0]) if size else images[0].size  # PIL sizes are (width, height)
    arrays, encoded = [], []
    for image, data in zip(images, raw):
        converted = image.convert(mode)
        resized = converted.size != target
        if resized:
            if crop == "center":
                converted = converted.crop(center_box(converted.size[1], converted.size[0], (target[1], target[0])))
            converted = converted.resize(target, Image.LANCZOS)
        arrays.append(np.asarray(converted, dtype=np.uint8))
        encoded.append(encode_image(image.format, data, converted, resized))
    stacked = np.stack(arrays)
    # (N, H, W) grayscale or (N, H, W, C) colour -> (N, C, H, W)
    x = rearrange(stacked, "n h w -> n 1 h w") if stacked.ndim == 3 else rearrange(stacked, "n h w c -> n c h w")
    return SourceData(x=x.astype(np.float32) / 255.0, y=labels, kind="images", modes=None, mode_std=None,
                      name=root.name, image_mode=mode, encoded=encoded)


def encode_image(file_format: str | None, data: bytes, converted, resized: bool) -> tuple[str, bytes]:
    """Keep the original PNG/JPEG bytes when the loader can decode them to the same pixels; else write PNG."""
    if not resized and file_format == "PNG":
        return "png", data
    if not resized and file_format == "JPEG":
        return "jpg", data
    buffer = io.BytesIO()
    converted.save(buffer, format="PNG")
    return "png", buffer.getvalue()


__all__ = ["SourceData", "load_source", "resize_images", "VALID_SOURCES", "FASHION_MNIST_CLASSES"]
