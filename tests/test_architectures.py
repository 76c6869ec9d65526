"""The architecture registry: roles built by every architecture, spectral normalization, a user's networks
and recipes (model.networks, model.recipe), and every image architecture x family trained on images of
several shapes."""
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from gendist.cli import main
from gendist.config import load_config
from gendist.data.info import DataInfo
from gendist.errors import UserError
from gendist.nets.registry import NetworkBuilder, RoleSpec, build_network
from gendist.recipes import build_recipe
from helpers import ROOT, accelerate_command, free_port, gendist_command, make_env, read_metrics, run

IMAGE_ARCHS = ("conv", "resnet", "stylegan2")
TINY = ["model.hidden=8", "model.latent_dim=8", "stylegan2.max_channels=16", "stylegan2.w_dim=16",
        "stylegan2.mapping_layers=2"]
EXAMPLE = ROOT / "examples" / "gendist_example"


def config_for(*overrides):
    two_domains = ["data.source_b=digits"] if "model.recipe=cyclegan" in overrides else []
    return load_config(None, ["data.source=digits", *two_domains, "model.arch=conv", *TINY, *overrides])


def images(shape):
    return DataInfo(kind="images", sample_shape=shape, domain_b=DataInfo(kind="images", sample_shape=shape))


@pytest.mark.parametrize("arch", IMAGE_ARCHS)
@pytest.mark.parametrize("recipe", ["gan", "vae", "bigan", "cyclegan"])
def test_every_image_architecture_builds_every_family_from_roles(arch, recipe):
    """Catches a role an architecture cannot build, or a recipe that reaches past the registry (a network of
    the wrong shape fails the registry's start-up probe): every network takes the data's shape."""
    networks = build_recipe(config_for(f"model.arch={arch}", f"model.recipe={recipe}"), images((3, 24, 40))
                            ).build_networks()
    assert networks and all(sum(p.numel() for p in net.parameters()) > 0 for net in networks.values())


@pytest.mark.parametrize("arch", ["resnet", "stylegan2"])
def test_image_architectures_refuse_points_with_one_line(arch):
    with pytest.raises(UserError, match=rf"model.arch={arch} cannot build the generator 'generator'.*use model.arch=mlp"):
        build_recipe(config_for(f"model.arch={arch}"), DataInfo(kind="points", sample_shape=(2,))).build_networks()


def spectrally_normalized(net) -> int:
    return sum(getattr(m, "parametrizations", None) is not None for m in net.modules())


def test_spectral_norm_iterates_once_per_weight_change_not_per_call():
    """Catches the power iteration advancing at every training-mode call (torch's spectral_norm): the estimate
    would then depend on how often D is called between optimizer steps (accumulation, lazy R1), and
    2 micro-steps x b would differ from 1 x 2b."""
    from gendist.nets.registry import SpectralNorm

    torch.manual_seed(0)
    weight = torch.randn(8, 12)
    norm = SpectralNorm(weight, warmup_iterations=0)  # random vectors: every iteration moves them
    first = norm(weight)
    u = norm._u.clone()
    again = norm(weight)  # same weight: no iteration
    assert torch.equal(norm._u, u) and torch.equal(first, again)
    changed = weight + 0.1
    norm(changed)  # a new weight: exactly one iteration
    assert not torch.equal(norm._u, u)
    u_changed = norm._u.clone()
    norm(changed)
    assert torch.equal(norm._u, u_changed)


def test_spectral_norm_defaults_to_resnet_discriminators_and_follows_the_option():
    """Catches spectral normalization missing from resnet's discriminator (SNGAN's default), applied to its
    generator, or ignoring model.spectral_norm."""
    info = images((1, 28, 28))
    nets = build_recipe(config_for("model.arch=resnet"), info).build_networks()
    assert spectrally_normalized(nets["discriminator"]) > 5 and spectrally_normalized(nets["generator"]) == 0
    nets = build_recipe(config_for("model.arch=resnet", "model.spectral_norm=none"), info).build_networks()
    assert spectrally_normalized(nets["discriminator"]) == 0
    nets = build_recipe(config_for("model.arch=conv", "model.spectral_norm=all"), info).build_networks()
    assert spectrally_normalized(nets["discriminator"]) > 0 and spectrally_normalized(nets["generator"]) > 0
    nets = build_recipe(config_for("model.arch=conv"), info).build_networks()  # conv: none unless asked
    assert spectrally_normalized(nets["discriminator"]) == 0
    # the power-iteration vectors are buffers: in the state dict (checkpointed, resumed)
    assert any(key.endswith("_u") for key in build_recipe(config_for("model.arch=resnet"), info)
               .build_networks()["discriminator"].state_dict())


