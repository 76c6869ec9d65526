"""Evaluation in one process (no launcher): what `gendist.evaluation` does with chunks and which number it
reports under which name. tests/test_evaluation.py compares 1 and 2 real processes (slow tier); a bug both
process counts share (every chunk drawing the same samples, precision and recall swapped) passes there."""
import numpy as np
import pytest
import torch

from gendist.data.info import DataInfo
from gendist.evaluation import (CHUNK, STREAM_SAMPLES, chunk_generator, compare_sets, evaluate,
                                sample_metrics)
from gendist.features import Featurizer


class RecordingRecipe:
    """A recipe whose samples and per-sample scores are the evaluation's own noise, recorded per call."""

    info = DataInfo("points", (2,))

    def __init__(self):
        self.samples: list[torch.Tensor] = []
        self.score_noise: list[torch.Tensor] = []

    def sample(self, nets, count, generator, inputs=None):
        self.samples.append(torch.randn(count, 2, generator=generator))
        return self.samples[-1]

    def scores(self, nets, x, generator):
        self.score_noise.append(torch.randn(len(x), generator=generator))
        return {"noise": self.score_noise[-1]}


def test_every_evaluation_chunk_draws_its_own_samples_and_scoring_noise():
    """Bug caught: `chunk_generator` seeded without the chunk index, so every chunk of generated samples (and
    every held-out chunk's scoring noise) is the same draw: the 1,100 samples here would be chunk 0's 500
    again and again. 1 and 2 processes still agree on that, and the process tests evaluate a single chunk."""
    recipe = RecordingRecipe()
    held_out_batches = [torch.rand(CHUNK, 2, generator=torch.Generator().manual_seed(c)) for c in range(2)]
    metrics = evaluate(recipe, None, lambda: [(x, None) for x in held_out_batches], seed=3,
                       num_samples=2 * CHUNK + 100, which=("mmd",))
    assert [len(chunk) for chunk in recipe.samples] == [CHUNK, CHUNK, 100]
    everything = torch.cat(recipe.samples)
    assert len(torch.unique(everything, dim=0)) == len(everything)  # no sample drawn twice
    # chunk c is a fixed function of (seed, c): the documented generator reproduces chunk 1
    redrawn = torch.randn(CHUNK, 2, generator=chunk_generator(3, STREAM_SAMPLES, 1))
    torch.testing.assert_close(recipe.samples[1], redrawn)
    first, second = recipe.score_noise
    assert not torch.equal(first, second)  # each held-out chunk is scored with noise of its own
    assert np.isfinite(metrics["mmd2"])
    assert metrics["noise"] == pytest.approx(float(torch.cat(recipe.score_noise).mean()))  # both chunks averaged


RING = 2.0 * np.stack([np.cos(2 * np.pi * np.arange(8) / 8), np.sin(2 * np.pi * np.arange(8) / 8)], axis=1)


