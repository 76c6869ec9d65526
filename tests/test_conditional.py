"""Class-conditional models (model.conditional=true): networks that read the class, the labels of generated
samples, AC-GAN's outputs, the conditional VAE, class metrics and `gendist sample --class`. The exactness of
conditional training (2 ranks x b = 1 x 2b, SIGKILL/resume under DDP and ZeRO-2) is in test_strategies.py and
test_fault_tolerance.py (the resnet, stylegan2 and VAE cases are conditional)."""
import numpy as np
import pytest
import torch

from gendist.cli import main
from gendist.config import load_config
from gendist.data.info import DataInfo
from gendist.errors import UserError
from gendist.evaluation import class_metrics
from gendist.nets.conditional import balanced_labels
from gendist.recipes import build_recipe
from gendist.recipes.base import Batch, Nets
from helpers import run, gendist_command, make_env

TINY = ["model.hidden=8", "model.latent_dim=8", "stylegan2.max_channels=16", "stylegan2.w_dim=16",
        "stylegan2.mapping_layers=2"]
CLASSES = 10


def config_for(*overrides):
    return load_config(None, ["data.source=digits", "model.conditional=true", *TINY, *overrides])


def digits_info(shape=(1, 8, 8)):
    return DataInfo(kind="images", sample_shape=shape, num_classes=CLASSES)


class _Noise:
    def __init__(self, seed):
        self.generator = torch.Generator().manual_seed(seed)

    def randn(self, rows, *tail):
        return torch.randn(rows, *tail, generator=self.generator)


def relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("arch", ["mlp", "conv", "resnet", "stylegan2"])
@pytest.mark.parametrize("recipe", ["gan", "vae"])
def test_every_conditional_network_reads_the_class(arch, recipe):
    """Catches a conditional network that ignores its labels (an embedding never reaching the output, a
    wrapper that drops y): with the same z / x, another class gives another output, for the generator and
    projection discriminator of the GAN and the encoder and decoder of the VAE, for every architecture."""
    networks = build_recipe(config_for(f"model.arch={arch}", f"model.recipe={recipe}"), digits_info()).build_networks()
    torch.manual_seed(0)
    x, z = torch.rand(4, 1, 8, 8), torch.randn(4, 8)
    zeros, others = torch.zeros(4, dtype=torch.long), torch.tensor([1, 3, 5, 9])
    if recipe == "gan":
        pairs = [(networks["generator"], z), (networks["discriminator"], x)]
    else:
        vae = networks["vae"]
        pairs = [(vae.encoder, x), (vae.decoder, torch.randn(4, vae.settings.decoder_in))]
    for net, inputs in pairs:
        with torch.no_grad():
            a, b = net(inputs, zeros), net(inputs, others)
        assert relative_change(a, b) > 1e-3, type(net).__name__  # round-off would be ~1e-7; a class moves it by O(1)


def test_acgan_discriminator_scores_and_classifies_and_both_players_learn_the_class():
    """Catches AC-GAN's class loss missing from either player's loss: D has 1 + K outputs, both phases log a
    class cross-entropy near log K at initialization, and raising gan.acgan_weight from 0 to 2 raises each
    player's loss by exactly 2 x its class loss (same networks, same noise)."""
    def losses(weight):
        recipe = build_recipe(config_for("model.arch=conv", "gan.conditional=acgan", f"gan.acgan_weight={weight}"),
                              digits_info())
        batch = Batch(16, torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1)),
                      torch.arange(16) % CLASSES, _Noise(0))
        d_phase, g_phase = recipe.phases()[0], recipe.phases()[-1]
        return d_phase.loss(nets, batch, 0), g_phase.loss(nets, batch, 0)

    torch.manual_seed(0)
    networks = build_recipe(config_for("model.arch=conv", "gan.conditional=acgan"), digits_info()).build_networks()
    assert networks["discriminator"](torch.rand(2, 1, 8, 8)).shape == (2, 1 + CLASSES)
    nets = Nets(networks)
    with torch.no_grad():
        (d0, g0), (d2, g2) = losses(0.0), losses(2.0)
    for without, with_class in ((d0, d2), (g0, g2)):
        class_loss = float(with_class["class_loss"])
        assert 0.5 * np.log(CLASSES) < class_loss < 3 * np.log(CLASSES)
        assert float(with_class["loss"] - without["loss"]) == pytest.approx(2 * class_loss, rel=1e-4)
    assert float(d2["class_loss"]) > float(g2["class_loss"]) * 1.5  # D's is on real + generated: two terms