@pytest.mark.parametrize("strategy", ["fsdp", "zero3"])
def test_spectral_norm_is_refused_under_sharded_strategies_naming_the_option(strategy):
    from gendist.engine.units import build_units, prepare_network_state

    networks = build_recipe(config_for("model.arch=resnet"), images((1, 28, 28))).build_networks()
    units = build_units(networks, {"generator": ("generator",), "discriminator": ("discriminator",)})
    with pytest.raises(UserError, match="model.spectral_norm: discriminator.* use ddp, ZeRO-1 or ZeRO-2, or set "
                                        "model.spectral_norm=none"):
        prepare_network_state(units, strategy, 2, torch.device("cpu"), False, print)
    prepare_network_state(units, "zero2", 2, torch.device("cpu"), False, print)  # whole weights: fine


def test_a_users_network_replaces_a_role_and_gets_the_shapes_it_asks_for():
    """Catches model.networks being ignored, or the registry not passing the shapes a user's class asks for."""
    config = config_for("model.networks.generator=user_networks:SmallGenerator",
                        "model.networks.generator_kwargs={width: 7}")
    nets = build_recipe(config, images((1, 8, 8))).build_networks()
    assert type(nets["generator"]).__name__ == "SmallGenerator" and nets["generator"].net[0].out_features == 7
    assert type(nets["discriminator"]).__name__ == "ConvEncoder"  # the other role: the architecture's
    # a network name (CycleGAN's d_a) takes precedence over its role
    config = config_for("model.recipe=cyclegan", "model.networks.d_a=user_networks:BatchNormDiscriminator")
    nets = build_recipe(config, images((1, 8, 8))).build_networks()
    assert type(nets["d_a"]).__name__ == "BatchNormDiscriminator" and type(nets["d_b"]).__name__ == "ConvEncoder"


def test_a_users_network_of_the_wrong_shape_stops_with_one_line_naming_it():
    """Catches a wrong output shape reaching training (a broadcasting loss would silently train nonsense)."""
    config = config_for("model.networks.generator=user_networks:FixedGenerator",
                        "model.networks.generator_kwargs={latent_dim: 8, out_dim: 10}")
    with pytest.raises(UserError) as error:
        build_recipe(config, images((1, 8, 8))).build_networks()
    message = str(error.value)
    assert "\n" not in message and "model.networks.generator (user_networks:FixedGenerator)" in message
    assert "returned (2, 10)" in message and "must return (2, 1, 8, 8)" in message and "(1, 8, 8)" in message
    config = config_for("model.networks.generator=user_networks:FixedGenerator",
                        "model.networks.generator_kwargs={latent_dim: 3}")
    with pytest.raises(UserError, match="generator 'generator' failed on an input of shape .2, 8."):
        build_recipe(config, images((1, 8, 8))).build_networks()


