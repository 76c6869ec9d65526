"""The engine in one process, step by step (no CLI): what each optimizer step does with learning rates,
warm-up, per-player overrides, gradient clipping and accumulation, checked against the arithmetic of SGD."""

import pytest
import torch

from gendist.config import load_config, lr_scale
from gendist.engine.run import build_trainer

BASE = "configs/gan_ring.yaml"
SGD = ["optim.name=sgd", "optim.betas=[0.0, 0.999]"]  # plain SGD: the step is exactly -lr * gradient


@pytest.fixture
def make_trainer(tmp_path, monkeypatch):
    monkeypatch.setenv("GENDIST_CACHE", str(tmp_path.parent / "engine-cache"))

    def make(*overrides):
        config = load_config(BASE, [f"run.dir={tmp_path / 'run'}", "log.wandb=false", "train.batch_size=64",
                                    *overrides])
        trainer, _ = build_trainer(config)
        return trainer
    return make


def parameters(trainer, player):
    return torch.cat([p.detach().flatten().clone() for p in trainer.strategy.networks[player].parameters()])


def test_warmup_schedule_and_per_player_learning_rates_reach_the_optimizers(make_trainer):
    trainer = make_trainer("optim.lr=1.0e-3", "optim.lr_overrides={discriminator: 4.0e-3}", "optim.warmup_steps=4",
                           "optim.schedule=linear", "optim.final_lr_fraction=0.1", "train.max_steps=10")
    base = {"generator": 1e-3, "discriminator": 4e-3}
    for step in range(10):
        trainer.train_step()
        scale = lr_scale(trainer.config.optim, step, 10)
        for name, lr in trainer.strategy.learning_rates().items():
            assert lr == pytest.approx(base[name] * scale, rel=1e-12), (step, name)
    assert lr_scale(trainer.config.optim, 0, 10) == pytest.approx(0.25)  # warm-up starts at lr / warmup_steps
    assert lr_scale(trainer.config.optim, 9, 10) == pytest.approx(0.1 + 0.9 * (1 - 5 / 6))


def test_sgd_step_moves_each_player_by_lr_times_its_gradient(make_trainer):
    """One discriminator step of plain SGD with a per-player lr: the update is -lr * grad, so its size is lr
    times the gradient norm; with gradient clipping at c far below that norm it is exactly lr * c."""
    lr, clip = 0.05, 1e-3
    free = make_trainer(*SGD, f"optim.lr={lr}", "optim.lr_overrides={discriminator: 0.1}")
    clipped = make_trainer(*SGD, f"optim.lr={lr}", "optim.lr_overrides={discriminator: 0.1}", f"optim.grad_clip={clip}")
    moves = {}
    for label, trainer in (("free", free), ("clipped", clipped)):
        before = {name: parameters(trainer, name) for name in ("generator", "discriminator")}
        trainer.train_step()
        moves[label] = {name: float((parameters(trainer, name) - before[name]).norm()) for name in before}
    # unclipped: the gradients are much larger than the clip, so the clip really acts
    assert moves["free"]["discriminator"] > 10 * 0.1 * clip and moves["free"]["generator"] > 10 * lr * clip
    assert moves["clipped"]["discriminator"] == pytest.approx(0.1 * clip, rel=1e-4)
    assert moves["clipped"]["generator"] == pytest.approx(lr * clip, rel=1e-4)


def test_accumulation_equals_the_double_batch_with_sgd(make_trainer):
    """2 micro-steps of 32 average to the gradient of one batch of 64 (global split: the same rows); with
    plain SGD a missing division by the number of micro-steps doubles every update."""
    common = [*SGD, "optim.lr=0.05", "data.split_mode=global"]
    single = make_trainer(*common, "train.batch_size=64")
    accumulated = make_trainer(*common, "train.batch_size=32", "train.grad_accum=2")
    for _ in range(5):
        single.train_step()
        accumulated.train_step()
    for name in ("generator", "discriminator"):
        a, b = parameters(single, name), parameters(accumulated, name)
        assert float((a - b).norm() / a.norm()) < 1e-6, name
