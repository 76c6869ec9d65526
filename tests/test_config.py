"""Config: YAML + dotted overrides, strict types, one-line errors."""
from pathlib import Path

import pytest

from gendist.config import load_config, parse_override
from gendist.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(ROOT.joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    config = load_config(path)
    assert config.train.max_steps > 0


def test_overrides_apply_with_types():
    config = load_config(CONFIGS[0], ["train.max_steps=7", "optim.lr=2e-4", "optim.betas=[0.0, 0.9]",
                                      "log.wandb=false", "run.dir=/tmp/x", "optim.lr_overrides={discriminator: 1e-3}"])
    assert config.train.max_steps == 7
    assert config.optim.lr == pytest.approx(2e-4)
    assert config.optim.betas == [0.0, 0.9]
    assert config.log.wandb is False
    assert config.optim.lr_overrides == {"discriminator": 1e-3}


@pytest.mark.parametrize("override, fragment", [
    ("train.nope=1", "unknown key 'train.nope'"),
    ("nosection.x=1", "unknown key 'nosection'"),
    ("train.max_steps=abc", "train.max_steps must be int"),
    ("train.max_steps=1.5", "train.max_steps must be int"),
    ("train.max_steps=0", "train.max_steps must be >= 1"),
    ("log.wandb=maybe", "log.wandb must be bool"),
    ("precision=fp8", "precision must be one of fp32|bf16|fp16"),
    ("optim.betas=[0.5]", "optim.betas must be two numbers"),
    ("train.ema_decay=1.5", "train.ema_decay must be in [0, 1)"),
    ("train.ema_rampup=-0.1", "train.ema_rampup must be in [0, 1]"),
    ("dist.zero_stage=4", "dist.zero_stage must be 1, 2 or 3"),
    ("train=3", "train must be a mapping"),
    ("novalue", "must look like key=value"),
    ("data.dir=somewhere data.shards=x/*.tar", "set exactly one of data.source, data.dir, data.shards (got dir, shards)"),
    ("data.source=", "no training data: set one of data.source, data.dir, data.shards"),
])
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(UserError) as error:
        load_config(CONFIGS[0], override.split(" "))
    assert fragment in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="invalid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        load_config(scalar)


def test_parse_override_scientific_notation():
    assert parse_override("optim.lr=1e-4") == (["optim", "lr"], "1e-4")  # converted by the float field
    assert load_config(CONFIGS[0], ["optim.lr=1e-4"]).optim.lr == pytest.approx(1e-4)


@pytest.mark.parametrize("recipe", ["gan", "vae", "bigan", "cyclegan"])
def test_recipe_player_and_phase_tables_match_the_recipes(recipe):
    """config.RECIPE_PLAYERS / RECIPE_PHASES (what per-player and per-phase settings may name) are the
    recipes' own players and phases (the R1 and R2 phases appear with gan.r1_gamma, gan.r2_gamma > 0)."""
    from gendist.config import RECIPE_PHASES, RECIPE_UNITS
    from gendist.data.info import DataInfo
    from gendist.recipes import build_recipe

    two_domains = ["data.source=digits", "data.source_b=digits_rot90"] if recipe == "cyclegan" else []
    # (the path-length phase needs a style-based generator: stylegan2 on images)
    path_length = ["model.arch=stylegan2", "model.hidden=8", "stylegan2.max_channels=8", "stylegan2.w_dim=8",
                   "gan.pl_weight=1.0"] if recipe == "gan" else []
    config = load_config(ROOT / "configs" / "gan_ring.yaml", [f"model.recipe={recipe}", "gan.r1_gamma=1.0",
                                                              "gan.r2_gamma=1.0", *two_domains, *path_length])
    info = DataInfo("images", (1, 8, 8)) if recipe == "gan" else DataInfo("points", (2,), domain_b=DataInfo("points", (2,)))
    built = build_recipe(config, info)
    assert built.units == RECIPE_UNITS[recipe]
    assert sorted(built.build_networks()) == sorted(n for networks in built.units.values() for n in networks)
    assert {phase.name for phase in built.phases()} == set(RECIPE_PHASES[recipe])


@pytest.mark.parametrize("override, expected", [
    ("data.dir=data/mine", ("", "data/mine", "", "")),
    ("data.shards=/d/train-*.tar", ("", "", "/d/train-*.tar", "")),
    ("data.source=grid", ("grid", "", "", "")),
])
def test_a_data_location_on_the_command_line_replaces_the_files(override, expected):
    """configs/gan_ring.yaml names data.source=ring; a location given on the command line takes its place
    (and data.test_shards may come with data.shards)."""
    config = load_config(ROOT / "configs" / "gan_ring.yaml", [override])
    data = config.data
    assert (data.source, data.dir, data.shards, data.test_shards) == expected
    with_test = load_config(ROOT / "configs" / "gan_ring.yaml", ["data.shards=/d/train-*.tar", "data.test_shards=/d/test-*.tar"])
    assert (with_test.data.source, with_test.data.test_shards) == ("", "/d/test-*.tar")


def test_a_data_location_on_the_command_line_takes_the_files_resize_with_it_and_says_so(capsys):
    """Catches the shipped configs/gan_emoji.yaml (data.source=emoji, data.resize [32, 32]) refusing a user's
    `data.dir=DIR` (the file's resize left behind, then rejected as a resize without a source), and a resize
    dropped with no word: the user must learn the images train at their prepared size. A resize given on the
    command line beside the location is kept (and refused, as before: prepare folders with --resize)."""
    config = load_config(ROOT / "configs" / "gan_emoji.yaml", ["data.dir=data/mine"])
    assert (config.data.source, config.data.dir, config.data.resize) == ("", "data/mine", [])
    note = capsys.readouterr().err
    assert note.count("\n") == 1 and "data.resize [32, 32]" in note and "--resize 32 32" in note
    with pytest.raises(UserError, match="data.resize applies when data.source is prepared"):
        load_config(ROOT / "configs" / "gan_emoji.yaml", ["data.dir=data/mine", "data.resize=[16,16]"])
    load_config(ROOT / "configs" / "gan_ring.yaml", ["data.dir=data/mine"])  # no resize in the file: no note
    assert capsys.readouterr().err == ""


def test_a_file_with_two_data_locations_is_an_error(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text("data:\n  source: ring\n  dir: data/ring\n")
    with pytest.raises(UserError, match=r"set exactly one of data.source, data.dir, data.shards \(got source, dir\); keep one"):
        load_config(path)
