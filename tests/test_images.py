"""Images of any size: conv networks for H x W >= 8 and 1 or 3 channels, trained through the CLI on a user's
npz with the shipped digit configs (which adapt to the data's shape), sampling arrays of that shape."""
import numpy as np
import pytest
import torch

from gendist.errors import UserError
from gendist.nets import ConvDecoder, ConvEncoder
from gendist.nets.conv import feature_sizes
from gendist.cli import main
from helpers import read_metrics

SHAPES = [(1, 28, 28), (3, 32, 32), (1, 24, 40)]


@pytest.mark.parametrize("shape", [(1, 8, 8), *SHAPES, (3, 64, 64), (1, 9, 13), (3, 17, 8)], ids=str)
def test_conv_networks_take_any_size_and_channels(shape):
    encoder, decoder = ConvEncoder(shape[0], shape[1:], 5, 8), ConvDecoder(7, shape[0], shape[1:], 8)
    x = torch.rand(3, *shape)
    assert encoder(x).shape == (3, 5)
    assert decoder(torch.randn(3, 7)).shape == (3, *shape)
    assert min(feature_sizes(shape[1:])[-1]) >= 4


def test_power_of_two_squares_keep_the_4x4_bottleneck_and_small_images_are_refused():
    assert feature_sizes((32, 32)) == [(32, 32), (16, 16), (8, 8), (4, 4)]
    assert feature_sizes((8, 8)) == [(8, 8), (4, 4)]
    with pytest.raises(UserError, match="at least 8x8 pixels .got 7x20."):
        feature_sizes((7, 20))


FAMILIES = {"gan": ["configs/gan_digits.yaml"],
            # the shipped VAE config as it is (binarized, shape from the manifest), with a smaller evaluation budget
            "vae": ["configs/vae_digits.yaml", "vae.eval_samples=50", "vae.prior_samples=50", "vae.gap_steps=5"],
            "bigan": ["configs/bigan_digits.yaml", "model.arch=conv", "model.hidden=16"],
            # the identity term without the alignment here (the aligned conv translator on a non-square grid
            # is in tests/test_units.py; the shipped alignment runs on every strategy in test_strategies.py)
            "cyclegan": ["configs/cyclegan_digits_rot90.yaml", "model.arch=conv", "model.hidden=16",
                         "cyclegan.align=none", "cyclegan.identity_weight=0.5"]}


@pytest.mark.slow
@pytest.mark.one_process
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_every_family_trains_on_user_images_of_that_shape(shape, tmp_path, monkeypatch, capsys):
    """GAN, VAE, BiGAN and CycleGAN (conv networks) train 20 steps on a user's uint8 images of this shape
    with the shipped digit configs (data location from the command line), and what they make has the
    data's shape: samples, reconstructions, translations. In-process (gendist.cli.main): no start-up cost."""
    monkeypatch.setenv("GENDIST_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        images = (rng.random((300, *shape)) * 255).astype(np.uint8)  # uint8 (N, C, H, W), as users save them
        np.savez(tmp_path / f"{name}.npz", x=images, y=rng.integers(0, 10, 300))
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["data", "prepare", "--source", f"npz:{tmp_path / 'a.npz'}", "--out", str(one)]) == 0
    assert main(["data", "prepare", "--source", f"npz:{tmp_path / 'a.npz'}", "--source-b",
                 f"npz:{tmp_path / 'b.npz'}", "--out", str(two)]) == 0
    for family, config in FAMILIES.items():
        run_dir = tmp_path / family
        data = two if family == "cyclegan" else one
        code = main(["train", *config[:1], f"run.dir={run_dir}", f"data.dir={data}", *config[1:],
                     "train.max_steps=20", "train.batch_size=16", "log.every=10", "ckpt.every=0", "log.sample_every=0",
                     "log.wandb=false", "log.progress=false", "eval.num_samples=64"])
        assert code == 0, (family, capsys.readouterr().err[-2000:])
        losses = [m for m in read_metrics(run_dir) if any(k.endswith("/loss") for k in m)]
        assert [m["step"] for m in losses] == [10, 20], family
        assert all(np.isfinite(v) for m in losses for k, v in m.items() if k.endswith("/loss")), family
        out = tmp_path / f"{family}.npy"
        if family == "cyclegan":
            assert main(["translate", str(run_dir), "--input", str(tmp_path / "a.npz"), "--out", str(out)]) == 0
            assert np.load(out).shape == (300, *shape)
            assert (run_dir / "samples" / "translations_step_00000020.png").is_file()
            continue
        assert main(["sample", str(run_dir), "--n", "6", "--out", str(out)]) == 0
        assert np.load(out).shape == (6, *shape), family
        assert (run_dir / "samples" / "step_00000020.png").is_file()
        if family in ("vae", "bigan"):
            assert (run_dir / "samples" / "reconstructions_step_00000020.png").is_file()
            assert main(["encode", str(run_dir), "--data", str(tmp_path / "a.npz"), "--out", str(out)]) == 0
            assert np.load(out).shape == (300, 8), family  # both configs: latent_dim 8
