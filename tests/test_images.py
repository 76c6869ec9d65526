"""Images of any size: conv networks for H x W >= 8 and 1 or 3 channels, trained through the CLI on a user's
npz with the shipped digit configs (which adapt to the data's shape), sampling arrays of that shape."""
import numpy as np
import pytest
import torch

from gendist.errors import UserError
from gendist.nets import ConvDecoder, ConvEncoder
from gendist.nets.conv import feature_sizes
from helpers import gendist_command, make_env, read_metrics, run

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


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gan_and_vae_train_on_user_images_of_that_shape(shape, tmp_path):
    env = make_env(tmp_path / "cache")
    rng = np.random.default_rng(0)
    images = (rng.random((300, *shape)) * 255).astype(np.uint8)  # uint8 (N, C, H, W), as users save them
    np.savez(tmp_path / "mine.npz", x=images, y=rng.integers(0, 10, 300))
    data = tmp_path / "data"
    run(gendist_command("data", "prepare", "--source", f"npz:{tmp_path / 'mine.npz'}", "--out", str(data)), env)
    for config in ("configs/gan_digits.yaml", "configs/vae_digits.yaml"):
        run_dir = tmp_path / config.split("/")[-1].split(".")[0]
        run(gendist_command("train", config, f"run.dir={run_dir}", f"data.dir={data}", "train.max_steps=20",
                            "train.batch_size=32", "log.every=10", "ckpt.every=0", "log.sample_every=0",
                            "log.wandb=false", "log.progress=false", "eval.num_samples=64"), env)
        losses = [m for m in read_metrics(run_dir) if any(k.endswith("/loss") for k in m)]
        assert [m["step"] for m in losses] == [10, 20]
        assert all(np.isfinite(v) for m in losses for k, v in m.items() if k.endswith("/loss"))
        run(gendist_command("sample", str(run_dir), "--n", "6", "--out", str(tmp_path / "x.npy")), env)
        assert np.load(tmp_path / "x.npy").shape == (6, *shape)
        assert (run_dir / "samples" / "step_00000020.png").is_file()
