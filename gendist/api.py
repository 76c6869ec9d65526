"""The Python API, for notebooks and sweeps: `gendist.train` and `gendist.load`.

    import gendist
    run_dir = gendist.train("configs/gan_ring.yaml", overrides=["train.max_steps=500", "run.dir=runs/a"])
    run = gendist.load(run_dir)          # the networks (EMA weights where the run keeps an EMA), eval mode
    x = run.sample(64, seed=0)           # (64, *sample_shape) on the run's device
    z = run.encode(images)               # BiGAN / VAE codes; run.translate(x, "a2b") for CycleGAN

`train` is `gendist train` in this process: under `accelerate launch`/`torchrun` every rank calls it and the
ranks train together; a run folder with a checkpoint resumes. Several calls in one process train one after
another (the process group stays up between them)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from gendist.config import RunConfig, load_config
from gendist.errors import UserError


class TrainingStopped(RuntimeError):
    """A run that ended without reaching train.max_steps: preempted (checkpointed: call train again to resume)
    or diverged (too many non-finite steps in a row; the last good weights are checkpointed)."""


def train(config: str | Path | RunConfig, overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """Train (or resume) the run a config file plus `key=value` overrides describes; returns its run folder.
    Bad input raises gendist.errors.UserError (the CLI's one-line errors); a preempted or diverged run raises
    TrainingStopped."""
    from gendist.engine.run import EXIT_DIVERGED, EXIT_PREEMPTED
    from gendist.engine.run import train as train_run

    if isinstance(config, RunConfig):
        if overrides:
            raise UserError("gendist.train: overrides apply to a config file; set the fields of a RunConfig directly")
        resolved = config
    else:
        resolved = load_config(config, list(overrides))
    code = train_run(resolved)
    if code == EXIT_PREEMPTED:
        raise TrainingStopped(f"{resolved.run.dir}: stopped by a preemption signal after a checkpoint; call "
                              "gendist.train again with the same config to resume")
    if code == EXIT_DIVERGED:
        raise TrainingStopped(f"{resolved.run.dir}: more than train.max_bad_steps non-finite steps in a row; the last "
                              "good weights are checkpointed (see metrics.jsonl)")
    return Path(resolved.run.dir)


@dataclass
class Run:
    """A trained run's networks (`nets`, EMA weights where there is an EMA, eval mode), its resolved config,
    recipe, data description and the checkpoint's step."""

    config: RunConfig
    recipe: object
    nets: dict
    info: object
    step: int

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """n samples (n, *sample_shape), a function of the seed (the evaluation's sampler)."""
        if not hasattr(self.recipe, "sample") or getattr(self.recipe, "input_grid", "") == "translations":
            raise UserError(f"a {self.config.model.recipe} run has no unconditional sampler; use translate")
        with torch.no_grad():
            return self.recipe.sample(self.nets, n, torch.Generator().manual_seed(seed))

    def encode(self, x: torch.Tensor, features: str = "encoder", labels: torch.Tensor | None = None) -> torch.Tensor:
        """Codes of x (B, *sample_shape): a BiGAN's E(x) (features="discriminator": D's last hidden layer on
        (x, E(x))) or a VAE's encoder means; a class-conditional VAE's at `labels` (B,)."""
        if not hasattr(self.recipe, "encode"):
            raise UserError(f"a {self.config.model.recipe} run has no encoder; encode works on BiGAN and VAE runs")
        extra = {}
        if labels is not None:
            if not getattr(self.recipe, "num_classes", 0):
                raise UserError("labels: this run is not class-conditional (model.conditional=false); drop labels")
            extra["labels"] = torch.as_tensor(labels, dtype=torch.long)
        with torch.no_grad():
            return self.recipe.encode(self.nets, x, features, **extra)

    def translate(self, x: torch.Tensor, direction: str = "a2b") -> torch.Tensor:
        """A CycleGAN's translations of x, direction a2b or b2a."""
        if not hasattr(self.recipe, "translate"):
            raise UserError(f"a {self.config.model.recipe} run has no translators; translate works on CycleGAN runs")
        with torch.no_grad():
            return self.recipe.translate(self.nets, x, direction)


def load(run_dir: str | Path, checkpoint: str = "latest") -> Run:
    """The networks of a run folder's newest good checkpoint (`checkpoint="best"`: RUN/best)."""
    from gendist.inference import load_run

    if checkpoint not in ("latest", "best"):
        raise UserError(f"gendist.load: checkpoint must be latest or best, got '{checkpoint}'")
    loaded = load_run(Path(run_dir), checkpoint)
    return Run(loaded.config, loaded.recipe, loaded.nets, loaded.spec.info, loaded.step)
