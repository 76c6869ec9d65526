"""The engine in one process, step by step (no CLI): what each optimizer step does with learning rates,
warm-up, per-player overrides, gradient clipping and accumulation, checked against the arithmetic of SGD."""

import os
import sys

import pytest
import torch

from gendist.config import load_config, lr_scale
from gendist.engine.run import build_trainer

BASE = "configs/gan_ring.yaml"
SGD = ["optim.name=sgd", "optim.betas=[0.0, 0.999]"]  # plain SGD: the step is exactly -lr * gradient


@pytest.fixture
def make_trainer(tmp_path, monkeypatch):
    monkeypatch.setenv("GENDIST_CACHE", str(tmp_path.parent / "engine-cache"))

    def make(*overrides, config=BASE):
        config = load_config(config, [f"run.dir={tmp_path / 'run'}", "log.wandb=false", "train.batch_size=64",
                                      *overrides])
        trainer, _ = build_trainer(config)
        return trainer
    return make


def parameters(trainer, player):
    return torch.cat([p.detach().flatten().clone() for p in trainer.strategy.networks[player].parameters()])


def test_warmup_schedule_and_per_player_learning_rates_reach_the_optimizers(make_trainer):
    trainer = make_trainer("optim.lr=1.0e-3", "optim.lr_overrides={discriminator: 4.0e-3}", "optim.warmup_steps=4",
                           "optim.schedule=linear", "optim.final_lr_fraction=0.1", "train.max_steps=10")
    base = {"generator": 1e-3, "discriminator": 4e-3}
    for step in range(10):
        trainer.train_step()
        scale = lr_scale(trainer.config.optim, step, 10)
        for name, lr in trainer.strategy.learning_rates().items():
            assert lr == pytest.approx(base[name] * scale, rel=1e-12), (step, name)
    assert lr_scale(trainer.config.optim, 0, 10) == pytest.approx(0.25)  # warm-up starts at lr / warmup_steps
    assert lr_scale(trainer.config.optim, 9, 10) == pytest.approx(0.1 + 0.9 * (1 - 5 / 6))


def test_sgd_step_moves_each_player_by_lr_times_its_gradient(make_trainer):
    """One discriminator step of plain SGD with a per-player lr: the update is -lr * grad, so its size is lr
    times the gradient norm; with gradient clipping at c far below that norm it is exactly lr * c."""
    lr, clip = 0.05, 1e-3
    free = make_trainer(*SGD, f"optim.lr={lr}", "optim.lr_overrides={discriminator: 0.1}")
    clipped = make_trainer(*SGD, f"optim.lr={lr}", "optim.lr_overrides={discriminator: 0.1}", f"optim.grad_clip={clip}")
    moves = {}
    for label, trainer in (("free", free), ("clipped", clipped)):
        before = {name: parameters(trainer, name) for name in ("generator", "discriminator")}
        trainer.train_step()
        moves[label] = {name: float((parameters(trainer, name) - before[name]).norm()) for name in before}
    # unclipped: the gradients are much larger than the clip, so the clip really acts
    assert moves["free"]["discriminator"] > 10 * 0.1 * clip and moves["free"]["generator"] > 10 * lr * clip
    assert moves["clipped"]["discriminator"] == pytest.approx(0.1 * clip, rel=1e-4)
    assert moves["clipped"]["generator"] == pytest.approx(lr * clip, rel=1e-4)


def test_accumulation_equals_the_double_batch_with_sgd(make_trainer):
    """2 micro-steps of 32 average to the gradient of one batch of 64 (global split: the same rows); with
    plain SGD a missing division by the number of micro-steps doubles every update."""
    common = [*SGD, "optim.lr=0.05", "data.split_mode=global"]
    single = make_trainer(*common, "train.batch_size=64")
    accumulated = make_trainer(*common, "train.batch_size=32", "train.grad_accum=2")
    for _ in range(5):
        single.train_step()
        accumulated.train_step()
    # Bound 1e-6: round-off floor <= 7.7e-9 and the missing division (a 2x step) >= 4.5e-3 after 5 steps, over
    # seeds 0-5 (RESULTS.md, "Equivalence bounds")
    for name in ("generator", "discriminator"):
        a, b = parameters(single, name), parameters(accumulated, name)
        assert float((a - b).norm() / a.norm()) < 1e-6, name


def test_start_up_refuses_a_parameter_no_phase_reaches(make_trainer, monkeypatch):
    """Bug caught: `build_trainer` no longer calling the start-up gradient-coverage check (only the check
    itself is tested elsewhere): a generator parameter that no loss uses would make DDP/ZeRO ranks wait for
    its reduction forever. Start-up must refuse with the check's one-line error instead."""
    import gendist.engine.run as engine_run
    from gendist.errors import UserError

    real_build_recipe = engine_run.build_recipe

    def with_an_unused_parameter(config, info):
        recipe = real_build_recipe(config, info)
        build_networks = recipe.build_networks

        def networks():
            built = build_networks()
            built["generator"].register_parameter("unused", torch.nn.Parameter(torch.zeros(3)))
            return built
        recipe.build_networks = networks
        return recipe

    monkeypatch.setattr(engine_run, "build_recipe", with_an_unused_parameter)
    with pytest.raises(UserError) as refused:
        make_trainer()
    message = str(refused.value)
    assert "phase 'generator' trains unit 'generator' but its parameter 'generator.unused' gets no gradient" \
        in message, message
    assert "\n" not in message


