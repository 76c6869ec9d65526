"""The engine's units in one process, with a toy two-unit recipe: one optimizer per unit with a parameter
group per network, calls through the unit, frozen units, the start-up gradient-coverage check, EMA over a
set of networks, and checkpoint round trips of multi-network units."""
from functools import partial

import pytest
import torch
from torch import nn

from gendist.checkpoint import CheckpointWriter, verify
from gendist.config import load_config
from gendist.distributed import DistInfo
from gendist.engine.ema import EMA, ramped_decay
from gendist.engine.strategies.base import Strategy
from gendist.engine.units import Member, build_units, check_gradient_coverage, probe_batch
from gendist.errors import UserError
from gendist.recipes.base import Phase


def pair_loss(nets, batch, step, *, use_second=True):
    """Trains unit 'pair' = {first, second}: second(first(x)) scored by the frozen critic."""
    hidden = nets.first(batch.x)
    out = nets.second(hidden) if use_second else hidden[:, :2]
    return {"loss": nets.critic(out).pow(2).mean()}


def critic_loss(nets, batch, step):
    return {"loss": (nets.critic(nets.second(nets.first(batch.x)).detach()) - 1).pow(2).mean()}


def toy(use_second=True):
    torch.manual_seed(0)
    networks = {"first": nn.Linear(3, 4), "second": nn.Linear(4, 2), "critic": nn.Linear(2, 1)}
    units = build_units(networks, {"pair": ("first", "second"), "critic": ("critic",)})
    phases = [Phase("pair", "pair", partial(pair_loss, use_second=use_second)), Phase("critic", "critic", critic_loss)]
    return networks, units, phases


def strategy_for(units, phases, lr_overrides=None, optimizer=("optim.name=sgd", "optim.betas=[0.0, 0.999]")):
    config = load_config("configs/gan_ring.yaml", [*optimizer, "optim.lr=0.1", "train.batch_size=8"])
    config.optim.lr_overrides = lr_overrides or {}  # the toy's names are no shipped recipe's: set after validation
    strategy = Strategy(config, DistInfo(0, 1, 0, torch.device("cpu")))
    strategy.setup(units, phases)
    return strategy


def test_one_optimizer_per_unit_with_a_group_per_network_and_its_learning_rate():
    _, units, phases = toy()
    strategy = strategy_for(units, phases, {"second": 0.01, "critic": 0.5})
    assert sorted(strategy.optimizers) == ["critic", "pair"]
    groups = {g["network"]: g["lr"] for g in strategy.optimizers["pair"].param_groups}
    assert groups == {"first": 0.1, "second": 0.01}
    assert strategy.learning_rates() == {"first": 0.1, "second": 0.01, "critic": 0.5}


def test_a_phase_steps_every_network_of_its_unit_by_its_own_rate_and_leaves_the_frozen_unit():
    networks, units, phases = toy()
    strategy = strategy_for(units, phases, {"second": 0.01})
    batch = probe_batch((3,), 8, torch.device("cpu"))
    nets = strategy.phase_nets(phases[0])
    assert isinstance(nets.first, Member) and nets.unwrapped.first is networks["first"]
    assert not any(p.requires_grad for p in networks["critic"].parameters())
    before = {name: [p.detach().clone() for p in net.parameters()] for name, net in networks.items()}
    phases[0].loss(nets, batch, 0)["loss"].backward()
    grads = {name: [p.grad.clone() for p in net.parameters()] for name, net in networks.items() if name != "critic"}
    assert all(p.grad is None for p in networks["critic"].parameters())
    assert strategy.step(phases[0]).skipped.item() == 0.0
    # Bound 1e-5: the floor is 1 ulp of a weight (|w| < 1: <= 6e-8; SGD may fuse the multiply-add where this
    # expression rounds twice), the bug it catches (a group stepped with the other group's rate, 0.1 vs 0.01)
    # moves the largest entry by 0.09 |grad|, checked below to be > 10x the bound.
    for name, lr in (("first", 0.1), ("second", 0.01)):  # plain SGD: p <- p - lr * grad, per group
        for old, new, grad in zip(before[name], networks[name].parameters(), grads[name]):
            torch.testing.assert_close(new.detach(), old - lr * grad, rtol=0, atol=1e-5)
            assert old.abs().max() < 1 and 0.09 * grad.abs().max() > 1e-4, (name, grad.abs().max())
    for old, new in zip(before["critic"], networks["critic"].parameters()):
        assert torch.equal(old, new)


