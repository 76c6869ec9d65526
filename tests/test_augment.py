"""Differentiable augmentation (gendist.augment, `gan.augment`): each policy's effect, gradients through it,
its randomness as a function of the global row (world-size independent), and that the GAN recipe augments
everything its discriminator sees."""
import pytest
import torch
from torch import nn

from gendist.augment import COLUMNS, Augmenter, diff_augment, parse_policy
from gendist.config import load_config
from gendist.engine.noise import StepNoise
from gendist.errors import UserError
from gendist.recipes.base import Batch


ALL = ("color", "translation", "cutout")


def uniforms(rows: int, **columns: float) -> torch.Tensor:
    """(rows, COLUMNS) of 0.5 with chosen columns set, e.g. u(1, c4=0.0)."""
    u = torch.full((rows, COLUMNS), 0.5)
    for key, value in columns.items():
        u[:, int(key[1:])] = value
    return u


def test_off_rows_are_untouched_and_on_rows_change():
    """Catches the application probability ignored (every row augmented) or inverted."""
    x = torch.rand(4, 3, 16, 16)
    off = uniforms(4, c0=0.9, c4=0.9, c7=0.9)
    assert torch.equal(diff_augment(x, off, ALL, p=0.5), x)
    on = uniforms(4, c0=0.1, c4=0.1, c7=0.1, c1=0.9)
    assert not torch.allclose(diff_augment(x, on, ALL, p=0.5), x)


def test_translation_moves_a_pixel_and_pads_with_zeros():
    """Catches shifts in the wrong direction or wrapped around (roll) instead of zero-padded."""
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 8, 8] = 1.0
    # reach 2 on 16 pixels: u = 1.0 -> +2 rows, u = 0.0 -> -2 columns
    moved = diff_augment(x, uniforms(1, c4=0.0, c5=0.999, c6=0.0), ("translation",))
    assert moved[0, 0, 10, 6] == 1.0 and moved.sum() == 1.0
    edge = torch.zeros(1, 1, 16, 16)
    edge[0, 0, 15, :] = 1.0  # the last row leaves the image, nothing wraps to the top
    assert diff_augment(edge, uniforms(1, c4=0.0, c5=0.999, c6=0.5), ("translation",)).sum() == 0.0


def test_cutout_zeroes_a_quarter_of_the_image():
    """Catches a cutout of the wrong size (half the side: a quarter of the area)."""
    x = torch.ones(1, 3, 16, 16)
    out = diff_augment(x, uniforms(1, c7=0.0, c8=0.5, c9=0.5), ("cutout",))
    assert float((out == 0).float().mean()) == pytest.approx(0.25)


def test_color_and_saturation():
    """Brightness adds (u - 0.5); saturation 0 (u = 0) makes every channel the channel mean; contrast 1
    (u = 0.5) keeps the rest."""
    x = torch.rand(2, 3, 8, 8)
    grey = diff_augment(x, uniforms(2, c0=0.0, c1=0.5, c2=0.0, c3=0.5), ("color",))
    assert torch.allclose(grey, x.mean(dim=1, keepdim=True).expand_as(x), atol=1e-6)
    brighter = diff_augment(x, uniforms(2, c0=0.0, c1=0.75, c2=0.5, c3=0.5), ("color",))
    assert torch.allclose(brighter, x + 0.25, atol=1e-6)


def test_gradients_flow_through_every_policy():
    """Catches an augmentation that detaches (the generator would get no gradient through it)."""
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    u = torch.rand(4, COLUMNS, generator=torch.Generator().manual_seed(0))
    diff_augment(x, u, ALL).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_two_ranks_draw_the_augmentations_of_one_rank_with_the_double_batch():
    """Catches augmentation parameters drawn from a per-rank or global RNG instead of the batch's noise source
    (2 ranks x b would then differ from 1 x 2b, and a resumed run from the uninterrupted one)."""
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    augmenter = Augmenter(ALL, p=0.7)
    one = augmenter(x, Batch(8, x, None, StepNoise(5, torch.device("cpu"), 0, 1, 1).start(3, 0, 0, 0)))
    halves = [augmenter(x[4 * r:4 * r + 4], Batch(4, x[4 * r:4 * r + 4], None,
                                                   StepNoise(5, torch.device("cpu"), r, 2, 1).start(3, 0, 0, 0)))
              for r in range(2)]
    assert torch.equal(one, torch.cat(halves))
    other_step = augmenter(x, Batch(8, x, None, StepNoise(5, torch.device("cpu"), 0, 1, 1).start(4, 0, 0, 0)))
    assert not torch.equal(one, other_step)