def two_of_eight_modes(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(real: all 8 ring modes, fake: 2 of them), std 0.05, 2,000 points each: fake lies inside the data
    (precision near 1) but covers a quarter of it (recall near 1/4)."""
    rng = np.random.default_rng(seed)
    real = RING[rng.integers(8, size=2000)] + 0.05 * rng.normal(size=(2000, 2))
    fake = RING[rng.integers(2, size=2000)] + 0.05 * rng.normal(size=(2000, 2))
    return real.astype(np.float32), fake.astype(np.float32)


def test_precision_and_recall_are_reported_under_their_own_names_by_both_call_sites():
    """Bug caught: precision and recall swapped at a call site of `precision_recall` (training's evaluation
    through `sample_metrics`, `gendist compare` through `compare_sets`): the tests there check key names only.
    Here fake covers 2 of 8 modes: precision (fake inside real) is near 1 and recall (real inside fake) near
    1/4. Measured through both: precision 0.966, recall 0.228 (data seeds 0-5: 0.962-0.986 and 0.228-0.256),
    so a swap reads precision 0.228, recall 0.966: outside both bounds by > 0.07 and > 0.5."""
    real, fake = two_of_eight_modes()
    info = DataInfo("points", (2,), modes=RING.tolist(), mode_std=0.05)
    through_evaluation = sample_metrics(fake, real, info, seed=0, which=("pr",))
    through_compare = compare_sets(real, fake, ("pr",), Featurizer(), seed=0)
    for result in (through_evaluation, through_compare):
        assert result["precision"] > 0.9, result
        assert 0.15 < result["recall"] < 0.4, result


class FirstCoordinateRecipe(RecordingRecipe):
    """Scores each row by its first coordinate, cheaply enough to score training rows too."""

    train_scores = True

    def scores(self, nets, x, generator):
        return {"first": x[:, 0].double()}


def test_training_rows_are_scored_beside_the_held_out_ones_and_the_gap_is_train_minus_held_out():
    """Bug caught: the memorization keys of a recipe with cheap scores (a GAN's D output on training against
    held-out images, gendist.evaluation.evaluate's train/ and gap/) scoring the held-out rows twice, taking
    the noise floor's `num_samples` rows instead of as many training rows as held-out ones, or the gap's sign
    flipped. Held-out rows have first coordinate 1, training rows 3 for the first 1,100 and 100 after: the
    right reading is train 3, gap +2 (exact sums of small integers in float64)."""
    held_out = [torch.ones(CHUNK, 2), torch.ones(CHUNK, 2), torch.ones(100, 2)]
    train = torch.cat([torch.full((2 * CHUNK + 100, 2), 3.0), torch.full((CHUNK, 2), 100.0)])
    metrics = evaluate(FirstCoordinateRecipe(), None, lambda: [(x, None) for x in held_out], seed=0, num_samples=64,
                       which=("mmd",), train_data=lambda: [(train[i:i + 300], None) for i in range(0, len(train), 300)])
    assert metrics["first"] == 1.0
    assert metrics["train/first"] == 3.0
    assert metrics["gap/first"] == 2.0
    assert metrics["gap_se/first"] == 0.0  # constant scores on both sides: no noise in the gap
    without = evaluate(RecordingRecipe(), None, lambda: [(x, None) for x in held_out], seed=0, num_samples=64,
                       which=("mmd",), train_data=lambda: [(train, None)])
    assert not any(key.startswith(("train/", "gap/", "gap_se/")) for key in without)  # only where scores are cheap


def test_the_gaps_standard_error_combines_both_sides_sample_variances_over_their_own_counts():
    """Bug caught: gap_se/<score> (gendist.evaluation._memorization_gap) without the held-out side's variance,
    with one side's count for both, or with population variances (ddof 0). 1,100 held-out rows of 0 and 2
    alternating (variance 1.0009) against 1,100 training rows of 3, 5, 7 and 9 in turn (variance 5.0045): the
    standard error is sqrt(6.0055 / 1,100) = 0.07389. Dropping the held-out term reads 0.06745, ddof 0 reads
    0.07386 (a relative change of 4.5e-4); float64 sums of 2,200 small integers, compared to 1e-12 relative."""
    rows = 2 * CHUNK + 100
    held_values = np.tile([0.0, 2.0], rows // 2)
    train_values = np.tile([3.0, 5.0, 7.0, 9.0], rows // 4)
    held_out = torch.from_numpy(np.stack([held_values, held_values], 1)).float()
    train = torch.from_numpy(np.stack([train_values, train_values], 1)).float()
    metrics = evaluate(FirstCoordinateRecipe(), None, lambda: [(held_out[i:i + CHUNK], None) for i in range(0, rows, CHUNK)],
                       seed=0, num_samples=64, which=("mmd",), train_data=lambda: [(train, None)])
    expected = np.sqrt(train_values.var(ddof=1) / rows + held_values.var(ddof=1) / rows)
    assert metrics["gap/first"] == pytest.approx(5.0, rel=1e-12)
    assert metrics["gap_se/first"] == pytest.approx(expected, rel=1e-12)
    assert metrics["gap_se/first"] == pytest.approx(0.07389, rel=1e-4)
