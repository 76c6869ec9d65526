"""Malformed configs and command lines: every one exits 2 with a single line naming the problem."""
import dataclasses
import random
import typing

import pytest
import yaml

from gendist.cli import main
from gendist.config import RunConfig, load_config
from gendist.errors import UserError

WRONG_VALUES = ["abc", "-5", "1.5", "[1, 2]", "{a: 1}", "true", "''", "null"]
BASE = "configs/gan_ring.yaml"  # data.source=ring, model.recipe=gan


def config_fields() -> dict[str, object]:
    """Every leaf key of RunConfig with its annotation."""
    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[field.name]):
                yield from walk(hints[field.name], f"{prefix}{field.name}.")
            else:
                yield prefix + field.name, hints[field.name]
    return dict(walk(RunConfig, ""))


def _is_float(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    try:
        float(value)
        return isinstance(value, str)
    except (TypeError, ValueError):
        return False


def type_accepts(annotation, value) -> bool:
    """The documented typing rule, spelled out independently of gendist.config: ints are floats, numeric
    strings are floats (YAML 1.1 reads 2e-4 as a string), nothing else converts."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return any(value == choice and type(value) is type(choice) for choice in args)
    if origin is list:
        return isinstance(value, list) and all(type_accepts(args[0], item) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(type_accepts(args[1], item) for item in value.values())
    if annotation is float:
        return _is_float(value)
    return type(value) is annotation


def at_least(bound):
    return lambda value: value >= bound


# Range rules per key, a second spelling of the documented constraints (on top of the base config).
RANGES = {
    "run.dir": lambda v: v.strip() != "",
    "data.source": lambda v: v in ("ring", "grid", "swissroll", "mixture1d", "digits"),
    # a location on the command line replaces the file's data.source (whether it exists is checked when the
    # run starts); test shards need data.shards
    "data.test_shards": lambda v: v == "",
    "data.source_b": lambda v: v == "" or v in ("ring", "grid", "swissroll", "mixture1d", "digits", "digits_rot90",
                                                "digits_inverted", "stacked_digits", "fashion_mnist",
                                                "fashion_mnist_inverted", "emoji"),
    "data.resize": lambda v: v == [] or (len(v) == 2 and all(type(s) is int and 4 <= s <= 4096 for s in v)),
    "data.num_workers": at_least(0), "data.shuffle_buffer": at_least(1),
    "model.latent_dim": at_least(1), "model.hidden": at_least(1), "model.depth": at_least(0),
    "gan.divergence": lambda v: v in ("total_variation", "kl", "reverse_kl", "pearson", "neyman",
                                        "squared_hellinger", "jeffrey", "jensen_shannon", "gan", "alpha",
                                      "jensen_shannon_weighted"),
    "gan.pi": lambda v: 0 < float(v) < 1, "bigan.n_critic": at_least(1), "cyclegan.cycle_weight": at_least(0),
    "cyclegan.identity_weight": at_least(0), "cyclegan.pool_size": at_least(0), "cyclegan.generator_depth": at_least(-1),
    "cyclegan.downsample": lambda v: 0 <= v <= 4,
    "gan.n_critic": at_least(1), "gan.clip_value": at_least(0), "gan.gp_weight": at_least(0),
    "gan.r1_gamma": at_least(0), "gan.r2_gamma": at_least(0), "gan.r1_every": at_least(1), "gan.unroll_steps": at_least(0),
    "gan.unroll_lr": at_least(0), "gan.pack": lambda v: v >= 1 and 256 % v == 0,
    "model.gaussian_init": lambda v: len(v) == 2 and float(v[1]) > 0, "vae.eval_samples": at_least(1),
    "optim.lr": lambda v: float(v) > 0, "optim.betas": lambda v: len(v) == 2 and all(0 <= b < 1 for b in v),
    "optim.weight_decay": lambda v: float(v) >= 0, "optim.grad_clip": lambda v: float(v) >= 0,
    "optim.lr_overrides": lambda v: set(v) <= {"generator", "discriminator"} and all(float(x) > 0 for x in v.values()),
    "optim.warmup_steps": at_least(0), "optim.final_lr_fraction": lambda v: 0 <= float(v) <= 1,
    "train.max_steps": at_least(1), "train.seed": at_least(0), "train.batch_size": at_least(1),
    "train.grad_accum": at_least(1), "train.ema_decay": lambda v: 0 <= float(v) < 1,
    "train.max_bad_steps": at_least(1), "train.inject_nan_steps": lambda v: all(s >= 0 for s in v),
    "train.inject_nan_phase": lambda v: v in ("", "discriminator", "discriminator_r1", "discriminator_r2", "generator"),
    "dist.zero_stage": lambda v: v in (1, 2, 3), "dist.timeout_s": at_least(1),
    "ckpt.every": at_least(0), "ckpt.keep": at_least(1),
    "log.every": at_least(1), "log.sample_every": at_least(0), "log.wandb_project": lambda v: v.strip() != "",
    "eval.every": at_least(0), "eval.num_samples": at_least(10),  # the base config evaluates (eval.metrics not empty)
    "gan.ada_target": lambda v: float(v) == 0, "gan.ada_interval": at_least(1), "gan.ada_kimg": lambda v: float(v) > 0,
    "log.d_wins_loss": lambda v: 0 <= float(v) < 1, "log.d_wins_logs": at_least(0),
    "vae.levels": at_least(2), "vae.categories": at_least(2), "vae.k": at_least(1), "vae.eval_budget": at_least(1),
    "vae.prior_samples": at_least(0), "vae.gap_steps": at_least(0), "vae.kl_warmup_steps": at_least(0),
    "vae.free_bits": lambda v: float(v) >= 0, "vae.decoder_std": lambda v: float(v) >= 0,
    "vae.gap_lr": lambda v: float(v) >= 0, "vae.baseline_decay": lambda v: 0 <= float(v) < 1,
    # the base config's latents are Gaussian (reparameterized): a score-function baseline is refused
    "vae.baseline": lambda v: v == "none",
    # per-datapoint inference needs the owner split mode, which the base config does not use
    "vae.inference": lambda v: v == "amortized", "vae.test_steps": at_least(1),
    "vae.local_lr": lambda v: float(v) >= 0,
    "model.recipe": lambda v: v in ("gan", "vae", "bigan", "cyclegan"),
    "model.arch": lambda v: v in ("mlp", "conv", "resnet", "stylegan2", "gaussian"),
    "model.networks": lambda v: v == {}, "recipe": lambda v: v == {}, "resnet.attention": at_least(0),
    "stylegan2.max_channels": at_least(1), "stylegan2.w_dim": at_least(1), "stylegan2.mapping_layers": at_least(1),
    "stylegan2.mbstd_group": at_least(1), "gan.pl_every": at_least(1),
    "stylegan2.style_mixing": lambda v: 0 <= float(v) <= 1, "gan.pl_weight": lambda v: float(v) >= 0,
    "gan.augment": lambda v: v == "" or all(part.strip() in ("color", "translation", "cutout") for part in v.split(",")),
    "gan.augment_p": lambda v: 0 < float(v) <= 1, "gan.acgan_weight": lambda v: float(v) >= 0,
    "model.num_classes": at_least(0),
    "eval.features": lambda v: v == "pixels" or (v.partition(":")[0] in ("classifier", "inception") and v.partition(":")[2] != ""),
}


def expected_outcome(key: str, value) -> bool:
    """True: the override must be accepted; False: rejected with a message naming the key."""
    annotation = config_fields()[key]
    return type_accepts(annotation, value) and RANGES.get(key, lambda v: True)(value)


def override_cases() -> list[tuple[str, str]]:
    rng = random.Random(0)
    cases = [(key, value) for key in config_fields() for value in rng.sample(WRONG_VALUES, 3)]
    # values that are wrong in context and were once accepted, plus a few that are right
    cases += [("run.dir", "''"), ("optim.lr_overrides", "{nosuchplayer: 1}"), ("optim.lr_overrides", "{discriminator: 0}"),
              ("optim.lr_overrides", "{discriminator: 4.0e-4}"), ("gan.pack", "3"), ("gan.pack", "4"),
              ("optim.lr", "2e-4"), ("gan.divergence", "kl"), ("data.source", "digits"), ("data.source", "npz:x.npz"),
              ("train.inject_nan_phase", "generator"), ("train.inject_nan_steps", "[-1]"), ("optim.lr", ".nan"),
              ("gan.pi", "0.3"), ("gan.pi", "1.0"), ("model.recipe", "bigan"), ("cyclegan.cycle_weight", "5")]
    return cases


def test_fuzz_overrides_each_outcome_is_the_expected_one(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GENDIST_CACHE", str(tmp_path / "cache"))
    outcomes = {True: 0, False: 0}
    for key, raw in override_cases():
        value = yaml.safe_load(raw)
        accept = expected_outcome(key, value)
        outcomes[accept] += 1
        override = f"{key}={raw}"
        if accept:
            try:
                config = load_config(BASE, [override])
            except UserError as error:
                raise AssertionError(f"{override} is valid but was rejected: {error}") from None
            section, _, name = key.rpartition(".")
            loaded = getattr(getattr(config, section) if section else config, name)
            assert loaded == value or (isinstance(value, str) and loaded == float(value)), (override, loaded)
            continue
        code, lines = is_rejected(["train", BASE, f"run.dir={tmp_path / 'never'}", override] if key != "run.dir"
                                  else ["train", BASE, override], capsys)
        assert code == 2, (override, lines)
        assert len(lines) == 1 and lines[0].startswith("gendist: error:"), (override, lines)
        assert key in lines[0], f"{override}: the error does not name {key}: {lines[0]}"
    assert outcomes[True] >= 15 and outcomes[False] >= 150, outcomes  # both branches really exercised


@pytest.mark.parametrize("old, new", [("model.gan_loss=hinge", "gan.loss"), ("model.r1_gamma=1", "gan.r1_gamma"),
                                      ("model.decoder=gaussian", "vae.decoder"), ("model.pack=2", "gan.pack")])
def test_keys_that_moved_out_of_model_name_their_new_place(old, new, tmp_path, capsys):
    code, lines = is_rejected(["train", BASE, f"run.dir={tmp_path / 'never'}", old], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert f"{old.split('=')[0]} moved to {new}" in lines[0], lines[0]


@pytest.mark.parametrize("override, fragment", [
    ("model.nonsensex=1", "unknown key 'model.nonsensex'"), ("train.max_stepsx=1", "unknown key 'train.max_stepsx'"),
    ("=3", "empty key"), ("train..max_steps=3", "empty key"), ("train", "must look like key=value"),
    ("train.max_steps", "must look like key=value"), ("train.max_steps.x=3", "train.max_steps"),
])
def test_malformed_override_syntax(override, fragment, tmp_path, capsys):
    code, lines = is_rejected(["train", BASE, f"run.dir={tmp_path / 'never'}", override], capsys)
    assert code == 2 and len(lines) == 1 and fragment in lines[0], lines


def test_missing_shards_are_one_line(tmp_path, capsys):
    code, lines = is_rejected(["train", BASE, f"run.dir={tmp_path / 'never'}", "data.shards=/no/such/*.tar",
                               "data.source="], capsys)
    assert code == 2 and len(lines) == 1 and "data.shards" in lines[0], lines


def is_rejected(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    return code, lines


@pytest.mark.parametrize("text", [
    "train: [", "train:\n  max_steps: {", "- a\n- b\n", "run: 3\n", "model:\n  recipe: diffusion\n",
    "optim:\n  betas: 0.5\n", "train:\n  seed: 1.5\n", "data:\n  source: ring\n  dir: x\n", "log:\n  wandb: 2\n",
    "unknown_section:\n  a: 1\n", "\x00\x01binary", "train:\n  batch_size: -3\n",
])
def test_fuzz_config_files(text, tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    code, lines = is_rejected(["train", str(path)], capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("gendist: error:"), lines


@pytest.mark.parametrize("argv", [
    [], ["--bogus"], ["data"], ["data", "prepare"], ["data", "prepare", "--source", "ring"],
    ["data", "prepare", "--source", "ring", "--out", "x", "--shard-size", "0"],
    ["data", "prepare", "--source", "ring", "--out", "x", "--test-fraction", "1.5"],
    ["data", "prepare", "--source", "npz:/no/such.npz", "--out", "x"],
    ["data", "prepare", "--source", "folder:/no/such/folder", "--out", "x"],
    ["sample", "/no/run", "--out", "a.png"], ["sample", "/no/run", "--n", "0", "--out", "a.png"],
    ["sample", "/no/run", "--n", "many", "--out", "a.png"], ["eval"], ["eval", "/no/run", "--num-samples", "x"],
    ["train", "configs/gan_ring.yaml", "precision=fp8"],
])
def test_fuzz_command_lines(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path) if argv[:1] == ["data"] else None
    code, lines = is_rejected(argv, capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("gendist: error:"), (argv, lines)


def test_prepare_rejects_bad_arrays_and_an_unwritable_out_folder(tmp_path, capsys):
    """Inputs that once gave tracebacks: a string array x, float labels, --out under a regular file."""
    import numpy as np

    np.savez(tmp_path / "strings.npz", x=np.array(["a", "b", "c", "d"]))
    np.savez(tmp_path / "labels.npz", x=np.zeros((4, 2)), y=np.array([0.5, 1.0, 2.0, 3.0]))
    (tmp_path / "a_file").write_text("not a folder")
    cases = [(["--source", f"npz:{tmp_path / 'strings.npz'}", "--out", str(tmp_path / "o1")], "array x has dtype <U1"),
             (["--source", f"npz:{tmp_path / 'labels.npz'}", "--out", str(tmp_path / "o2")], "labels must be integers"),
             (["--source", "ring", "--out", str(tmp_path / "a_file" / "sub")], "cannot create the --out folder")]
    for args, fragment in cases:
        code, lines = is_rejected(["data", "prepare", *args], capsys)
        assert code == 2 and len(lines) == 1 and lines[0].startswith("gendist: error:") and fragment in lines[0], \
            (args, lines)


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """Tiny finished runs of each family that has an encoder or translates (2 steps, in-process)."""
    root = tmp_path_factory.mktemp("fuzz-runs")
    quiet = ["train.max_steps=2", "train.batch_size=16", "ckpt.every=0", "log.sample_every=0", "log.wandb=false",
             "log.progress=false", "eval.num_samples=32", "model.hidden=16", "vae.eval_samples=20", "vae.prior_samples=0",
             "vae.gap_steps=0"]
    import os
    os.environ.setdefault("GENDIST_CACHE", str(root / "cache"))
    runs = {}
    for name, config in (("bigan", "configs/bigan_digits.yaml"), ("cyclegan", "configs/cyclegan_digits_rot90.yaml"),
                         ("gan", "configs/gan_ring.yaml"), ("vae", "configs/vae_digits.yaml")):
        runs[name] = root / name
        assert main(["train", config, f"run.dir={runs[name]}", *quiet]) == 0
    return runs


def test_fuzz_encode_translate_and_two_domain_prepare(trained_runs, tmp_path, capsys):
    """Malformed inputs to the newer commands: each one exit code 2 and one line naming the problem."""
    import numpy as np

    np.savez(tmp_path / "points.npz", x=np.zeros((5, 2), dtype=np.float32))
    np.savez(tmp_path / "digits.npz", x=np.zeros((5, 1, 8, 8), dtype=np.float32))
    np.save(tmp_path / "strings.npy", np.array([["a", "b"], ["c", "d"]]))
    (tmp_path / "a_file").write_text("x")
    bigan, cyclegan, gan, vae = (str(trained_runs[k]) for k in ("bigan", "cyclegan", "gan", "vae"))
    out = str(tmp_path / "z.npy")
    cases = [
        (["encode", str(tmp_path), "--data", str(tmp_path / "digits.npz"), "--out", out], "not a run folder"),
        (["encode", bigan, "--data", str(tmp_path / "digits.npz"), "--out", str(tmp_path / "z.txt")], "--out must end in .npy"),
        (["encode", bigan, "--data", str(tmp_path / "missing.npz"), "--out", out], "not found"),
        (["encode", bigan, "--data", str(tmp_path / "points.npz"), "--out", out], "samples of shape (2,)"),
        (["encode", bigan, "--data", str(tmp_path / "strings.npy"), "--out", out], "expected a numeric array"),
        (["encode", bigan, "--data", str(tmp_path / "a_file"), "--out", out], "not an .npz/.npy file"),
        (["encode", gan, "--data", str(tmp_path / "points.npz"), "--out", out], "has no encoder"),
        (["encode", vae, "--data", str(tmp_path / "digits.npz"), "--out", out, "--features", "discriminator"],
         "a VAE has no discriminator"),
        (["encode", bigan, "--data", str(tmp_path / "digits.npz"), "--out", out, "--features", "pixels"], "invalid choice"),
        (["encode", bigan, "--out", out], "required"),
        (["translate", cyclegan, "--input", str(tmp_path / "digits.npz"), "--direction", "sideways", "--out", out],
         "invalid choice"),
        (["translate", cyclegan, "--input", str(tmp_path / "digits.npz"), "--out", str(tmp_path / "x.txt")],
         "--out must be x.npy, grid.png or a folder"),
        (["translate", cyclegan, "--input", str(tmp_path / "points.npz"), "--out", out], "samples of shape (2,)"),
        (["translate", cyclegan, "--input", str(tmp_path / "nothing"), "--out", out], "not found"),
        (["translate", bigan, "--input", str(tmp_path / "digits.npz"), "--out", out], "translate works on CycleGAN"),
        (["translate", cyclegan, "--input", str(tmp_path / "digits.npz"), "--out", str(tmp_path / "a_file" / "d")],
         "cannot write"),
        (["sample", cyclegan, "--out", str(tmp_path / "s.png")], "does not sample from noise"),
        (["data", "prepare", "--source", "digits", "--source-b", "digits_upside_down", "--out", str(tmp_path / "d")],
         "--source-b: unknown source"),
        (["data", "prepare", "--source", "digits", "--source-b", f"npz:{tmp_path / 'missing.npz'}", "--out",
          str(tmp_path / "d2")], "missing.npz"),
        (["data", "prepare", "--source", "nope", "--source-b", "digits", "--out", str(tmp_path / "d3")],
         "--source: unknown source"),
        (["train", "configs/cyclegan_digits_rot90.yaml", f"run.dir={tmp_path / 'r'}", "data.source_b="],
         "needs data.source_b"),
        (["train", "configs/gan_ring.yaml", f"run.dir={tmp_path / 'r'}", "data.source_b=ring_rot90"],
         "data.source_b: unknown source"),
        (["train", "configs/cyclegan_digits_rot90.yaml", f"run.dir={tmp_path / 'r'}", "data.source=",
          "data.shards=x-*.tar"], "needs two domains"),
    ]
    for argv, fragment in cases:
        code, lines = is_rejected(argv, capsys)
        assert code == 2 and len(lines) == 1 and lines[0].startswith("gendist: error:"), (argv, lines)
        assert fragment in lines[0], (argv, lines[0])


def test_a_checkpoint_of_another_architecture_is_one_line(trained_runs, tmp_path, capsys):
    """Weights that do not fit the networks the run's config builds (another gendist version, an edited
    config.yaml): one line naming the network, not torch's multi-line state-dict report."""
    import shutil

    import numpy as np

    run_dir = tmp_path / "bigan"
    shutil.copytree(trained_runs["bigan"], run_dir)
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("hidden: 16", "hidden: 32"))  # trained with model.hidden=16
    np.savez(tmp_path / "digits.npz", x=np.zeros((5, 1, 8, 8), dtype=np.float32))
    code, lines = is_rejected(["encode", str(run_dir), "--data", str(tmp_path / "digits.npz"), "--out",
                               str(tmp_path / "z.npy")], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "does not match the architecture this version of gendist builds" in lines[0], lines[0]