def test_generated_labels_are_uniform_and_a_function_of_the_noise():
    """Catches generated labels drawn from the global RNG (not resumable, not world-size independent) or
    skewed toward some classes: Batch.randint takes its labels from the step's noise stream, the same noise
    gives the same labels, and 20,000 draws hit every class 2,000 +- 200 times (a 4.5-sigma band)."""
    labels = Batch(20_000, None, None, _Noise(1)).randint(CLASSES)
    again = Batch(20_000, None, None, _Noise(1)).randint(CLASSES)
    assert torch.equal(labels, again) and labels.dtype == torch.long
    counts = torch.bincount(labels, minlength=CLASSES)
    assert counts.min() >= 1800 and counts.max() <= 2200, counts.tolist()
    assert torch.equal(balanced_labels(12, 5), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]))


def test_the_conditional_vae_reads_labels_everywhere_and_refuses_to_run_without_them():
    """Catches a conditional VAE method that forgets the labels (sampling, scoring, IWAE's k stacked copies):
    inside `given(y)` every piece runs; outside it the VAE stops with one line instead of decoding a class."""
    recipe = build_recipe(config_for("model.arch=conv", "model.recipe=vae", "vae.k=3", "vae.decoder=bernoulli",
                                     "vae.eval_samples=7", "vae.prior_samples=5", "vae.gap_steps=2"), digits_info())
    vae = recipe.build_networks()["vae"]
    x, y = torch.rand(6, 1, 8, 8).round(), torch.arange(6) % CLASSES
    terms = vae(x, torch.randn(3, 6, 8), 1.0, None, y)
    assert terms["objective"].shape == (6,)
    scores = recipe.scores(Nets(vae=vae), x, torch.Generator().manual_seed(0), y)
    assert scores["test_nll"].shape == (6,) and torch.isfinite(scores["test_nll"]).all()
    assert recipe.sample(Nets(vae=vae), 10, torch.Generator().manual_seed(0)).shape == (10, 1, 8, 8)
    with pytest.raises(UserError, match="needs the labels"):
        vae.encode(x)


def test_class_metrics_score_the_requested_class_and_the_per_class_distance():
    """Catches class accuracy computed against the wrong labels (e.g. the predicted class of another sample)
    and an intra-class distance that mixes classes: a generator that draws the right class scores 1.0 and an
    intra-class FD near 0; one that draws class k+1 when asked for k scores 0.0 and a large distance."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, (4, 3))
    reference_labels = np.repeat(np.arange(4), 200)
    reference = centres[reference_labels] + rng.normal(0, 1, (800, 3))
    requested = np.tile(np.arange(4), 100)
    right = centres[requested] + rng.normal(0, 1, (400, 3))
    wrong = centres[(requested + 1) % 4] + rng.normal(0, 1, (400, 3))
    good = class_metrics(requested, requested.copy(), right, reference, reference_labels, 4)
    bad = class_metrics(requested, (requested + 1) % 4, wrong, reference, reference_labels, 4)
    assert good["class_accuracy"] == 1.0 and good["class_accuracy_min"] == 1.0
    assert bad["class_accuracy"] == 0.0
    assert good["intra_class_fd"] < 0.5 < 50 < bad["intra_class_fd"]


@pytest.mark.parametrize("overrides,message", [
    (["model.recipe=bigan"], "model.conditional=true is built for model.recipe gan and vae"),
    (["gan.pack=2"], "set gan.pack=1"),
    (["model.recipe=vae", "vae.latent=bernoulli"], "needs vae.latent=gaussian"),
    (["model.arch=gaussian"], "model.arch=gaussian has no class-conditional generator"),
])
def test_conditional_settings_that_cannot_work_stop_with_one_line(overrides, message):
    from gendist.config import validate, validate_model

    with pytest.raises(UserError, match=message):
        config = config_for(*overrides)
        validate(config)
        validate_model(config)


def test_unlabelled_data_or_too_few_classes_stop_with_one_line():
    """Catches a conditional model built on data without labels (its embedding would read garbage) or with
    model.num_classes below the data's labels (an index error deep in a step)."""
    with pytest.raises(UserError, match="needs labelled data"):
        build_recipe(config_for("model.arch=conv"), DataInfo(kind="images", sample_shape=(1, 8, 8)))
    with pytest.raises(UserError, match="model.num_classes >= 10"):
        build_recipe(config_for("model.arch=conv", "model.num_classes=3"), digits_info())


