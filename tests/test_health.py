"""A discriminator that wins outright is reported as it happens (gendist.engine.health)."""
import json

import pytest

from gendist.config import load_config
from gendist.engine.health import DiscriminatorWatch, LossJumpWatch, watched_key


class _Tracker:
    """Records what the watch sends to W&B (the Tracker's alert and summary)."""

    def __init__(self):
        self.alerts, self.summaries = [], []

    def alert(self, title, text):
        self.alerts.append(text)

    def summary(self, metrics):
        self.summaries.append(metrics)


def config(tmp_path, *overrides):
    return load_config(None, ["data.source=digits", f"run.dir={tmp_path}", *overrides])


def test_a_streak_of_near_zero_discriminator_losses_is_reported_once_per_episode(tmp_path, capsys):
    """Catches a watch that never fires, fires on a single low line, or repeats itself every line."""
    tracker = _Tracker()
    watch = DiscriminatorWatch(config(tmp_path, "log.d_wins_logs=3"), tracker)
    losses = [0.5, 0.004, 0.003, 0.002, 0.001, 0.001, 0.3, 0.002, 0.002, 0.002]
    flags = []
    for index, loss in enumerate(losses):
        metrics = {"discriminator/loss": loss}
        watch.update(50 * (index + 1), metrics)
        flags.append(metrics["health/discriminator_wins"])
    assert flags == [0, 1, 1, 1, 1, 1, 0, 1, 1, 1]
    err = capsys.readouterr().err
    assert err.count("the discriminator wins outright") == 2  # steps 200 and 500: two episodes
    assert "step 200:" in err and "(since step 100)" in err and "step 500:" in err
    assert len(tracker.alerts) == 2 and tracker.summaries == [{"health/discriminator_won_at_step": 200},
                                                                {"health/discriminator_won_at_step": 500}]


def test_a_vae_loss_that_jumps_is_reported_once_per_jump(tmp_path, capsys):
    """Catches a watch that misses the divergence measured with a learned decoder variance (the loss 22-61 nats
    per data value above its lowest line), fires on normal training (at most 0.056 nats per value above it,
    during a KL warm-up), repeats itself every line, or watches a GAN. 64 values per sample: the limit is 64
    nats above the lowest line."""
    tracker = _Tracker()
    watch = LossJumpWatch(config(tmp_path, "model.recipe=vae"), tracker, 64)
    losses = [40.0, 30.0, 33.5, 29.0, 29.0 + 64 * 20, 29.0 + 64 * 30, 31.0, 28.0, 28.0 + 64 * 22]
    flags = []
    for index, loss in enumerate(losses):
        metrics = {"elbo/loss": loss}
        watch.update(100 * (index + 1), metrics)
        flags.append(metrics["health/loss_jumped"])
    assert flags == [0, 0, 0, 0, 1, 1, 0, 0, 1]
    err = capsys.readouterr().err
    assert err.count("the loss jumped") == 2 and "step 500:" in err and "step 900:" in err
    assert tracker.summaries == [{"health/loss_jumped_at_step": 500}, {"health/loss_jumped_at_step": 900}]
    gan = {"elbo/loss": 1e9}
    LossJumpWatch(config(tmp_path), tracker, 64).update(100, gan)
    assert "health/loss_jumped" not in gan


def test_a_watch_restored_from_its_checkpoint_state_goes_on_as_the_uninterrupted_one(tmp_path, capsys):
    """Catches watches that forget across a resume: a jump after it measured from the post-resume lines only
    (unreported), a discriminator streak restarted (reported late), or an episode said a second time. Each watch
    is stopped after every line, its state sent through JSON (the checkpoint's trainer.json) into a new watch."""
    losses = [40.0, 30.0, 29.0, 29.0 + 64 * 20, 29.0 + 64 * 30, 31.0, 28.0 + 64 * 22]
    d_losses = [0.5, 0.001, 0.001, 0.001, 0.001, 0.6, 0.001]
    for make, key, values, flag in (
            (lambda t: LossJumpWatch(config(tmp_path, "model.recipe=vae"), t, 64), "elbo/loss", losses,
             "health/loss_jumped"),
            (lambda t: DiscriminatorWatch(config(tmp_path, "log.d_wins_logs=3"), t), "discriminator/loss", d_losses,
             "health/discriminator_wins")):
        whole_tracker, resumed_tracker = _Tracker(), _Tracker()
        whole = make(whole_tracker)
        flags_whole, flags_resumed, state = [], [], None
        for index, value in enumerate(values):
            watch = make(resumed_tracker)
            if state is not None:
                watch.load_state_dict(json.loads(json.dumps(state)))
            line_whole, line_resumed = {key: value}, {key: value}
            whole.update(100 * (index + 1), line_whole)
            watch.update(100 * (index + 1), line_resumed)
            flags_whole.append(line_whole[flag])
            flags_resumed.append(line_resumed[flag])
            state = watch.state_dict()
        assert flags_resumed == flags_whole and any(flags_whole), (key, flags_whole, flags_resumed)
        assert resumed_tracker.summaries == whole_tracker.summaries and whole_tracker.summaries, key


@pytest.mark.parametrize("overrides, key", [
    ((), "discriminator/loss"), (("gan.loss=hinge",), "discriminator/loss"), (("gan.loss=wgan_gp",), None),
    (("gan.loss=fgan",), None), (("model.recipe=vae",), None), (("log.d_wins_logs=0",), None),
])
def test_only_losses_with_a_floor_at_zero_are_watched(tmp_path, overrides, key):
    """Catches a WGAN critic (no floor: its loss is often negative) reported as winning."""
    assert watched_key(config(tmp_path, *overrides)) == key


@pytest.mark.slow
@pytest.mark.one_process
def test_a_run_whose_discriminator_wins_says_so_while_it_trains(tmp_path):
    """The issue's failure, made on purpose: a generator that cannot learn (lr 1e-9) against a fast discriminator.
    Catches the watch not wired into training (nothing in the log or metrics.jsonl)."""
    import subprocess
    import sys

    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "gendist", "train", "configs/gan_digits.yaml", f"run.dir={run}",
                             "train.max_steps=150", "log.every=20", "log.sample_every=0", "log.wandb=false",
                             "eval.num_samples=100", "eval.metrics=[mmd]", "optim.lr_overrides.generator=1e-9",
                             "optim.lr_overrides.discriminator=3e-3", "log.progress=false"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "the discriminator wins outright" in result.stderr
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(line.get("health/discriminator_wins") == 1.0 for line in lines)
