"""Options that change what a run trains, each checked in a short in-process run through the real config and
Trainer (`build_trainer`): the loss a phase hands to backward is recomputed here, independently, from a copy of
the networks taken just before the phase ran and the very batch and noise it read, so an option that is
dropped between the config and the loss (or replaced by its default) changes a number the test compares.
Thresholds: each comment gives the measured noise floor (float32 rounding, or the same check on an unbroken
run) and the measured effect of the bug; every bound sits >= 10x from both."""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gendist.config import dump_config, load_config
from gendist.engine.run import build_trainer
from gendist.recipes.base import Batch, Nets

VAE_QUICK = ["model.arch=mlp", "model.hidden=32", "model.depth=1", "vae.gap_steps=0", "train.batch_size=64"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A data cache with the digits and the two-domain digits, prepared once for the module."""
    from gendist.distributed import init_distributed
    from gendist.engine.data_setup import resolve_data

    folder = tmp_path_factory.mktemp("options-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GENDIST_CACHE", str(folder))
        for config_file in ("configs/vae_digits.yaml", "configs/cyclegan_digits_rot90.yaml"):
            config = load_config(config_file, ["log.wandb=false"])
            resolve_data(config, init_distributed(config.dist.timeout_s))
    return folder


@pytest.fixture
def make_trainer(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("GENDIST_CACHE", str(cache))

    def make(config_file, *overrides):
        config = load_config(config_file, [f"run.dir={tmp_path / 'run'}", "log.wandb=false", *overrides])
        trainer, _ = build_trainer(config)
        return trainer
    return make


# -- recording what a phase's loss saw ------------------------------------------------------------------------

@dataclass
class Call:
    """One call of a phase's loss: the step, the networks as they were before it (copies), its data, the
    noise it drew (in order) and what it returned (detached)."""

    step: int
    nets: dict
    x: torch.Tensor
    x_b: torch.Tensor | None
    noise: list = field(default_factory=list)
    outputs: dict = field(default_factory=dict)


class Recording:
    def __init__(self, source, draws):
        self.source, self.draws = source, draws

    def randn(self, rows, *tail):
        out = self.source.randn(rows, *tail)
        self.draws.append(out.detach().clone())
        return out


class Replay:
    def __init__(self, draws):
        self.draws = iter(draws)

    def randn(self, rows, *tail):
        return next(self.draws)


class Calls(list):
    """The recorded calls of one phase, and the phase's own loss function (`loss`) for replays."""

    loss = None


def record(trainer, phase_name: str, keep: int | None = None) -> Calls:
    """Wrap the named phase's loss in `trainer` so that its calls (the first `keep`, or all) are recorded;
    returns the list it fills."""
    calls = Calls()
    index = next(i for i, phase in enumerate(trainer.phases) if phase.name == phase_name)
    original = calls.loss = trainer.phases[index].loss

    def loss(nets, batch, step):
        if keep is not None and len(calls) >= keep:
            return original(nets, batch, step)
        call = Call(step, {name: copy.deepcopy(net) for name, net in nets.unwrapped.items()}, batch.x.clone(),
                    None if batch.x_b is None else batch.x_b.clone())
        out = original(nets, dataclasses.replace(batch, noise=Recording(batch.noise, call.noise)), step)
        call.outputs = {key: value.detach().clone() for key, value in out.items()}
        calls.append(call)
        return out

    trainer.phases[index] = dataclasses.replace(trainer.phases[index], loss=loss)
    return calls


def replay(calls: Calls, call: Call, nets: dict) -> dict:
    """The phase's own loss on `nets` with a recorded call's batch and noise."""
    batch = Batch(len(call.x), call.x, None, Replay(call.noise), None, call.x_b)
    return calls.loss(Nets(nets), batch, call.step)


def gradients(loss: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


def bernoulli_log_likelihood(vae, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x|z) of a Bernoulli decoder, summed per sample: z (..., B, Zin) -> (..., B)."""
    lead = z.shape[:-1]
    logits = vae.decoder(z.reshape(-1, z.shape[-1])).reshape(*lead, *x.shape[1:])
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").flatten(len(lead)).sum(-1)


def exact_log_likelihood(vae, x: torch.Tensor, configurations: torch.Tensor) -> float:
    """log p(x) = log sum_z p(z) p(x|z) over every configuration of a discrete z (uniform prior), mean over x."""
    log_prior = -math.log(len(configurations))
    with torch.no_grad():
        joint = bernoulli_log_likelihood(vae, x, configurations.unsqueeze(1).expand(-1, len(x), -1)) + log_prior
    return torch.logsumexp(joint, 0).mean().item()


def log_likelihood_gain(trainer, first, configurations: torch.Tensor, steps: int = 149) -> tuple[float, float]:
    """(exact log p(x) of the first batch before, after `steps` more training steps)."""
    start = exact_log_likelihood(first.nets["vae"], first.x, configurations)
    for _ in range(steps):
        trainer.train_step()
    return start, exact_log_likelihood(trainer.strategy.networks["vae"], first.x, configurations)


# -- discrete latents -----------------------------------------------------------------------------------------

CATEGORIES, CATEGORICAL_DIMS, K = 4, 3, 4


def vimco_surrogate(vae, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Mnih & Rezende's VIMCO written out for a categorical latent: K samples by Gumbel-max from the noise's
    uniforms, the IW bound L = log mean_k w_k, and each sample's learning signal L - L_{-k}, where L_{-k}
    replaces log w_k by the mean of the other log-weights; surrogate = L + sum_k signal_k log q(z_k|x)."""
    logits = vae.encoder(x).reshape(len(x), CATEGORICAL_DIMS, CATEGORIES)  # (B, Z, C)
    u = torch.special.ndtr(noise.float()).clamp(1e-7, 1 - 1e-7).reshape(K, len(x), CATEGORICAL_DIMS, CATEGORIES)
    choice = (logits.detach() - torch.log(-torch.log(u))).argmax(-1)  # (K, B, Z)
    z = F.one_hot(choice, CATEGORIES).float()  # (K, B, Z, C)
    log_q = (F.log_softmax(logits, -1) * z).sum((-1, -2))  # (K, B)
    log_w = bernoulli_log_likelihood(vae, x, z.flatten(-2)) - CATEGORICAL_DIMS * math.log(CATEGORIES) - log_q
    bound = torch.logsumexp(log_w, 0) - math.log(K)
    signals = []
    for k in range(K):
        others = torch.cat([log_w[:k], log_w[k + 1:]])
        left_out = torch.cat([others, others.mean(0, keepdim=True)])
        signals.append(bound - (torch.logsumexp(left_out, 0) - math.log(K)))
    return bound + (torch.stack(signals).detach() * log_q).sum(0)


def test_vimco_trains_the_iw_bound_with_leave_one_out_signals(make_trainer):
    """vae.baseline=vimco with vae.k=4 on a categorical latent: the loss the trainer backpropagates is VIMCO's
    surrogate (value and gradient), and 150 steps raise log p(x). Catches the baseline or k being dropped on
    the way from the config (a plain REINFORCE or moving-average surrogate, k = 1), a signal that is not
    leave-one-out, or a signal left attached to the graph."""
    trainer = make_trainer("configs/vae_digits.yaml", *VAE_QUICK, "vae.latent=categorical",
                           f"vae.categories={CATEGORIES}", f"model.latent_dim={CATEGORICAL_DIMS}", "vae.baseline=vimco",
                           f"vae.k={K}", "data.binarize=fixed", "optim.lr=3e-3")
    calls = record(trainer, "elbo", keep=1)
    trainer.train_step()
    first = calls[0]
    vae = first.nets["vae"]
    (noise,) = first.noise
    assert noise.shape == (len(first.x), K, CATEGORICAL_DIMS * CATEGORIES)  # k samples of every row's uniforms
    noise = noise.transpose(0, 1)
    expected = -vimco_surrogate(vae, first.x, noise).mean()
    # value: measured |trainer - here| 0 to 4e-6 (3 seeds; float32 rounding of a loss of ~45); bugs: no
    # baseline 182, a signal f_k - mean f (not leave-one-out) 0.23
    assert abs(first.outputs["loss"].item() - expected.item()) < 1e-3
    ours = gradients(expected, vae)
    theirs = gradients(replay(calls, first, {"vae": vae})["loss"], vae)
    # gradient: measured relative difference 3e-7; a signal left attached to the graph: 0.62
    assert (ours - theirs).norm() / ours.norm() < 1e-4
    configurations = F.one_hot(torch.cartesian_prod(*[torch.arange(CATEGORIES)] * CATEGORICAL_DIMS),
                               CATEGORIES).flatten(1).float()
    start, end = log_likelihood_gain(trainer, first, configurations)
    # exact (enumerated) log p(x) of the first batch: measured +16.8 to +18.0 nats (3 seeds); untrained 0
    assert end - start > 1.5, (start, end)


BERNOULLI_DIMS = 4


def bernoulli_surrogate(vae, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The score-function surrogate for Bernoulli(sigmoid(logits)) latents under a Bernoulli(1/2) prior, with
    the moving-average baseline at its first step (the batch's mean signal): bits z = 1[u < sigmoid(l)],
    f = log p(x|z) + log p(z) - log q(z|x), surrogate = f + (f - mean f) log q(z|x)."""
    logits = vae.encoder(x)  # (B, Z): one logit per binary unit
    u = torch.special.ndtr(noise.float()).clamp(1e-7, 1 - 1e-7)  # (B, Z)
    z = (u < torch.sigmoid(logits.detach())).float()
    log_q = (z * F.logsigmoid(logits) + (1 - z) * F.logsigmoid(-logits)).sum(-1)
    f = bernoulli_log_likelihood(vae, x, z) - BERNOULLI_DIMS * math.log(2) - log_q
    return f + (f - f.mean()).detach() * log_q


def test_bernoulli_latents_train_end_to_end(make_trainer):
    """vae.latent=bernoulli (score function, moving-average baseline): the encoder outputs one logit per unit,
    the trainer's loss is the Bernoulli score-function surrogate (value and gradient), and 150 steps raise the
    exact log p(x). Catches vae.latent being dropped (a Gaussian latent: 2 outputs per unit) or read as
    categorical (one-hot codes), and bits drawn against the wrong probability."""
    trainer = make_trainer("configs/vae_digits.yaml", *VAE_QUICK, "vae.latent=bernoulli",
                           f"model.latent_dim={BERNOULLI_DIMS}", "vae.baseline=moving_average", "data.binarize=fixed",
                           "optim.lr=3e-3")
    calls = record(trainer, "elbo", keep=1)
    trainer.train_step()
    first = calls[0]
    vae = first.nets["vae"]
    assert vae.encoder(first.x).shape == (len(first.x), BERNOULLI_DIMS)
    (noise,) = first.noise
    assert noise.shape == (len(first.x), 1, BERNOULLI_DIMS)
    expected = -bernoulli_surrogate(vae, first.x, noise[:, 0]).mean()
    # value: measured |trainer - here| 0 (3 seeds; float32 rounding of a loss of ~45 is ~4e-6); bugs: the
    # moving average ignored 122, bits drawn as 1[u > sigmoid(l)] 0.066
    assert abs(first.outputs["loss"].item() - expected.item()) < 1e-3
    ours = gradients(expected, vae)
    vae_copy = copy.deepcopy(vae)
    vae_copy.signal_average.zero_()  # the replay starts from the same (empty) running mean
    theirs = gradients(replay(calls, first, {"vae": vae_copy})["loss"], vae_copy)
    # gradient: measured relative difference 1e-8
    assert (ours - theirs).norm() / ours.norm() < 1e-4
    configurations = torch.cartesian_prod(*[torch.tensor([0.0, 1.0])] * BERNOULLI_DIMS)
    start, end = log_likelihood_gain(trainer, first, configurations)
    # exact (enumerated) log p(x) of the first batch: measured +16.9 to +17.3 nats (3 seeds); untrained 0
    assert end - start > 1.5, (start, end)


# -- decoders and objectives of Gaussian latents ----------------------------------------------------------------

LEVELS = 5


def categorical_log_likelihood(vae, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x|z) of a categorical decoder over LEVELS pixel levels (x quantized to round(x (L - 1))), (B,)."""
    out = vae.decoder(z)  # (B, C * L, H, W), channel c's levels contiguous
    log_probs = F.log_softmax(out.reshape(len(x), x.shape[1], LEVELS, *x.shape[2:]), dim=2)
    level = (x * (LEVELS - 1)).round().long().unsqueeze(2)
    return log_probs.gather(2, level).squeeze(2).flatten(1).sum(-1)


def gaussian_posterior(vae, x: torch.Tensor):
    mean, log_var = vae.encoder(x).chunk(2, dim=-1)
    return mean, log_var.clamp(-12.0, 8.0)


def test_categorical_decoder_trains_on_quantized_pixel_levels(make_trainer):
    """vae.decoder=categorical with vae.levels=5 on grey digits: the decoder puts out 5 logits per pixel, the
    trainer's loss is -(sum of log softmax at each pixel's level - KL) (value and gradient), and 150 steps
    raise the reconstruction log-likelihood. Catches the decoder option dropped (Bernoulli or Gaussian
    likelihood of the same outputs), vae.levels ignored (256 levels), or pixels put at the wrong level."""
    trainer = make_trainer("configs/vae_digits.yaml", *VAE_QUICK, "vae.decoder=categorical", f"vae.levels={LEVELS}",
                           "data.binarize=none", "optim.lr=3e-3")
    calls = record(trainer, "elbo", keep=1)
    trainer.train_step()
    first = calls[0]
    vae, x = first.nets["vae"], first.x
    assert len(torch.unique(x)) > 2  # grey levels, not bits
    mean, log_var = gaussian_posterior(vae, x)
    assert vae.decoder(mean).shape == (len(x), LEVELS, 8, 8)
    (noise,) = first.noise
    z = mean + torch.exp(0.5 * log_var) * noise[:, 0]
    kl = 0.5 * (mean.pow(2) + log_var.exp() - 1 - log_var).sum(-1)
    expected = -(categorical_log_likelihood(vae, x, z) - kl).mean()
    # value: measured |trainer - here| 0 (3 seeds; float32 rounding of a loss of ~105 is ~1e-5); bugs: a
    # Bernoulli likelihood of the first output channel 60, levels by floor instead of round 0.24
    assert abs(first.outputs["loss"].item() - expected.item()) < 1e-3
    ours = gradients(expected, vae)
    theirs = gradients(replay(calls, first, {"vae": vae})["loss"], vae)
    assert (ours - theirs).norm() / ours.norm() < 1e-4  # measured 0 (3 seeds)
    with torch.no_grad():
        start = categorical_log_likelihood(vae, x, mean).mean().item()
    for _ in range(149):
        trainer.train_step()
    trained = trainer.strategy.networks["vae"]
    with torch.no_grad():
        end = categorical_log_likelihood(trained, x, gaussian_posterior(trained, x)[0]).mean().item()
    # log p(x|E[z|x]) of the first batch: measured +43.7 to +47.5 nats (3 seeds); untrained 0
    assert end - start > 4.0, (start, end)


WARMUP = 8


def test_kl_warmup_ramps_the_kl_weight_in_the_loss(make_trainer):
    """vae.kl_warmup_steps=8: the loss of step s is -(reconstruction - beta_s KL) with beta_s = min(1, (s+1)/8),
    read back from each step's logged loss, reconstruction and KL (beta = (loss + reconstruction) / KL); a run
    without warm-up gives beta = 1 at every step. Catches the option ignored (beta = 1 throughout), a ramp off
    by a step, or a ramp that never reaches 1."""
    def kl_weights(warmup: int) -> torch.Tensor:
        trainer = make_trainer("configs/vae_digits.yaml", *VAE_QUICK, f"vae.kl_warmup_steps={warmup}",
                               "optim.lr=3e-3")
        for _ in range(WARMUP + 4):
            trainer.train_step()
        loss, reconstruction, kl = (torch.stack(trainer.pending[f"elbo/{key}"]).double()
                                    for key in ("loss", "reconstruction", "kl"))
        return (loss + reconstruction) / kl

    ramp = torch.tensor([min(1.0, (step + 1) / WARMUP) for step in range(WARMUP + 4)], dtype=torch.float64)
    # measured max |beta - expected| 3e-5 with warm-up, 1.2e-4 without (float32 rounding of the logged means,
    # KL ~0.1); the option ignored: 0.875; a ramp off by one step: 1/8 = 0.125
    ramped = kl_weights(WARMUP)
    assert (ramped - ramp).abs().max().item() < 0.01, ramped
    assert (kl_weights(0) - 1).abs().max().item() < 0.01  # the same reading without warm-up: the full KL


# -- BiGAN and CycleGAN ---------------------------------------------------------------------------------------

GAN_QUICK = ["model.hidden=32", "model.depth=1", "train.batch_size=64"]


def test_bigan_minimax_encoder_and_generator_maximize_the_discriminator_loss(make_trainer):
    """bigan.loss=minimax: E and G minimize -[-E log D(x, E(x)) - E log(1 - D(G(z), z))] (value and gradient,
    recomputed from the pairs), which is <= 0 at every step. Catches bigan.loss=minimax silently training the
    non-saturating objective (softplus(real) + softplus(-fake): >= 0, opposite in sign)."""
    trainer = make_trainer("configs/bigan_digits.yaml", *GAN_QUICK, "bigan.loss=minimax")
    calls = record(trainer, "generator", keep=1)
    for _ in range(10):
        trainer.train_step()
    first = calls[0]
    nets = first.nets
    (z,) = first.noise
    real = nets["discriminator"](first.x, nets["encoder"](first.x))
    fake = nets["discriminator"](nets["generator"](z), z)
    expected = -(F.softplus(-real).mean() + F.softplus(fake).mean())
    # value: measured |trainer - here| 0 (3 seeds); the non-saturating loss trained instead: 2.77
    assert abs(first.outputs["loss"].item() - expected.item()) < 1e-3
    networks = torch.nn.ModuleList([nets["generator"], nets["encoder"]])
    ours = gradients(expected, networks)
    theirs = gradients(replay(calls, first, nets)["loss"], networks)
    assert (ours - theirs).norm() / ours.norm() < 1e-4  # measured 0; non-saturating: 0.035 to 0.16
    losses = torch.stack(trainer.pending["generator/loss"])
    # measured max -1.31 (step to step spread 0.08); non-saturating: min +1.40
    assert len(losses) == 10 and (losses <= 0).all(), losses


def test_bigan_n_critic_steps_the_discriminator_n_times_per_step_on_fresh_batches(make_trainer):
    """bigan.n_critic=3: each training step runs the discriminator phase 3 times, each an optimizer step of
    its own on a new batch and new noise, then one encoder+generator step. Catches bigan.n_critic ignored
    (one discriminator step per step) or repeats that reuse one batch."""
    trainer = make_trainer("configs/bigan_digits.yaml", *GAN_QUICK, "bigan.n_critic=3")
    calls = record(trainer, "discriminator")
    generator_calls = record(trainer, "generator")
    for _ in range(2):
        trainer.train_step()
    assert [call.step for call in calls] == [0, 0, 0, 1, 1, 1] and [c.step for c in generator_calls] == [0, 1]
    steps = {name: {int(state["step"]) for state in optimizer.state.values()}
             for name, optimizer in trainer.strategy.optimizers.items()}
    assert steps == {"discriminator": {6}, "generator": {2}}
    for a, b in ((0, 1), (1, 2), (3, 4)):  # each repeat reads its own batch and draws its own noise
        assert not torch.equal(calls[a].x, calls[b].x) and not torch.equal(calls[a].noise[0], calls[b].noise[0])
    # the weights each repeat saw are those the previous repeat's step left
    with torch.no_grad():
        moved = [float(sum((p - q).abs().sum() for p, q in zip(calls[i].nets["discriminator"].parameters(),
                                                                calls[i + 1].nets["discriminator"].parameters())))
                 for i in (0, 1)]
    assert min(moved) > 0, moved


def test_cyclegan_standard_loss_is_the_non_saturating_bce_game(make_trainer):
    """cyclegan.loss=standard: the generators' adversarial term is E softplus(-D_B(G_AB(a))) + E
    softplus(-D_A(G_BA(b))) and each discriminator minimizes -E log D(real) - E log(1 - D(fake)), recomputed
    from the networks at each phase (history pool off, so a discriminator sees this step's translations).
    Catches cyclegan.loss=standard silently training the least-squares game ((D - 1)^2, D^2)."""
    trainer = make_trainer("configs/cyclegan_digits_rot90.yaml", *GAN_QUICK, "cyclegan.loss=standard",
                           "cyclegan.pool_size=0")
    generators, discriminators = record(trainer, "generators"), record(trainer, "discriminators")
    trainer.train_step()
    call = generators[0]
    n, a, b = call.nets, call.x, call.x_b
    adversarial = F.softplus(-n["d_b"](n["g_ab"](a))).mean() + F.softplus(-n["d_a"](n["g_ba"](b))).mean()
    # measured |trainer - here| 0 (3 seeds); least squares trained instead: 0.38 to 0.82
    assert abs(call.outputs["adversarial"].item() - adversarial.item()) < 1e-3
    call = discriminators[0]
    n, a, b = call.nets, call.x, call.x_b
    with torch.no_grad():
        d_a = F.softplus(-n["d_a"](a)).mean() + F.softplus(n["d_a"](n["g_ba"](b))).mean()
        d_b = F.softplus(-n["d_b"](b)).mean() + F.softplus(n["d_b"](n["g_ab"](a))).mean()
    # measured 0 (3 seeds); least squares trained instead: 0.72 to 1.06
    assert abs(call.outputs["d_a"].item() - d_a.item()) < 1e-3 and abs(call.outputs["d_b"].item() - d_b.item()) < 1e-3


def test_encode_of_a_bigan_with_an_ema_uses_the_ema_encoder(make_trainer, tmp_path):
    """`gendist encode` on a BiGAN trained with train.ema_decay=0.9: the codes are E(x) under the EMA of the
    encoder's weights (recomputed here from the weights before and after each encoder+generator step, with
    each step's ramped decay), not
    under the raw weights. Catches an EMA kept only for the generator, an EMA file that is not written, or
    `load_run` ignoring it."""
    from gendist.cli import main
    from gendist.engine.ema import ramped_decay

    trainer = make_trainer("configs/bigan_digits.yaml", *GAN_QUICK, "train.ema_decay=0.9", "optim.lr=2e-3")
    calls = record(trainer, "generator")
    for _ in range(10):
        trainer.train_step()
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    dump_config(trainer.config, run_dir / "config.yaml")
    trainer.save(run_dir / "checkpoints", {})
    x = calls[0].x
    np.save(tmp_path / "x.npy", x.numpy())
    assert main(["encode", str(run_dir), "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "z.npy")]) == 0
    codes = torch.from_numpy(np.load(tmp_path / "z.npy"))
    raw = trainer.strategy.networks["encoder"]
    # the weights after each of the 10 steps: those the next step started from, then the final ones
    after = [call.nets["encoder"].state_dict() for call in calls[1:]] + [raw.state_dict()]
    average = {key: value.clone() for key, value in calls[0].nets["encoder"].state_dict().items()}  # starts at init
    for step, weights in enumerate(after, start=1):  # each step's decay, ramped up (train.ema_rampup)
        decay = ramped_decay(0.9, trainer.config.train.ema_rampup, step)
        for key in average:
            average[key] = decay * average[key] + (1 - decay) * weights[key]
    averaged = copy.deepcopy(raw)
    averaged.load_state_dict(average)
    with torch.no_grad():
        with_ema, without = averaged(x), raw(x)
    # measured: max |codes - E_ema(x)| 1.2e-7 (float32 rounding of the two averaging formulas); the raw
    # encoder's codes (the bug) are 0.055 away (the ramped average is short after 10 steps: decay 0.25 at the
    # last), and an average with the constant 0.9 0.72 away
    assert (codes - with_ema).abs().max().item() < 1e-4
    assert (codes - without).abs().max().item() > 0.04  # the EMA is far from the raw weights after 10 steps
