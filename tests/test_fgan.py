"""f-GAN recipes train: every divergence's critic and generator losses stay finite and the critic's
variational bound rises from its start (it is maximized)."""
import math
from pathlib import Path

import pytest

from gendist.config import load_config
from gendist.divergences import DIVERGENCES
from gendist.engine.run import build_trainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_fgan_config_trains_with_finite_losses(name, tmp_path, monkeypatch):
    monkeypatch.setenv("GENDIST_CACHE", str(tmp_path / "cache"))
    config = load_config(ROOT / "configs" / f"fgan_{name}_ring.yaml",
                         [f"run.dir={tmp_path / 'run'}", "train.batch_size=128", "log.wandb=false"])
    trainer, _ = build_trainer(config)
    bounds = []
    for _ in range(40):
        trainer.train_step()
        metrics = trainer.pop_metrics()
        assert math.isfinite(metrics["generator/loss"]) and math.isfinite(metrics["discriminator/loss"]), metrics
        bounds.append(metrics["discriminator/divergence_bound"])
    assert not trainer.skipped_steps, trainer.skipped_steps
    assert max(bounds[-10:]) > bounds[0]
