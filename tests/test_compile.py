"""train.compile (torch.compile of every network, inductor on this CPU) and train.channels_last.

The strategy equivalence (2 ranks x b = 1 x 2b) and SIGKILL/resume of compiled runs are cases of
tests/test_strategies.py and tests/test_fault_tolerance.py; the refusals are in tests/test_cli.py."""
import json
import sys

import numpy as np
import pytest
import torch

from equivalence_cases import final_players, relative_difference
from gendist.config import load_config
from gendist.engine.run import build_trainer
from helpers import ROOT, gendist_command, make_env, read_metrics, run, run_many

STEPS = 12
# resnet GAN on the 8x8 digits: spectral norm on D (buffers updated in its forward), a projection D and a
# conditional G, lazy R1 every 2 steps (an eager phase between compiled ones), plain SGD (no Adam
# normalization hiding a wrong gradient), sample grids every 4 steps (sampling must stay eager)
RESNET_R1 = ["configs/gan_digits.yaml", "model.arch=resnet", "model.hidden=16", "model.activation=silu",
             "model.conditional=true", "optim.name=sgd", "optim.lr=0.01", "optim.betas=[0.0, 0.999]",
             "gan.r1_gamma=1.0", "gan.r1_every=2", "train.ema_decay=0", "train.batch_size=32",
             f"train.max_steps={STEPS}", "data.split_mode=global", "ckpt.every=0", "log.every=2",
             "log.sample_every=4", "log.wandb=false", "log.progress=false", "eval.num_samples=200"]
# compiled against eager after 12 steps, max relative parameter difference: inductor fuses and reorders float
# operations, so the two differ by round-off: measured 5.2e-07, 5.2e-07, 8.1e-07 (seeds 0, 1, 2); compiled
# discriminators that lose spectral norm's power-iteration update (benchmarks/mutations.py,
# compiled_spectral_norm_update_lost) end 0.149 away. The bound sits 25x above the floor, 7,000x below that.
COMPILED_BOUND = 2e-5


@pytest.mark.slow
@pytest.mark.one_process
def test_compiled_training_matches_eager_and_compiles_nothing_after_the_first_step(tmp_path):
    """Catches a compiled network that trains differently from its eager self (a graph reused for the wrong
    role, stale weights, a lost buffer update), an R1 phase sent through compiled double backward (torch
    refuses it), and recompilation when phases switch or samples are drawn: every logged step reports the
    same graph count (4: generator trained and frozen, discriminator trained and frozen with input gradient)."""
    env = make_env(tmp_path / "cache")
    runs = {name: tmp_path / name for name in ("eager", "compiled")}
    result = run_many([sys.executable], [
        {"argv": ["train", *RESNET_R1, f"run.dir={runs['eager']}"]},
        {"argv": ["train", *RESNET_R1, "train.compile=true", f"run.dir={runs['compiled']}"]}], tmp_path, env)
    assert "train.compile: generator, discriminator compiled" in result.stdout, result.stdout[-2000:]
    assert "phases discriminator_r1 (they differentiate through a gradient" in result.stdout
    assert "more graphs compiled" not in result.stdout
    metrics = [m for m in read_metrics(runs["compiled"]) if "compile/graphs" in m]
    assert [m["step"] for m in metrics] == list(range(2, STEPS + 1, 2))
    assert {m["compile/graphs"] for m in metrics} == {4.0}, metrics
    assert {m["compile/graph_breaks"] for m in metrics} == {0.0}, metrics
    eager, compiled = final_players(runs["eager"], STEPS), final_players(runs["compiled"], STEPS)
    difference = relative_difference(eager, compiled)
    print(f"compiled vs eager after {STEPS} steps: max relative parameter difference {difference:.3g}")
    assert 0 < difference < COMPILED_BOUND, difference  # 0 would mean nothing was compiled


@pytest.mark.slow
@pytest.mark.one_process
def test_a_network_torch_compile_cannot_trace_stops_with_one_line_naming_it(tmp_path):
    """Catches a compile failure surfacing as dynamo's multi-page traceback, or naming no network: a user's
    discriminator with a custom operator that has no fake kernel trains eager and stops compiled."""
    env = make_env(tmp_path / "cache")
    env["PYTHONPATH"] = f"{ROOT / 'tests'}:{env.get('PYTHONPATH', '')}"
    args = ["train", "configs/gan_digits.yaml", "model.networks.discriminator=user_networks:OpaqueOpDiscriminator",
            "train.max_steps=2", "train.batch_size=16", "log.every=1", "ckpt.every=0", "log.sample_every=0",
            "log.wandb=false", "log.progress=false", "eval.num_samples=50"]
    run(gendist_command(*args, f"run.dir={tmp_path / 'eager'}"), env)
    result = run(gendist_command(*args, "train.compile=true", f"run.dir={tmp_path / 'compiled'}"), env, check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-3000:]
    assert lines[-1].startswith("gendist: error: train.compile: torch.compile failed on network 'discriminator'"), lines[-3:]
    assert "no fake impl" in lines[-1] and "set train.compile=false" in lines[-1]
    assert "Traceback" not in result.stderr


def test_channels_last_converts_conv_weights_and_image_batches(tmp_path, monkeypatch):
    """Catches train.channels_last converting the weights but not the batches the networks see (or neither),
    and a format that changes the step's result beyond round-off."""
    monkeypatch.setenv("GENDIST_CACHE", str(tmp_path / "cache"))
    images = tmp_path / "rgb.npz"  # 3 channels: with one, both formats have the same strides
    np.savez(images, x=np.random.default_rng(0).integers(0, 256, (64, 3, 8, 8), dtype=np.uint8))
    trained = {}
    for flag in ("false", "true"):
        config = load_config(ROOT / "configs/gan_digits.yaml", [
            f"run.dir={tmp_path / flag}", "log.wandb=false", f"data.source=npz:{images}", "model.arch=resnet",
            "model.hidden=8", "model.activation=silu",
            "train.batch_size=16", "train.ema_decay=0", f"train.channels_last={flag}", "optim.name=sgd",
            "optim.lr=0.01", "optim.betas=[0.0, 0.999]"])
        trainer, _ = build_trainer(config)
        convs = [p for p in trainer.strategy.networks["discriminator"].parameters() if p.dim() == 4]
        # (a 1x1 kernel's strides are the same in both formats: 3x3 kernels tell them apart)
        if flag == "true":
            assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
        assert any(p.shape[-1] > 1 for p in convs) and all(p.is_contiguous() == (flag == "false") for p in convs
                                                          if p.shape[-1] > 1)
        batch = trainer.next_batch(trainer.phases[0], 0, 0, 0)
        assert batch.x.is_contiguous(memory_format=torch.channels_last) == (flag == "true")
        assert batch.x.is_contiguous() == (flag == "false")
        trainer.step = 1  # (a fresh noise key: the batch above was drawn for step 0)
        trainer.train_step()
        trained[flag] = {name: {k: v.detach().clone() for k, v in net.state_dict().items()}
                         for name, net in trainer.strategy.networks.items()}
    # the same step in either format: equal up to the convolution kernels' round-off (measured 2.65e-07, seed 0);
    # batches whose layout is scrambled on conversion (H and W transposed) end 0.0186 away: bound 377x / 186x
    print(f"channels-last vs contiguous after one step: {relative_difference(trained['false'], trained['true']):.3g}")
    assert relative_difference(trained["false"], trained["true"]) < 1e-4
