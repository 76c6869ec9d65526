"""The Python API (gendist.train, gendist.load): the same runs and samples as the CLI, in process."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import gendist
from gendist.cli import main
from gendist.errors import UserError

QUICK = ["train.max_steps=20", "log.every=10", "ckpt.every=0", "log.sample_every=0", "log.wandb=false",
         "log.progress=false", "eval.num_samples=200", "train.batch_size=32"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENDIST_CACHE", str(tmp_path.parent / "api-cache"))


def test_train_and_load_give_the_clis_run_and_samples_with_the_ema_weights(tmp_path, cache):
    """Catches gendist.load sampling from the raw generator instead of its EMA, an API run that differs from
    the CLI's (overrides dropped), and samples that are not the CLI's `gendist sample` for the same seed."""
    run_dir = gendist.train("configs/gan_ring.yaml", overrides=[*QUICK, "train.ema_decay=0.9",
                                                                f"run.dir={tmp_path / 'api'}"])
    assert run_dir == tmp_path / "api"
    assert main(["train", "configs/gan_ring.yaml", *QUICK, "train.ema_decay=0.9", f"run.dir={tmp_path / 'cli'}"]) == 0
    folder = "checkpoints/step_00000020/players"
    for name in ("generator.safetensors", "ema_generator.safetensors"):
        api, cli = load_file(run_dir / folder / name), load_file(tmp_path / "cli" / folder / name)
        assert all(torch.equal(api[key], cli[key]) for key in api), name
    run = gendist.load(run_dir)
    assert run.step == 20 and run.config.train.ema_decay == 0.9
    ema = load_file(run_dir / folder / "ema_generator.safetensors")
    raw = load_file(run_dir / folder / "generator.safetensors")
    state = run.nets["generator"].state_dict()
    assert all(torch.equal(state[key].cpu(), ema[key]) for key in ema)
    assert any(not torch.equal(ema[key], raw[key]) for key in ema)  # the EMA differs from the raw weights
    samples = run.sample(50, seed=3)
    assert samples.shape == (50, 2)
    assert main(["sample", str(run_dir), "--n", "50", "--seed", "3", "--out", str(tmp_path / "s.npy")]) == 0
    np.testing.assert_array_equal(samples.cpu().numpy(), np.load(tmp_path / "s.npy"))


def test_the_ema_starts_at_the_first_steps_weights_and_ramps_up(tmp_path, cache):
    """Catches an EMA whose decay does not ramp up with the steps taken (train.ema_rampup ignored, or the
    trainer not passing the step): after one Adam step (each weight moves by about lr = 1e-3) a ramped
    average is the new weights (decay 1e-6 at step 1: off by 1e-9, float32 round-off 1e-7), while a constant
    0.999 stays 0.999 x 1e-3 behind them. The bound, 1e-5, is 100x from each."""
    gaps = {}
    for rampup in ("0.05", "0"):
        run_dir = gendist.train("configs/gan_ring.yaml", overrides=[
            *QUICK, "train.max_steps=1", "train.ema_decay=0.999", f"train.ema_rampup={rampup}",
            f"run.dir={tmp_path / rampup}"])
        folder = run_dir / "checkpoints/step_00000001/players"
        ema, raw = load_file(folder / "ema_generator.safetensors"), load_file(folder / "generator.safetensors")
        gaps[rampup] = max(float((ema[key] - raw[key]).abs().max()) for key in ema)
    assert gaps["0.05"] < 1e-5, gaps
    assert gaps["0"] > 1e-5, gaps  # the same check sees a constant decay


def test_encode_and_the_errors_of_the_api(tmp_path, cache):
    """A BiGAN run's codes through the API equal `gendist encode`'s; a GAN has no encoder, a folder without a
    run is refused, a preempted-or-diverged run would raise (here: bad input raises UserError, one line)."""
    run_dir = gendist.train("configs/bigan_digits.yaml", overrides=[*QUICK, "model.hidden=32",
                                                                    f"run.dir={tmp_path / 'bigan'}"])
    run = gendist.load(run_dir)
    x = torch.rand(10, *run.info.sample_shape)
    np.savez(tmp_path / "x.npz", x=x.numpy())
    assert main(["encode", str(run_dir), "--data", str(tmp_path / "x.npz"), "--out", str(tmp_path / "z.npy")]) == 0
    np.testing.assert_allclose(run.encode(x).cpu().numpy(), np.load(tmp_path / "z.npy"), rtol=0, atol=1e-6)
    with pytest.raises(UserError, match="has no translators"):
        run.translate(x)
    with pytest.raises(UserError, match="is not a run folder"):
        gendist.load(tmp_path)
    with pytest.raises(UserError, match="checkpoint must be latest or best"):
        gendist.load(run_dir, checkpoint="newest")
    with pytest.raises(UserError, match="train.max_steps"):
        gendist.train("configs/gan_ring.yaml", overrides=["train.max_steps=-1"])