def test_start_up_check_names_a_parameter_that_gets_no_gradient_and_changes_nothing():
    networks, units, phases = toy(use_second=False)
    before = {k: v.clone() for k, v in units["pair"].state_dict().items()}
    rng = torch.get_rng_state()
    with pytest.raises(UserError, match="phase 'pair' trains unit 'pair' but its parameter 'second.weight' gets no gradient"):
        check_gradient_coverage(units, phases, probe_batch((3,), 8, torch.device("cpu")))
    assert all(torch.equal(before[k], v) for k, v in units["pair"].state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None and p.requires_grad for p in networks["second"].parameters())
    _, units, phases = toy()
    check_gradient_coverage(units, phases, probe_batch((3,), 8, torch.device("cpu")))  # complete: no error


def test_units_must_partition_the_networks():
    networks = {"a": nn.Linear(1, 1), "b": nn.Linear(1, 1)}
    with pytest.raises(ValueError, match="do not partition"):
        build_units(networks, {"u": ("a",)})
    with pytest.raises(ValueError, match="do not partition"):
        build_units(networks, {"u": ("a", "b"), "v": ("b",)})


def test_multi_network_unit_checkpoint_round_trip(tmp_path):
    """Weights and optimizer state of multi-network units survive a checkpoint. Adam keeps per-parameter
    state (step, exp_avg, exp_avg_sq) and its step counts: a checkpoint that drops or mixes up optimizer state
    (plain SGD keeps none, so it would compare {} with {}) fails here."""
    networks, units, phases = toy()
    strategy = strategy_for(units, phases, optimizer=("optim.name=adam", "optim.betas=[0.5, 0.9]"))
    batch = probe_batch((3,), 8, torch.device("cpu"))
    for phase in phases:
        phase.loss(strategy.phase_nets(phase), batch, 0)["loss"].backward()
        strategy.step(phase)
    writer = CheckpointWriter(tmp_path, 1)
    writer.begin()
    strategy.save(writer, True)
    folder = writer.commit({"step": 1}, keep=1)
    assert sorted(p.name for p in (folder / "players").iterdir()) == ["critic.safetensors", "first.safetensors",
                                                                     "second.safetensors"]
    assert verify(folder) is None
    _, fresh_units, _ = toy()
    fresh = strategy_for(fresh_units, phases, optimizer=("optim.name=adam", "optim.betas=[0.5, 0.9]"))
    fresh.load(folder)
    for name in networks:
        for a, b in zip(strategy.networks[name].state_dict().values(), fresh.networks[name].state_dict().values()):
            assert torch.equal(a, b)
    for unit, count in (("pair", 4), ("critic", 2)):  # parameters (weight, bias) of the unit's networks
        saved, loaded = strategy.optimizers[unit].state_dict(), fresh.optimizers[unit].state_dict()
        assert len(saved["state"]) == count and loaded["state"].keys() == saved["state"].keys()
        for index, state in saved["state"].items():
            assert sorted(state) == ["exp_avg", "exp_avg_sq", "step"], state.keys()
            assert float(state["step"]) == 1.0 and state["exp_avg"].abs().sum() > 0
            for key, value in state.items():
                assert torch.equal(loaded["state"][index][key], value), (unit, index, key)
        assert [{k: v for k, v in group.items() if k != "params"} for group in loaded["param_groups"]] == \
            [{k: v for k, v in group.items() if k != "params"} for group in saved["param_groups"]]
    # the loaded state is the one used: one more identical step keeps both strategies' weights identical
    for phase in phases:
        for trained in (strategy, fresh):
            phase.loss(trained.phase_nets(phase), batch, 1)["loss"].backward()
            trained.step(phase)
    for name in networks:
        for a, b in zip(strategy.networks[name].parameters(), fresh.networks[name].parameters()):
            assert torch.equal(a, b), name