def test_configuration_is_checked(tmp_path):
    assert parse_policy("cutout, color") == ("color", "cutout")
    with pytest.raises(UserError, match="gan.augment: unknown augmentation 'blur'"):
        load_config(None, ["data.source=digits", "gan.augment=color,blur", f"run.dir={tmp_path}"])
    with pytest.raises(UserError, match="gan.augment_p must be in"):
        load_config(None, ["data.source=digits", "gan.augment_p=0", f"run.dir={tmp_path}"])
    with pytest.raises(UserError, match="gan.unroll_steps"):
        load_config(None, ["data.source=digits", "gan.augment=color", "gan.unroll_steps=2", f"run.dir={tmp_path}"])


class _Marked:
    """Stands in for Augmenter in the recipe: adds 100 to what it augments (differentiably), so a sample the
    discriminator sees without augmentation is told apart by its range (the images lie in [0, 1])."""

    p, adaptive, last_rt = 1.0, False, None

    def __init__(self, *args):
        pass

    def observe(self, real_scores):
        pass

    def __call__(self, x, batch):
        assert len(x) == batch.size
        return x + 100.0


class _Recorder(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.score = nn.Linear(int(torch.tensor(shape).prod()), 1)
        self.seen: list[float] = []

    def forward(self, x):
        self.seen.append(float(x.detach().min()))
        return self.score(x.flatten(1))


@pytest.mark.parametrize("loss", ["nonsaturating", "relativistic", "wgan_gp"])
def test_the_discriminator_sees_only_augmented_images_in_every_phase(monkeypatch, tmp_path, loss):
    """Catches a phase that feeds D raw images: the real or generated batch of the D step, the generator's
    scores (and the real scores of a paired loss), the WGAN-GP interpolates, or R1/R2 (penalty and anchor)."""
    import gendist.recipes.gan as gan_module
    from gendist.data.info import DataInfo
    from gendist.recipes.base import Nets

    monkeypatch.setattr(gan_module, "Augmenter", _Marked)
    config = load_config(None, ["data.source=digits", f"gan.loss={loss}", "gan.augment=color", "gan.r1_gamma=1",
                                "gan.r2_gamma=1", "gan.r1_every=1", f"run.dir={tmp_path}"])
    recipe = gan_module.GANRecipe(config, DataInfo("images", (1, 8, 8)))
    latent = config.model.latent_dim
    generator = nn.Sequential(nn.Linear(latent, 64), nn.Sigmoid(), nn.Unflatten(1, (1, 8, 8)))
    discriminator = _Recorder((1, 8, 8))
    nets = Nets(generator=generator, discriminator=discriminator)
    x = torch.rand(6, 1, 8, 8)
    phases = recipe.phases()
    assert {phase.name for phase in phases} >= {"discriminator", "discriminator_r1", "discriminator_r2", "generator"}
    for index, phase in enumerate(phases):
        discriminator.seen.clear()
        batch = Batch(6, x, None, StepNoise(0, torch.device("cpu"), 0, 1, 1).start(1, index, 0, 0))
        out = phase.loss(nets, batch, 1)
        assert torch.isfinite(out["loss"]), phase.name
        assert discriminator.seen, f"{phase.name}: never called the discriminator"
        assert min(discriminator.seen) > 50, f"{phase.name}: D saw an image that was not augmented"


def _mean_over_one_rank(values):
    return {name: float(value) for name, value in values.items()}


def test_ada_moves_p_by_the_sign_of_the_real_scores_against_the_target():
    """Catches ADA's p moving the wrong way (up when D is fooled), by the wrong step, or between intervals."""
    augmenter = Augmenter(ALL, p=0.5, target=0.6, interval=4, kimg=1.0)
    for step in range(1, 4):  # D sure of real data: E[sign D(x)] = 1 > 0.6
        augmenter.observe(torch.ones(8, 1))
        augmenter.adapt(step, 64, _mean_over_one_rank)
        assert augmenter.p == 0.5  # not yet: every 4 steps
    augmenter.observe(torch.ones(8, 1))
    augmenter.adapt(4, 64, _mean_over_one_rank)
    assert augmenter.p == pytest.approx(0.5 + 64 * 4 / 1000) and augmenter.last_rt == 1.0
    for step in range(5, 9):  # 1 of 4 real scores positive: r_t = -0.5 < 0.6
        augmenter.observe(torch.tensor([[1.0], [-1.0], [-2.0], [-0.5]]))
        augmenter.adapt(step, 64, _mean_over_one_rank)
    assert augmenter.p == pytest.approx(0.5) and augmenter.last_rt == -0.5
    for step in range(9, 41):
        augmenter.observe(-torch.ones(8, 1))
        augmenter.adapt(step, 64, _mean_over_one_rank)
    assert augmenter.p == 0.0  # clipped at 0


def test_ada_state_resumes_mid_interval():
    """Catches p or the interval's partial sums lost at a checkpoint (a resumed run would adapt differently),
    and r_t (logged as discriminator/augment_rt until the next adjustment) lost with it."""
    straight = Augmenter(ALL, p=0.2, target=0.6, interval=4, kimg=1.0)
    resumed = Augmenter(ALL, p=0.2, target=0.6, interval=4, kimg=1.0)
    scores = [torch.tensor([[1.0], [1.0], [-1.0]]), torch.ones(3, 1), -torch.ones(3, 1), torch.ones(3, 1)] * 2
    for step, score in enumerate(scores, 1):
        straight.observe(score)
        straight.adapt(step, 32, _mean_over_one_rank)
        resumed.observe(score)
        resumed.adapt(step, 32, _mean_over_one_rank)
        if step == 6:  # "killed" after step 6: a new augmenter from the saved state
            state = resumed.state_dict()
            resumed = Augmenter(ALL, p=0.9, target=0.6, interval=4, kimg=1.0)
            resumed.load_state_dict(state)
    assert resumed.p == straight.p != 0.2
    assert resumed.last_rt == straight.last_rt is not None


def test_ada_logs_r_t_beside_p_once_it_is_measured(tmp_path):
    """Catches ADA's statistic r_t missing from the discriminator's logs (only p was logged: a p stuck at 0
    could not be told from a statistic below target), logged before any interval measured it, or lost from
    the state a resumed run restores (trainer.json's shared state)."""
    import gendist.recipes.gan as gan_module
    from gendist.data.info import DataInfo
    from gendist.recipes.base import Nets

    config = load_config(None, ["data.source=digits", "gan.augment=color", "gan.ada_target=0.6", "gan.augment_p=0",
                                "gan.ada_interval=1", f"run.dir={tmp_path}"])
    recipe = gan_module.GANRecipe(config, DataInfo("images", (1, 8, 8)))
    latent = config.model.latent_dim
    nets = Nets(generator=nn.Sequential(nn.Linear(latent, 64), nn.Sigmoid(), nn.Unflatten(1, (1, 8, 8))),
                discriminator=nn.Sequential(nn.Flatten(), nn.Linear(64, 1)))
    (d_phase,) = [phase for phase in recipe.phases() if phase.name == "discriminator"]
    batch = Batch(6, torch.rand(6, 1, 8, 8), None, StepNoise(0, torch.device("cpu"), 0, 1, 1).start(1, 0, 0, 0))
    logs = d_phase.loss(nets, batch, 0)
    assert "augment_p" in logs and "augment_rt" not in logs  # no interval has ended yet
    recipe.end_step(1, 6, _mean_over_one_rank)
    measured = recipe.augmenter.last_rt
    assert measured is not None and -1 <= measured <= 1
    logs = d_phase.loss(nets, batch, 1)
    assert float(logs["augment_rt"]) == pytest.approx(measured)
    resumed = gan_module.GANRecipe(config, DataInfo("images", (1, 8, 8)))
    resumed.load_shared_state(recipe.shared_state())
    assert resumed.augmenter.last_rt == measured and resumed.augmenter.p == recipe.augmenter.p


def test_ada_configuration_is_checked(tmp_path):
    with pytest.raises(UserError, match="gan.ada_target adapts the probability of gan.augment"):
        load_config(None, ["data.source=digits", "gan.ada_target=0.6", f"run.dir={tmp_path}"])
    with pytest.raises(UserError, match="gan.ada_target must be in"):
        load_config(None, ["data.source=digits", "gan.augment=color", "gan.ada_target=1.5", f"run.dir={tmp_path}"])
    load_config(None, ["data.source=digits", "gan.augment=color", "gan.ada_target=0.6", "gan.augment_p=0",
                       f"run.dir={tmp_path}"])  # ADA may start at p = 0