@pytest.mark.slow
@pytest.mark.one_process
def test_a_conditional_gan_trains_evaluates_and_samples_by_class(tmp_path):
    """Catches the end-to-end path missing a piece: a conditional run trains, its evaluation samples every class
    and reports class metrics in a classifier's features (class accuracy, intra-class FD) with their noise
    floors (real training samples scored the same way), and `gendist sample
    --class K` draws class K (the classifier agrees more often than chance) and refuses a class out of range."""
    env = make_env(tmp_path / "cache")
    classifier = tmp_path / "classifier"
    run(gendist_command("classifier", "train", "--data", "digits", "--out", str(classifier), "--epochs", "15"), env)
    run_dir = tmp_path / "run"
    # AC-GAN learns the classes fastest: class accuracy 0.87 at 400 steps, 0.99 at 600 (projection: 0.42 and 0.50)
    run(gendist_command("train", "configs/gan_digits.yaml", f"run.dir={run_dir}", "model.conditional=true",
                        "gan.conditional=acgan", "train.ema_decay=0", "train.max_steps=400", "log.every=100", "log.sample_every=400", "log.wandb=false",
                        "log.progress=false", "eval.num_samples=500", f"eval.features=classifier:{classifier}",
                        "eval.noise_floor=true"), env)
    import json

    metrics = json.loads((run_dir / "eval.json").read_text())
    assert {"class_accuracy", "class_accuracy_min", "intra_class_fd"} <= set(metrics)
    assert metrics["class_accuracy"] > 0.5, metrics  # chance is 0.1
    # the noise floor: real training digits against the same held-out digits, scored like samples (the
    # classifier's accuracy on them; a floor far below the model's own distances)
    assert metrics["floor/class_accuracy"] > 0.9 and metrics["floor/frechet_distance"] < metrics["frechet_distance"]
    assert metrics["floor/intra_class_fd"] < metrics["intra_class_fd"], metrics
    out = tmp_path / "threes.npy"
    assert main(["sample", str(run_dir), "--n", "200", "--class", "3", "--out", str(out)]) == 0
    from gendist.classifier import load_classifier

    model, _ = load_classifier(classifier)
    with torch.no_grad():
        predicted = model(torch.from_numpy(np.load(out))).argmax(1)
    assert float((predicted == 3).float().mean()) > 0.5
    assert main(["sample", str(run_dir), "--n", "4", "--class", "10", "--out", str(out)]) == 2


def test_a_conditional_vae_encodes_each_image_at_its_class_or_at_the_class_asked(tmp_path, capsys):
    """Catches `gendist encode` dropping a conditional VAE's labels (it stopped with "needs the labels" before),
    encoding every row at one class, or pairing rows with the wrong labels across batches: the codes equal
    q(z|x, y)'s means computed directly with each row's own label; --class K encodes every row at K; data
    without labels, labels out of range and --class on an unconditional run stop with one line (exit 2)."""
    import os

    os.environ.setdefault("GENDIST_CACHE", str(tmp_path / "cache"))
    run_dir = tmp_path / "cvae"
    assert main(["train", "configs/vae_digits.yaml", f"run.dir={run_dir}", "model.conditional=true", "train.max_steps=2",
                 "train.batch_size=16", "ckpt.every=0", "log.sample_every=0", "log.wandb=false", "log.progress=false",
                 "eval.num_samples=32", "model.hidden=16", "vae.eval_samples=20", "vae.prior_samples=0",
                 "vae.gap_steps=0"]) == 0
    from gendist.inference import load_run

    rng = np.random.default_rng(0)
    x = rng.random((600, 1, 8, 8)).astype(np.float32)  # more rows than one encode batch (512)
    y = rng.integers(0, CLASSES, 600)
    np.savez(tmp_path / "labelled.npz", x=x, y=y)
    np.save(tmp_path / "unlabelled.npy", x)
    out = tmp_path / "z.npy"
    assert main(["encode", str(run_dir), "--data", str(tmp_path / "labelled.npz"), "--out", str(out)]) == 0
    codes = np.load(out)
    loaded = load_run(run_dir)
    vae = loaded.nets.vae
    with torch.no_grad(), vae.given(torch.from_numpy(y)):
        expected = vae.encode(torch.from_numpy(x))[0].numpy()
    # measured: 0.0 (batches of 512 against one of 600; other CPUs' kernels may differ by float32 round-off,
    # ~1e-7); rows encoded at a wrong label move by 0.06 (every row at class 3) to 0.08 (the first batch's labels)
    assert codes.shape == expected.shape and np.abs(codes - expected).max() < 1e-5
    import gendist

    in_python = gendist.load(run_dir).encode(torch.from_numpy(x), labels=torch.from_numpy(y)).numpy()
    assert np.abs(in_python - expected).max() < 1e-5  # the Python API, as `gendist encode`
    assert main(["encode", str(run_dir), "--data", str(tmp_path / "unlabelled.npy"), "--class", "3", "--out",
                 str(out)]) == 0
    with torch.no_grad(), vae.given(torch.full((600,), 3)):
        at_three = vae.encode(torch.from_numpy(x))[0].numpy()
    assert np.abs(np.load(out) - at_three).max() < 1e-5 and np.abs(at_three - expected).max() > 1e-3
    np.savez(tmp_path / "wide.npz", x=x[:4], y=np.array([0, 1, 2, 12]))
    capsys.readouterr()
    for args, fragment in (([str(tmp_path / "unlabelled.npy")], "has no labels"),
                           ([str(tmp_path / "wide.npz")], "labels in 0..12, but the run has 10 classes"),
                           ([str(tmp_path / "labelled.npz"), "--class", "10"], "--class must be in 0..9")):
        assert main(["encode", str(run_dir), "--data", *args, "--out", str(out)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], lines