def test_ema_over_a_set_of_networks_follows_each_one():
    networks, _, _ = toy()
    averages = {name: EMA(networks[name], 0.5) for name in ("first", "second")}
    with torch.no_grad():
        for name in averages:
            for p in networks[name].parameters():
                p.add_(2.0)
    for name, ema in averages.items():
        ema.update(networks[name])
        for key, value in ema.full_state().items():
            torch.testing.assert_close(value, networks[name].state_dict()[key] - 1.0)


def test_the_ema_half_life_is_at_most_rampup_times_the_steps_then_the_configs_decay():
    """Catches a ramp that never reaches train.ema_decay, or one whose half-life is not bounded by rampup x
    steps (half-life = ln 0.5 / ln decay steps)."""
    import math

    for step in (1, 10, 100, 1000, 5000):
        decay = ramped_decay(0.999, 0.05, step)
        assert math.log(0.5) / math.log(decay) <= 0.05 * step * (1 + 1e-9)
    assert ramped_decay(0.999, 0.05, 13_863) == 0.999 and ramped_decay(0.999, 0.05, 10**6) == 0.999
    assert ramped_decay(0.999, 0.0, 1) == 0.999  # rampup 0: the constant decay


# ---------------------------------------------------------------- CycleGAN's dihedral alignment

def test_dihedral_alignment_candidates_fit_the_output_shape_and_a_settled_choice_is_exact():
    from gendist.recipes.cyclegan import DihedralAlign, Translator, apply_dihedral, dihedral_transforms

    assert len(dihedral_transforms((1, 8, 8), (1, 8, 8))) == 8
    assert dihedral_transforms((3, 4, 6), (3, 4, 6)) == [(0, False), (2, False), (0, True), (2, True)]
    assert dihedral_transforms((3, 4, 6), (3, 6, 4)) == [(1, False), (3, False), (1, True), (3, True)]
    with pytest.raises(UserError, match=r"turned or flipped \(A \(1, 4, 6\), B \(1, 5, 6\)\)"):
        DihedralAlign((1, 4, 6), (1, 5, 6))
    with pytest.raises(UserError, match="not images"):
        DihedralAlign((2,), (2,))
    x = torch.rand(5, 1, 8, 8)
    translator = aligned_translator((1, 8, 8), hidden=16, depth=2, arch="mlp")
    out, aligned = translator(x, return_aligned=True)
    mean = torch.stack([apply_dihedral(x, turns, flip) for turns, flip in dihedral_transforms((1, 8, 8), (1, 8, 8))])
    assert torch.allclose(aligned, mean.mean(0), atol=1e-6)  # equal weights at the start
    assert torch.allclose(out, aligned.clamp(1e-3, 1 - 1e-3), atol=1e-5)  # the correction starts at zero
    wide = aligned_translator((3, 24, 40), hidden=8, depth=2, arch="conv")
    assert len(wide.align.transforms) == 4 and wide(torch.rand(2, 3, 24, 40)).shape == (2, 3, 24, 40)
    with torch.no_grad():
        translator.align.logits.copy_(torch.tensor([0.0, 50, 0, 0, 0, 0, 0, 0]))  # a settled choice: one turn
    torch.testing.assert_close(translator.align(x), torch.rot90(x, 1, dims=(-2, -1)), atol=1e-6, rtol=0)