@pytest.mark.parametrize("override,message", [
    ("model.networks.generator=user_networks", "model.networks.generator must be package.module:Class"),
    ("model.networks.critic=user_networks:SmallGenerator", "model.networks.critic: not a role"),
    ("model.networks.generator=no_such_module:Net", "model.networks.generator=no_such_module:Net: cannot import"),
    ("model.networks.generator=user_networks:Nope", "user_networks has no attribute Nope"),
    ("model.arch=transformer", "model.arch must be one of mlp, conv, resnet, stylegan2, gaussian"),
    ("model.recipe=nosuch", "model.recipe must be gan, vae, bigan, cyclegan, package.module:Class or an installed"),
    ("model.recipe=user_networks:SmallGenerator", "is not a recipe (missing units"),
    ("recipe.bandwidths=[1.0]", "the recipe section holds a user recipe's options"),
    ("resnet.attention=-1", "resnet.attention must be >= 0"),
])
def test_bad_architecture_network_and_recipe_settings_stop_with_one_line(override, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")) as error:
        build_recipe(config_for(override), images((1, 8, 8))).build_networks()
    assert "\n" not in str(error.value)


def test_batchnorm_in_a_users_network_warns_under_ddp_and_sync_batchnorm_needs_a_gpu():
    """Catches a BatchNorm network silently treated as world-size independent, and SyncBatchNorm set up on
    CPU (where torch refuses it at the first step, after the data and networks were loaded)."""
    from gendist.engine.units import build_units, prepare_network_state

    networks = build_recipe(config_for("model.networks.discriminator=user_networks:BatchNormDiscriminator"),
                            images((1, 8, 8))).build_networks()
    units = build_units(networks, {"generator": ("generator",), "discriminator": ("discriminator",)})
    warnings = []
    prepare_network_state(units, "ddp", 2, torch.device("cpu"), False, warnings.append)
    assert len(warnings) == 1 and "BatchNorm" in warnings[0] and "model.sync_batchnorm" in warnings[0]
    with pytest.raises(UserError, match="model.sync_batchnorm: torch's SyncBatchNorm runs on GPUs only"):
        prepare_network_state(units, "ddp", 2, torch.device("cpu"), True, print)


def test_registry_networks_are_probed_without_touching_the_random_stream():
    """Catches the start-up probe drawing from the global RNG (it would shift every later initialization and
    the data order against earlier versions)."""
    torch.manual_seed(0)
    build_network(config_for("model.arch=stylegan2"), RoleSpec("generator", "generator", (8,), (1, 8, 8), True))
    after_build = torch.rand(3)
    torch.manual_seed(0)
    NetworkBuilder(config_for("model.arch=stylegan2"), True).architecture.build(
        RoleSpec("generator", "generator", (8,), (1, 8, 8), True))
    assert torch.equal(after_build, torch.rand(3))


SHAPES = [(1, 28, 28), (3, 32, 32), (3, 64, 64), (1, 24, 40)]
FAMILIES = {"gan": ["configs/gan_digits.yaml"],
            "vae": ["configs/vae_digits.yaml", "vae.eval_samples=4", "vae.prior_samples=0", "vae.gap_steps=0",
                    "vae.test_steps=1"],
            "bigan": ["configs/bigan_digits.yaml"],
            # the identity term without the alignment (the aligned translators: tests/test_units.py)
            "cyclegan": ["configs/cyclegan_digits_rot90.yaml", "cyclegan.align=none", "cyclegan.identity_weight=0.5"]}


@pytest.mark.slow
@pytest.mark.one_process
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_every_image_architecture_and_family_trains_on_images_of_that_shape(shape, tmp_path, monkeypatch, capsys):
    """conv, resnet and stylegan2 x GAN, VAE, BiGAN and CycleGAN train 20 steps on a user's uint8 images of
    this shape with the shipped digit configs (data location and architecture from the command line), and
    what they make has the data's shape: samples, reconstructions, codes, translations, sample grids.
    In-process (gendist.cli.main): no start-up cost."""
    from PIL import Image

    monkeypatch.setenv("GENDIST_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        data = (rng.random((64, *shape)) * 255).astype(np.uint8)  # uint8 (N, C, H, W), as users save them
        np.savez(tmp_path / f"{name}.npz", x=data, y=rng.integers(0, 10, 64))
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["data", "prepare", "--source", f"npz:{tmp_path / 'a.npz'}", "--out", str(one)]) == 0
    assert main(["data", "prepare", "--source", f"npz:{tmp_path / 'a.npz'}", "--source-b",
                 f"npz:{tmp_path / 'b.npz'}", "--out", str(two)]) == 0
    for arch in IMAGE_ARCHS:
        for family, config in FAMILIES.items():
            run_dir = tmp_path / f"{arch}-{family}"
            data = two if family == "cyclegan" else one
            code = main(["train", *config[:1], f"run.dir={run_dir}", f"data.dir={data}", *config[1:], f"model.arch={arch}",
                         *TINY, "train.max_steps=20", "train.batch_size=8", "log.every=10", "ckpt.every=0",
                         "log.sample_every=20", "log.wandb=false", "log.progress=false", "eval.num_samples=16",
                         "eval.metrics=[mmd]"])
            assert code == 0, (arch, family, capsys.readouterr().err[-2000:])
            losses = [m for m in read_metrics(run_dir) if any(k.endswith("/loss") for k in m)]
            assert [m["step"] for m in losses] == [10, 20], (arch, family)
            assert all(np.isfinite(v) for m in losses for k, v in m.items() if k.endswith("/loss")), (arch, family)
            out = tmp_path / f"{arch}-{family}.npy"
            if family == "cyclegan":
                assert main(["translate", str(run_dir), "--input", str(tmp_path / "a.npz"), "--out", str(out)]) == 0
                assert np.load(out).shape == (64, *shape)
                assert (run_dir / "samples" / "translations_step_00000020.png").is_file()
                continue
            assert main(["sample", str(run_dir), "--n", "4", "--out", str(out)]) == 0
            assert np.load(out).shape == (4, *shape), (arch, family)
            grid = Image.open(run_dir / "samples" / "step_00000020.png")
            assert grid.size[0] >= 8 * shape[2] and grid.size[1] >= 8 * shape[1], (arch, family, grid.size)
            if family in ("vae", "bigan"):
                assert (run_dir / "samples" / "reconstructions_step_00000020.png").is_file()
                assert main(["encode", str(run_dir), "--data", str(tmp_path / "a.npz"), "--out", str(out)]) == 0
                assert np.load(out).shape == (64, 8), (arch, family)


@pytest.mark.slow
@pytest.mark.one_process
@pytest.mark.parametrize("strategy", [["dist.strategy=fsdp"], ["dist.strategy=deepspeed", "dist.zero_stage=3"]],
                         ids=["fsdp", "zero3"])
def test_spectral_norm_under_a_sharded_strategy_exits_2_with_one_line(strategy, tmp_path):
    result = run(gendist_command("train", "configs/gan_digits.yaml", "model.arch=resnet", *TINY, *strategy, "train.ema_decay=0",
                                 f"run.dir={tmp_path / 'run'}", "train.max_steps=2", "log.wandb=false"),
                 make_env(tmp_path / "cache"), check=False)
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and errors[-1].startswith("gendist: error: model.spectral_norm:"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_example_package_trains_its_generator_and_recipe_under_ddp(tmp_path, monkeypatch, capsys):
    """examples/gendist_example installed (pip, its entry point included): `model.recipe=gmmn` resolves through
    the entry point, the user's generator trains under 2-process DDP, samples come out; a wrong generator
    kwarg stops both ranks with the one-line shape error."""
    target, source = tmp_path / "site", tmp_path / "gendist_example"
    shutil.copytree(EXAMPLE, source)  # (setuptools builds in the source folder)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(target), str(source)], check=True,
                   capture_output=True, timeout=300)
    env = make_env(tmp_path / "cache")
    env["PYTHONPATH"] = f"{target}:{env.get('PYTHONPATH', '')}"
    args = ["train", "configs/gan_ring.yaml", "model.recipe=gmmn", "model.latent_dim=4",
            "model.networks.generator=gendist_example.networks:ResidualMLPGenerator",
            "model.networks.generator_kwargs={width: 32, blocks: 2}", "recipe.bandwidths=[0.05, 0.2, 1.0]",
            "train.max_steps=200", "train.batch_size=128", "log.every=100", "ckpt.every=100", "log.sample_every=0",
            "log.wandb=false", "log.progress=false", "eval.num_samples=500"]
    run_dir = tmp_path / "run"
    result = run(accelerate_command(free_port(), *args, f"run.dir={run_dir}"), env)
    assert f"training gmmn with strategy ddp on 2 process(es)" in result.stdout, result.stdout[-2000:]
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics if "generator/loss" in m] == [100, 200]
    losses = [m["generator/loss"] for m in metrics if "generator/loss" in m]
    assert losses[-1] < losses[0], losses  # the MMD between data and samples falls
    out = tmp_path / "samples.npy"
    run(gendist_command("sample", str(run_dir), "--n", "5", "--out", str(out)), env)
    assert np.load(out).shape == (5, 2)
    # a wrong output shape: the one-line error at start-up (in this process; every rank runs the same check)
    monkeypatch.syspath_prepend(str(target))
    monkeypatch.setenv("GENDIST_CACHE", str(tmp_path / "cache"))
    assert main([*args, "model.networks.generator_kwargs={out_shape: [3]}", f"run.dir={tmp_path / 'wrong'}"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1 and "model.networks.generator (gendist_example.networks:ResidualMLPGenerator)" in errors[0]
    assert "returned (2, 3)" in errors[0] and "must return (2, 2)" in errors[0], errors
