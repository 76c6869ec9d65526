"""End-to-end CLI in a single process: prepare, train, eval, sample; bad input exits 2 with one line."""
import json

import numpy as np
import pytest

from helpers import gendist_command, read_metrics, run, make_env

FAST = ["train.max_steps=60", "log.every=20", "ckpt.every=30", "log.sample_every=30", "log.wandb=false",
        "log.progress=false", "eval.num_samples=500"]


@pytest.fixture(scope="module")
def ring_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("ring")
    env = make_env(base / "cache")
    data = base / "ring"
    run(gendist_command("data", "prepare", "--source", "ring", "--out", str(data), "--shard-size", "20000"), env)
    run_dir = base / "run"
    result = run(gendist_command("train", "configs/gan_ring.yaml", f"run.dir={run_dir}", "data.source=",
                                 f"data.dir={data}", *FAST), env)
    return run_dir, env, result


def test_prepare_writes_manifest_and_shards(ring_run):
    run_dir, env, _ = ring_run
    data = run_dir.parent / "ring"
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["splits"]["train"]["num_samples"] + manifest["splits"]["test"]["num_samples"] == 100_000
    assert sorted(p.name for p in data.glob("train-*.tar"))
    assert sorted(p.name for p in data.glob("test-*.tar"))


def test_run_folder_contents(ring_run):
    run_dir, _, result = ring_run
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000060"
    assert sorted(p.name for p in (run_dir / "samples").glob("*.png")) == [
        "step_00000030.png", "step_00000060.png"]
    metrics = read_metrics(run_dir)
    steps = [m["step"] for m in metrics if "discriminator/loss" in m]
    assert steps == [20, 40, 60]
    assert all(np.isfinite(m["generator/loss"]) for m in metrics if "generator/loss" in m)
    assert "modes_covered" in json.loads((run_dir / "eval.json").read_text())
    assert "samples in" in result.stdout


def test_eval_json_and_sample(ring_run, tmp_path):
    run_dir, env, _ = ring_run
    out = run(gendist_command("eval", str(run_dir), "--json", "--num-samples", "500"), env)
    metrics = json.loads(out.stdout.strip().splitlines()[-1])
    assert metrics["step"] == 60 and 0 <= metrics["modes_covered"] <= 8 and 0 <= metrics["hq_fraction"] <= 1
    run(gendist_command("sample", str(run_dir), "--n", "64", "--out", str(tmp_path / "x.npy")), env)
    assert np.load(tmp_path / "x.npy").shape == (64, 2)
    run(gendist_command("sample", str(run_dir), "--n", "64", "--out", str(tmp_path / "grid.png")), env)
    assert (tmp_path / "grid.png").stat().st_size > 1000


def test_vae_digits_trains_and_reports_elbo(tmp_path):
    env = make_env(tmp_path / "cache")
    run(gendist_command("train", "configs/vae_digits.yaml", f"run.dir={tmp_path / 'vae'}", *FAST), env)
    metrics = json.loads((tmp_path / "vae" / "eval.json").read_text())
    assert metrics["test_elbo"] < 0 and metrics["test_log_likelihood_iw64"] >= metrics["test_elbo"] - 1.0


@pytest.mark.parametrize("args, fragment", [
    (["train", "configs/gan_ring.yaml", "model.nonsense=1"], "unknown key 'model.nonsense'"),
    (["train", "configs/gan_ring.yaml", "train.batch_size=big"], "train.batch_size must be int"),
    (["train", "configs/gan_ring.yaml", "data.source=", "data.shards=/nonexistent/shard-{0..3}.tar"], "data.shards"),
    (["train", "configs/missing.yaml"], "not found"),
    (["train", "configs/fgan_kl_ring.yaml", "model.divergence=foo"], "unknown divergence 'foo'"),
    (["train", "configs/fgan_kl_ring.yaml", "model.divergence=alpha", "model.alpha=1"], "alpha"),
    (["eval", "/nonexistent/run"], "not a run folder"),
    (["sample", "/nonexistent/run", "--out", "x.gif"], "--out must end in .png"),
    (["data", "prepare", "--source", "mnist", "--out", "/tmp/gendist-never"], "mnist"),
    (["train"], "the following arguments are required"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_exits_2_with_one_line(args, fragment, tmp_path):
    result = run(gendist_command(*args), make_env(tmp_path / "cache"), check=False)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_train_on_shard_patterns_prepared_elsewhere(ring_run, tmp_path):
    """data.shards / data.test_shards: a glob and a brace pattern instead of a prepared folder."""
    run_dir, env, _ = ring_run
    data = run_dir.parent / "ring"
    test_shards = sorted(p.name for p in data.glob("test-*.tar"))
    brace = f"{data}/test-{{{test_shards[0][5:11]}..{test_shards[-1][5:11]}}}.tar"
    out = tmp_path / "shards-run"
    run(gendist_command("train", "configs/gan_ring.yaml", f"run.dir={out}", "data.source=",
                        f"data.shards={data}/train-*.tar", f"data.test_shards={brace}", *FAST), env)
    evaluation = json.loads((out / "eval.json").read_text())
    assert "modes_covered" not in evaluation  # no manifest: the mixture's modes are unknown
    assert evaluation["mmd2"] < 10 and evaluation["step"] == 60
