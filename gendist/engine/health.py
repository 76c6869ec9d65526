"""Training health seen as it happens: a discriminator that wins outright, a VAE loss that jumps.

When a GAN's discriminator separates every real sample from every generated one, its loss sits near 0 and the
generator's gradient vanishes or points nowhere useful; samples stop improving (often all black or all one
picture) while the run goes on. Losses with a floor at 0 show it directly: the non-saturating/minimax and
relativistic losses (softplus terms), the hinge loss, BiGAN's, and CycleGAN's least-squares and standard
losses. WGAN critics and f-GAN bounds have no such floor and are not watched.

Each metric line gets `health/discriminator_wins` (1 when that line's mean discriminator loss is below
log.d_wins_loss: a function of the line alone, so a resumed run logs what the uninterrupted one did). When
log.d_wins_logs lines in a row are below, the run says so once per episode on stderr, in a W&B alert and in the
W&B summary (`health/discriminator_won_at_step`).

Each watch's memory (a streak, the lowest loss so far, whether this episode was said) is part of the checkpoint
(`state_dict`), so a resumed run reports and logs what the uninterrupted one did.

A VAE's loss that jumps (`LossJumpWatch`): a metric line whose `elbo/loss` (nats per sample) lies more than
LOSS_JUMP_NATS_PER_VALUE nats per data value above the lowest line so far is said once per episode, the same
three ways (`health/loss_jumped` on each line, 0/1). Measured: a learned decoder variance under Adam diverged
on 32x32 colour digits, 28x28 grey digits and the emoji with jumps of 61, 22 and 3,684 nats per value, and
wrecked the samples; normal training rose at most 0.056 nats per value above its lowest line (the 8x8 digits'
VAE during a KL warm-up, `vae.kl_warmup_steps=1000`: the loss climbs as the KL's weight does).
"""
from __future__ import annotations

import math

from gendist.config import RunConfig
from gendist.tracking import Tracker, warn

UNFLOORED_GAN_LOSSES = ("wgan", "wgan_gp", "fgan")


def report(tracker: Tracker, title: str, message: str, summary: dict) -> None:
    """Say it on stderr, in a W&B alert and in the W&B summary."""
    warn(message)
    tracker.alert(f"gendist: {title}", message)
    tracker.summary(summary)


def watched_key(config: RunConfig) -> str | None:
    """The metric key of the discriminator loss to watch, or None (no discriminator, no floor, or off)."""
    if not config.log.d_wins_logs or not config.log.d_wins_loss:
        return None
    recipe = config.model.recipe
    if recipe == "gan" and config.gan.loss not in UNFLOORED_GAN_LOSSES:
        return "discriminator/loss"
    if recipe == "bigan":
        return "discriminator/loss"
    if recipe == "cyclegan":
        return "discriminators/loss"
    return None


class DiscriminatorWatch:
    def __init__(self, config: RunConfig, tracker: Tracker):
        self.key, self.tracker = watched_key(config), tracker
        self.threshold, self.needed = config.log.d_wins_loss, config.log.d_wins_logs
        self.streak, self.since, self.reported = 0, 0, False

    def state_dict(self) -> dict:
        return {"streak": self.streak, "since": self.since, "reported": self.reported}

    def load_state_dict(self, state: dict) -> None:
        self.streak, self.since, self.reported = int(state["streak"]), int(state["since"]), bool(state["reported"])

    def update(self, step: int, metrics: dict[str, float]) -> None:
        """Adds health/discriminator_wins to `metrics` (in place) and reports a streak that reaches its length."""
        if self.key is None or self.key not in metrics:
            return
        below = float(metrics[self.key]) < self.threshold
        metrics["health/discriminator_wins"] = float(below)
        if not below:
            self.streak, self.reported = 0, False
            return
        if self.streak == 0:
            self.since = step
        self.streak += 1
        if self.streak >= self.needed and not self.reported:
            self.reported = True
            message = (f"step {step}: the discriminator wins outright: {self.key} has stayed below "
                       f"{self.threshold:g} for {self.streak} metric lines (since step {self.since}), so the generator "
                       "learns little; try gan.augment=color,translation,cutout, gan.r1_gamma (e.g. 1), or a lower "
                       "optim.lr_overrides.discriminator")
            report(self.tracker, "the discriminator wins outright", message, {"health/discriminator_won_at_step": step})


LOSS_JUMP_NATS_PER_VALUE = 1.0


class LossJumpWatch:
    """Reports a VAE's `elbo/loss` that rises far above its lowest metric line (see the module docstring)."""

    key = "elbo/loss"

    def __init__(self, config: RunConfig, tracker: Tracker, values_per_sample: int):
        self.enabled = config.model.recipe == "vae"
        self.tracker, self.limit = tracker, LOSS_JUMP_NATS_PER_VALUE * max(1, values_per_sample)
        self.lowest: float | None = None
        self.reported = False

    def state_dict(self) -> dict:
        return {"lowest": self.lowest, "reported": self.reported}

    def load_state_dict(self, state: dict) -> None:
        self.lowest = None if state["lowest"] is None else float(state["lowest"])
        self.reported = bool(state["reported"])

    def update(self, step: int, metrics: dict[str, float]) -> None:
        """Adds health/loss_jumped to `metrics` (in place) and reports the first line of each jump."""
        if not self.enabled or self.key not in metrics or not math.isfinite(float(metrics[self.key])):
            return  # non-finite steps are skipped and counted by the trainer (train.max_bad_steps)
        loss = float(metrics[self.key])
        self.lowest = loss if self.lowest is None else min(self.lowest, loss)
        jumped = loss - self.lowest > self.limit
        metrics["health/loss_jumped"] = float(jumped)
        if not jumped:
            self.reported = False
            return
        if not self.reported:
            self.reported = True
            message = (f"step {step}: the loss jumped: {self.key} is {loss:.6g}, {loss - self.lowest:.6g} nats above its "
                       f"lowest metric line ({self.lowest:.6g}), so training has diverged and the samples are likely "
                       "lost; resume from an earlier checkpoint with a lower optim.lr, or fix the decoder's spread "
                       "(e.g. vae.decoder_std=0.1 instead of a learned variance)")
            report(self.tracker, "the loss jumped", message, {"health/loss_jumped_at_step": step})
