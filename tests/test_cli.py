"""End-to-end CLI in a single process: prepare, train, eval, sample; bad input exits 2 with one line."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gendist.nets import MLP

from helpers import gendist_command, read_metrics, run, make_env

pytestmark = [pytest.mark.slow, pytest.mark.one_process]  # every test here runs the real CLI in subprocesses
FAST = ["train.max_steps=60", "log.every=20", "ckpt.every=30", "log.sample_every=30", "log.wandb=false",
        "log.progress=false", "eval.num_samples=500"]
EMA = ["train.ema_decay=0.9"]


@pytest.fixture(scope="module")
def ring_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("ring")
    env = make_env(base / "cache")
    data = base / "ring"
    run(gendist_command("data", "prepare", "--source", "ring", "--out", str(data), "--shard-size", "20000"), env)
    run_dir = base / "run"
    result = run(gendist_command("train", "configs/gan_ring.yaml", f"run.dir={run_dir}", "data.source=",
                                 f"data.dir={data}", *FAST, *EMA), env)
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


def test_eval_reproduces_the_training_evaluation_and_samples_use_the_ema(ring_run, tmp_path):
    """`gendist eval` with training's seed and sample count gives exactly the eval.json training wrote (both
    sample the EMA generator); `gendist sample` draws from the EMA weights, not the raw generator."""
    run_dir, env, _ = ring_run
    out = run(gendist_command("eval", str(run_dir), "--json", "--num-samples", "500"), env)
    metrics = json.loads(out.stdout.strip().splitlines()[-1])
    written = json.loads((run_dir / "eval.json").read_text())
    assert metrics == written, (metrics, written)
    assert set(metrics) >= {"step", "modes_covered", "hq_fraction", "mmd2", "kid", "frechet_distance"}
    other_seed = json.loads(run(gendist_command("eval", str(run_dir), "--json", "--num-samples", "500", "--seed", "7"),
                                env).stdout.strip().splitlines()[-1])
    assert other_seed["mmd2"] != metrics["mmd2"]  # the seed really selects the samples
    run(gendist_command("sample", str(run_dir), "--n", "64", "--out", str(tmp_path / "x.npy")), env)
    drawn = torch.from_numpy(np.load(tmp_path / "x.npy"))
    assert drawn.shape == (64, 2)
    players = run_dir / "checkpoints" / "step_00000060" / "players"
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    outputs = {}
    for name, file in (("ema", "ema_generator"), ("generator", "generator")):
        generator = MLP(2, 2, 128, 3, out_shape=(2,))
        generator.load_state_dict(load_file(players / f"{file}.safetensors"))
        with torch.no_grad():
            outputs[name] = generator(z)
    torch.testing.assert_close(drawn, outputs["ema"])
    assert float((outputs["ema"] - outputs["generator"]).abs().max()) > 1e-3  # the EMA differs from the raw weights
    run(gendist_command("sample", str(run_dir), "--n", "64", "--out", str(tmp_path / "grid.png")), env)
    assert (tmp_path / "grid.png").stat().st_size > 1000


def test_vae_digits_trains_and_reports_elbo(tmp_path):
    """60 steps on the dynamically binarized 8x8 digits: the test ELBO is far above that of a model that knows
    nothing (64 log 2 = 44.4 nats for 64 Bernoulli pixels), and the importance-weighted estimate with 64
    samples (-test_nll) is strictly above the ELBO by a gap of the size a trained encoder leaves (the estimate
    never falls below the ELBO in expectation). Also catches the loss-jump watch not wired into training (no
    `health/loss_jumped` on the metric lines) or firing on a run that trains normally, and its memory lost on
    resume (a jump measured against the lines before the resume goes unreported)."""
    env = make_env(tmp_path / "cache")
    run(gendist_command("train", "configs/vae_digits.yaml", f"run.dir={tmp_path / 'vae'}", *FAST,
                        "vae.eval_samples=64", "vae.prior_samples=0", "vae.gap_steps=0"), env)
    metrics = json.loads((tmp_path / "vae" / "eval.json").read_text())
    elbo, iw = metrics["test_elbo"], -metrics["test_nll"]
    assert elbo > -64 * np.log(2) + 8, metrics
    assert elbo + 0.1 < iw < elbo + 5, metrics
    lines = [line for line in read_metrics(tmp_path / "vae") if "elbo/loss" in line]
    flags = [line["health/loss_jumped"] for line in lines]
    assert flags and set(flags) == {0.0}, flags
    # the watch's memory is checkpointed and read back on resume (a jump measured across the resume): its lowest
    # line is the run's; made 100 nats per value lower, the next line after resuming is a jump
    state_file = tmp_path / "vae" / "checkpoints" / "step_00000060" / "trainer.json"
    state = json.loads(state_file.read_text())
    assert state["health"]["loss_jump"]["lowest"] == min(line["elbo/loss"] for line in lines), state["health"]
    state["health"]["loss_jump"]["lowest"] -= 100 * 64
    from gendist.checkpoint import MANIFEST, write_file

    manifest = json.loads((state_file.parent / MANIFEST).read_text())  # the edit, recorded as the writer would
    manifest["files"]["trainer.json"] = write_file(state_file, json.dumps(state).encode())
    (state_file.parent / MANIFEST).write_text(json.dumps(manifest))
    result = run(gendist_command("train", "configs/vae_digits.yaml", f"run.dir={tmp_path / 'vae'}", *FAST,
                                 "train.max_steps=80", "vae.eval_samples=64", "vae.prior_samples=0", "vae.gap_steps=0"),
                 env)
    after = [line for line in read_metrics(tmp_path / "vae") if "elbo/loss" in line and line["step"] > 60]
    assert [line["health/loss_jumped"] for line in after] == [1.0], after
    assert "step 80: the loss jumped" in result.stderr


@pytest.mark.parametrize("args, fragment", [
    (["train", "configs/gan_ring.yaml", "model.nonsense=1"], "unknown key 'model.nonsense'"),
    (["train", "configs/gan_ring.yaml", "train.batch_size=big"], "train.batch_size must be int"),
    (["train", "configs/gan_ring.yaml", "data.source=", "data.shards=/nonexistent/shard-{0..3}.tar"], "data.shards"),
    (["train", "configs/missing.yaml"], "not found"),
    (["train", "configs/fgan_kl_ring.yaml", "gan.divergence=foo"], "unknown divergence 'foo'"),
    (["train", "configs/fgan_kl_ring.yaml", "gan.divergence=alpha", "gan.alpha=1"], "alpha"),
    (["eval", "/nonexistent/run"], "not a run folder"),
    (["sample", "/nonexistent/run", "--out", "x.gif"], "--out must end in .png"),
    (["data", "prepare", "--source", "mnist", "--out", "/tmp/gendist-never"], "mnist"),
    (["train"], "the following arguments are required"),
    (["frobnicate"], "invalid choice"),
    (["train", "configs/gan_ring.yaml", "train.inject_nan_steps=[1]", "train.inject_nan_phase=discriminator_r1"],
     "train.inject_nan_phase: this run has no phase 'discriminator_r1'"),
    (["train", "configs/gan_ring.yaml", "train.channels_last=true"], "train.channels_last applies to image data"),
    (["train", "configs/gan_digits.yaml", "train.channels_last=true", "dist.strategy=fsdp"],
     "train.channels_last: dist.strategy=fsdp flattens parameters"),
    (["train", "configs/gan_ring.yaml", "train.compile_mode=fast"], "train.compile_mode"),
])
def test_bad_input_exits_2_with_one_line(args, fragment, tmp_path, capsys, monkeypatch):
    """In-process (gendist.cli.main, no interpreter start-up per case); the real process is checked below."""
    from gendist.cli import main

    monkeypatch.setenv("GENDIST_CACHE", str(tmp_path / "cache"))
    if args[:1] == ["train"] and len(args) > 2:
        args = [*args, f"run.dir={tmp_path / 'run'}"]  # a run that starts writes here, not into the checkout
    assert main(args) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], lines


@pytest.mark.parametrize("args, fragment", [
    (["train", "configs/gan_ring.yaml", "model.nonsense=1"], "unknown key 'model.nonsense'"),
    # the ZeRO-3 + EMA refusal comes after DeepSpeed's process group set-up: a process of its own
    (["train", "configs/gan_ring.yaml", "dist.strategy=deepspeed", "dist.zero_stage=3", "train.ema_decay=0.9"],
     "train.ema_decay is not supported with DeepSpeed ZeRO-3 yet"),
    (["train", "configs/gan_ring.yaml", "dist.strategy=deepspeed", "dist.zero_stage=3", "train.compile=true"],
     "train.compile with DeepSpeed ZeRO-3"),
])
def test_bad_input_in_a_real_process_exits_2_with_one_line_and_no_traceback(args, fragment, tmp_path):
    result = run(gendist_command(*args), make_env(tmp_path / "cache"), check=False)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_train_on_shard_patterns_prepared_elsewhere(ring_run, tmp_path):
    """data.shards / data.test_shards: a glob and a brace pattern instead of a prepared folder read exactly
    the data of the folder (same losses at every logged step as the data.dir run), and evaluate on the
    held-out shards (`gendist eval` reproduces eval.json)."""
    run_dir, env, _ = ring_run
    data = run_dir.parent / "ring"
    test_shards = sorted(p.name for p in data.glob("test-*.tar"))
    brace = f"{data}/test-{{{test_shards[0][5:11]}..{test_shards[-1][5:11]}}}.tar"
    out = tmp_path / "shards-run"
    run(gendist_command("train", "configs/gan_ring.yaml", f"run.dir={out}", "data.source=",
                        f"data.shards={data}/train-*.tar", f"data.test_shards={brace}", *FAST, *EMA), env)

    def losses(folder):
        return [{k: v for k, v in m.items() if k.endswith("/loss")} for m in read_metrics(folder) if "generator/loss" in m]
    assert losses(out) == losses(run_dir) and len(losses(out)) == 3
    evaluation = json.loads((out / "eval.json").read_text())
    assert "modes_covered" not in evaluation  # no manifest: the mixture's modes are unknown
    assert evaluation["step"] == 60 and 0 < evaluation["mmd2"] <= 2.0  # an RBF MMD^2 lies in [0, 2]
    again = json.loads(run(gendist_command("eval", str(out), "--json", "--num-samples", "500"), env).stdout.splitlines()[-1])
    assert again == evaluation


def test_training_with_loader_workers_is_deterministic_and_skips_a_corrupt_shard(tmp_path):
    """data.num_workers=2 in training: two runs consume the same samples in the same order; a truncated
    training shard stops a run with one line naming it (on_error=raise) or is skipped and counted (skip)."""
    env = make_env(tmp_path / "cache")
    data = tmp_path / "ring"
    run(gendist_command("data", "prepare", "--source", "ring", "--out", str(data), "--shard-size", "10000"), env)
    broken = sorted(data.glob("train-*.tar"))[3]
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    # batch 1,024: an epoch (87 batches) and so the broken shard lies within 100 steps
    common = ["train", "configs/gan_ring.yaml", f"data.dir={data}", "train.max_steps=100", "train.batch_size=1024",
              "log.every=100", "ckpt.every=0", "log.sample_every=0", "log.wandb=false", "log.progress=false",
              "eval.num_samples=200", "data.num_workers=2", "log.data_keys=true"]
    failed = run(gendist_command(*common, f"run.dir={tmp_path / 'raise'}"), env, check=False)
    assert failed.returncode == 2
    lines = [line for line in failed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("gendist: error:") and broken.name in lines[0], failed.stderr
    runs = [tmp_path / "skip_a", tmp_path / "skip_b"]
    for run_dir in runs:
        run(gendist_command(*common, f"run.dir={run_dir}", "data.on_error=skip"), env)
    last = [m for m in read_metrics(runs[0]) if "generator/loss" in m][-1]
    assert last["data/skipped_this_rank"] >= 1 and last["step"] == 100
    keys = [(run_dir / "data_keys" / "rank_00000.jsonl").read_text() for run_dir in runs]
    assert keys[0] == keys[1] and len(keys[0].splitlines()) == 100
    assert [m.get("generator/loss") for m in read_metrics(runs[0])] == [m.get("generator/loss") for m in read_metrics(runs[1])]
