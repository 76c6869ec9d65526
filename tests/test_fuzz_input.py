"""Malformed configs and command lines: every one exits 2 with a single line naming the problem."""
import dataclasses
import random
import typing

import pytest

from gendist.cli import main
from gendist.config import RunConfig, load_config
from gendist.errors import UserError

WRONG_VALUES = ["abc", "-5", "1.5", "[1, 2]", "{a: 1}", "true", "''", "null"]


def config_keys():
    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[field.name]):
                yield from walk(hints[field.name], f"{prefix}{field.name}.")
            else:
                yield prefix + field.name
    return list(walk(RunConfig, ""))


def malformed_overrides():
    rng = random.Random(0)
    cases = []
    for key in config_keys():
        for value in rng.sample(WRONG_VALUES, 3):
            cases.append([f"{key}={value}"])
    cases += [[f"{key}x=1"] for key in rng.sample(config_keys(), 10)]  # misspelled keys
    cases += [["=3"], ["train..max_steps=3"], ["train"], ["train.max_steps"], ["data.shards=/no/such/*.tar",
                                                                                "data.source="]]
    return cases


def is_rejected(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    return code, lines


def test_fuzz_overrides(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GENDIST_CACHE", str(tmp_path / "cache"))
    cases = malformed_overrides()
    rejected = 0
    for overrides in cases:
        try:  # a random value can be valid for its field (run.name=abc): only bad input is checked here
            load_config("configs/gan_ring.yaml", overrides)
            continue
        except UserError:
            pass
        except Exception as error:  # anything but a UserError is a bug in validation
            raise AssertionError(f"{overrides}: {error!r}") from None
        code, lines = is_rejected(["train", "configs/gan_ring.yaml", f"run.dir={tmp_path / 'never'}", *overrides],
                                  capsys)
        assert code == 2, (overrides, lines)
        assert len(lines) == 1 and lines[0].startswith("gendist: error:"), (overrides, lines)
        rejected += 1
    assert rejected >= 50


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
