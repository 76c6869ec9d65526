"""f-GAN recipes train: every divergence's critic and generator losses stay finite in the game, and the critic
really maximizes its variational bound: against a generator still at its initial (nearly point-mass)
distribution, which the ring's data barely overlaps, the bound climbs from about 0 to near the divergence of
disjoint distributions (the bounded divergences' maxima: total variation 1, squared Hellinger 2,
Jensen-Shannon 2 log 2, GAN 0; the unbounded ones far above their start)."""
import math
import statistics
from pathlib import Path

import pytest

from gendist.config import load_config
from gendist.divergences import DIVERGENCES
from gendist.engine.run import build_trainer

ROOT = Path(__file__).resolve().parents[1]
DISJOINT_VALUE = {"total_variation": 1.0, "squared_hellinger": 2.0, "jensen_shannon": 2 * math.log(2), "gan": 0.0,
                  # -pi log pi - (1 - pi) log(1 - pi) at the configs' pi = 0.5
                  "jensen_shannon_weighted": math.log(2)}


def build(name, tmp_path, monkeypatch):
    monkeypatch.setenv("GENDIST_CACHE", str(tmp_path.parent / "fgan-cache"))
    config = load_config(ROOT / "configs" / f"fgan_{name}_ring.yaml",
                         [f"run.dir={tmp_path / 'run'}", "train.batch_size=128", "log.wandb=false"])
    trainer, _ = build_trainer(config)
    return trainer


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_fgan_config_trains_with_finite_losses(name, tmp_path, monkeypatch):
    trainer = build(name, tmp_path, monkeypatch)
    for _ in range(40):
        trainer.train_step()
        metrics = trainer.pop_metrics()
        assert math.isfinite(metrics["generator/loss"]) and math.isfinite(metrics["discriminator/loss"]), metrics
        assert math.isfinite(metrics["discriminator/divergence_bound"]), metrics
    assert not trainer.skipped_steps, trainer.skipped_steps


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_critic_maximizes_the_bound_against_a_fixed_generator(name, tmp_path, monkeypatch):
    trainer = build(name, tmp_path, monkeypatch)
    critic = trainer.phases[0]
    bounds = []
    for _ in range(40):
        trainer.run_phase(critic, 0)  # the generator never moves
        trainer.step += 1
        bounds.append(trainer.pop_metrics()["discriminator/divergence_bound"])
    start, end = statistics.mean(bounds[:5]), min(bounds[-10:])
    if name in DISJOINT_VALUE:  # bounded: near the divergence of disjoint distributions, never above it
        limit = DISJOINT_VALUE[name]
        assert limit - 0.15 * max(1.0, abs(limit)) < end and max(bounds) <= limit + 1e-3, (start, end, limit)
    else:  # unbounded (KL, Pearson, ...): far above its start
        assert end > start + 5.0, (start, end)
    assert not trainer.skipped_steps, trainer.skipped_steps