def aligned_translator(shape: tuple[int, ...], hidden: int, depth: int, arch: str):
    """A CycleGAN generator with cyclegan.align=dihedral, built the way the recipe builds it (the registry's
    translator as a zero-start correction)."""
    from gendist.config import load_config
    from gendist.nets.registry import NetworkBuilder
    from gendist.recipes.cyclegan import DihedralAlign, Translator

    config = load_config(None, ["data.source=digits", f"model.arch={arch}", f"model.hidden={hidden}", f"model.depth={depth}",
                                "cyclegan.align=dihedral"])
    net = NetworkBuilder(config, True)("translator", "g_ab", shape, shape, zero_start=True)
    return Translator(net, True, DihedralAlign(shape, shape))


def test_dihedral_alignment_finds_the_quarter_turn_by_gradient_descent():
    """The softmax weights move by how much each whole candidate lowers the loss: fitting turned images
    picks the quarter turn from equal weights (a rotation angle would get no such gradient)."""
    from gendist.recipes.cyclegan import DihedralAlign

    torch.manual_seed(0)
    x = torch.rand(64, 1, 8, 8)
    align = DihedralAlign((1, 8, 8), (1, 8, 8))
    optimizer = torch.optim.Adam(align.parameters(), lr=0.5)
    for _ in range(50):
        optimizer.zero_grad()
        (align(x) - torch.rot90(x, 1, dims=(-2, -1))).pow(2).mean().backward()
        optimizer.step()
    assert align.transforms[int(align.weights().argmax())] == (1, False) and align.weights().max() > 0.99


def test_a_sub_module_lr_multiplier_gets_its_own_group_of_its_network():
    from gendist.config import RunConfig
    from gendist.engine.strategies.base import build_optimizer
    from gendist.recipes.cyclegan import Translator

    config = RunConfig()
    config.optim.lr = 0.002
    translator = aligned_translator((1, 8, 8), hidden=16, depth=1, arch="mlp")
    unit = build_units({"g_ab": translator}, {"generators": ("g_ab",)})["generators"]
    groups = build_optimizer(config, "generators", unit).param_groups
    assert [(g["network"], g["lr"], g.get("lr_multiplier")) for g in groups] == [("g_ab", 0.002, None),
                                                                                 ("g_ab", 0.02, 10.0)]
    assert groups[1]["params"] == [translator.align.logits]
    assert sum(len(g["params"]) for g in groups) == len(list(translator.parameters()))


def test_ddp_broadcasts_no_spectral_norm_buffer_and_keeps_the_others(tmp_path):
    """Catches DDP broadcasting spectral norm's buffers before every forward of the trained unit: `_last` is a copy
    of the weight, so a discriminator with spectral norm sent its own size per call (the resnet discriminator of
    configs/gan_digits.yaml at 32x32x3: 1.2 MB per forward, as much as its parameters). The vectors
    are identical on every rank by construction, so nothing is lost; a BatchNorm's running statistics (which
    ranks do not compute alike) are still broadcast. One-process gloo group, DDP as the strategy wraps it."""
    import torch.distributed as dist

    from gendist.engine.strategies.ddp import DDPStrategy
    from gendist.nets.registry import apply_spectral_norm
    from gendist.engine.units import Unit

    critic = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
    assert apply_spectral_norm(critic) == 2
    unit = Unit({"critic": critic})
    config = load_config(None, ["data.source=ring", f"run.dir={tmp_path}"])
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        wrapped = DDPStrategy(config, DistInfo(0, 1, 0, torch.device("cpu"))).wrap("critic", unit)
        wrapped("critic", torch.randn(16, 4)).sum().backward()
        broadcast = {id(buffer) for buffer in wrapped.modules_buffers}
        names = {name for name, buffer in unit.named_buffers() if id(buffer) in broadcast}
    finally:
        dist.destroy_process_group()
    assert names == {"critic.1.running_mean", "critic.1.running_var", "critic.1.num_batches_tracked"}, names