def test_accumulation_equals_the_double_batch_across_an_epoch_end(make_trainer):
    """Catches the global split cutting its stream in micro-batches instead of the optimizer step's batch: a
    loader batch of 16 keeps 1,616 of the 1,617 training digits per epoch, one of 64 keeps 1,600, so from the
    second epoch (step 13 of a BiGAN, two data phases per step) 4 micro-steps of 16 would see other digits
    than one batch of 64. Bound 3e-7: the round-off floor is <= 6.2e-9 (seeds 0-2, SiLU), the bug moved the
    parameters by >= 1.75e-5 after 16 steps."""
    common = [*SGD, "optim.lr=0.05", "data.split_mode=global", "model.hidden=64", "model.activation=silu",
              "train.ema_decay=0"]
    single = make_trainer(*common, "train.batch_size=64", config="configs/bigan_digits.yaml")
    accumulated = make_trainer(*common, "train.batch_size=16", "train.grad_accum=4", config="configs/bigan_digits.yaml")
    for _ in range(16):
        single.train_step()
        accumulated.train_step()
    a, b = (torch.cat([parameters(t, name) for name in sorted(t.strategy.networks)]) for t in (single, accumulated))
    assert float((a - b).norm() / a.norm()) < 3e-7


class HostRead(AssertionError):
    """A tensor's value was read back to the host inside a training step."""


@pytest.fixture
def no_host_reads(monkeypatch):
    """Make every way of reading a tensor's value on the host raise: `.item()`, `.tolist()`, `bool()`,
    `float()`, `int()` and NumPy conversion (on a GPU each would stall the device queue)."""
    def refuse(*args, **kwargs):
        raise HostRead("host read of a tensor inside a training step")

    def guard():
        for name in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy"):
            monkeypatch.setattr(torch.Tensor, name, refuse)
    return guard


@pytest.mark.parametrize("overrides", [[], ["optim.grad_clip=1.0", "train.ema_decay=0.9"], ["precision=fp16"],
                                       ["train.grad_accum=2", "optim.name=sgd"]],
                         ids=["adam", "clip-ema", "fp16", "accum-sgd"])
def test_a_training_step_never_reads_a_tensor_back_to_the_host(make_trainer, no_host_reads, overrides):
    """Skips are decided on the device (fused optimizers take the non-finite flag; GradScaler the same), losses
    and skip flags are kept on the device until the log step, noise needs no host work."""
    trainer = make_trainer(*overrides)
    trainer.train_step()  # start-up work (data iterator, first batch) outside the guard
    no_host_reads()
    for _ in range(3):
        trainer.train_step()
    assert len(trainer.step_flags) == 4 * len(trainer.phases)  # read at the next log step


def test_skipped_steps_and_streaks_are_counted_at_the_log_step(make_trainer):
    trainer = make_trainer("train.inject_nan_steps=[1, 2]", "train.inject_nan_phase=generator")
    for _ in range(4):
        trainer.train_step()
    assert not trainer.skipped_steps  # nothing read yet
    metrics = trainer.pop_metrics()
    assert metrics["skipped/generator/nonfinite"] == 2.0 and "skipped/discriminator/nonfinite" not in metrics
    assert trainer.bad_steps_in_a_row["generator"] == 0  # step 3 was applied again


def test_noise_rows_are_a_function_of_the_global_row_and_each_rank_draws_only_its_own():
    from gendist.engine.noise import CHUNK_ROWS, StepNoise

    cpu = torch.device("cpu")
    whole = StepNoise(0, cpu, 0, 1, 1).start(7, 1, 0, 0).randn(4 * 96, 3)
    for world, accum in ((2, 2), (4, 1), (1, 4)):
        for rank in range(world):
            for micro in range(accum):
                part = StepNoise(0, cpu, rank, world, accum).start(7, 1, 0, micro).randn(96, 3)
                first = (micro * world + rank) * 96
                assert torch.equal(part, whole[first:first + 96]), (world, accum, rank, micro)
    drawn = []
    original = torch.randn

    def counting_randn(*args, **kwargs):
        drawn.append(args[0])
        return original(*args, **kwargs)

    torch.randn = counting_randn
    try:
        StepNoise(0, cpu, 511, 512, 1).start(0, 0, 0, 0).randn(256, 64)  # rank 511 of 512
    finally:
        torch.randn = original
    assert sum(drawn) <= 256 + 2 * CHUNK_ROWS  # its own rows, not the world's 131,072
    other = StepNoise(0, cpu, 0, 1, 1).start(7, 1, 0, 1).randn(4 * 96, 3)  # another micro-step: other noise
    assert not torch.equal(other, whole) and abs(float(whole.mean())) < 0.1 and abs(float(whole.std()) - 1) < 0.1


def test_threads_fit_the_processes_on_the_machine_unless_the_user_set_them(monkeypatch):
    import os

    from gendist.distributed import fit_threads

    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0))
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        assert fit_threads() == max(1, cores // 2) == torch.get_num_threads()
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
        assert fit_threads() == cores
        torch.set_num_threads(1)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert fit_threads() == 1  # the user's choice stands
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_malloc_keeps_freed_memory_unless_the_user_set_its_thresholds():
    """Training processes ask glibc to keep freed blocks (no fresh zero-filled pages every step: 53 page
    faults per step on the ring at batch 512 before, 0 after; benchmarks/RESULTS.md); a user's own
    MALLOC_*_THRESHOLD_ setting is left alone. Run in fresh interpreters: the setting is process-wide."""
    import subprocess

    code = "from gendist.distributed import keep_freed_memory; print(keep_freed_memory())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "MALLOC_TRIM_THRESHOLD_": "131072"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
