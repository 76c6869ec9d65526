"""GANs: alternating discriminator and generator phases over a table of objectives.

- minimax (Goodfellow et al. 2014): D maximizes E log D(x) + E log(1 - D(G(z))), with logits l as
  softplus(-l_real) + softplus(l_fake); G minimizes E log(1 - D(G(z))) = -softplus(l_fake) (saturates when
  D wins early). nonsaturating: G minimizes -E log D(G(z)) = softplus(-l_fake) instead.
- fgan (Nowozin et al. 2016): the variational f-divergence bound of gendist.divergences.
- wgan (Arjovsky et al. 2017): critic maximizes E D(x) - E D(G(z)) with clamped weights; wgan_gp
  (Gulrajani et al. 2017) replaces the clamp by a gradient penalty; hinge (Lim & Ye 2017, Miyato et al.).
- relativistic (RpGAN, Jolicoeur-Martineau 2019; the loss of R3GAN, Huang et al. 2024): D minimizes
  softplus(l_fake - l_real) over pairs of a real and a generated sample, G minimizes softplus(l_real - l_fake);
  each generated sample is judged against a real one, which removes the mode-dropping optima of the plain
  loss (R3GAN's analysis; with R1 and R2 it covers every mode of stacked MNIST).
- R1 and R2 (lazy phases), PacGAN packing and unrolled discriminators: gendist.recipes.gan_regularizers.
- gan.augment: DiffAugment (gendist.augment) on everything D sees, real and generated, inside the penalties too.
- model.conditional: class-conditional G(z, y); D judges (x, y) by projection (Miyato and Koyama 2018) or, with
  gan.conditional=acgan, classifies x beside scoring it (AC-GAN, Odena et al. 2017). Generated samples' labels
  are drawn uniformly from the step's noise (`Batch.randint`), so they too are a deterministic function of
  (seed, step, phase, global row); real samples carry their data labels. Penalties (R1, WGAN-GP) take D's score
  at the real labels, R2 at the generated samples' labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gendist.augment import Augmenter, parse_policy
from gendist.config import RunConfig
from gendist.divergences import (Divergence, critic_objective, generator_objective,
                                 generator_objective_nonsaturating, get_divergence,
                                 with_exponential_negative_tail)
from gendist.nets.registry import NetworkBuilder
from gendist.data.info import DataInfo
from gendist.nets.conditional import balanced_labels
from gendist.recipes.base import Batch, Nets, Phase, num_classes_of
from gendist.errors import UserError
from gendist.recipes.gan_regularizers import (call_with, gradient_penalty, pack_samples, path_length_loss, r1_penalty,
                                              style_network, unrolled_discriminator)


# -- objectives on discriminator scores: (real, fake) -> loss D minimizes; fake -> loss G minimizes --------
def bce_discriminator(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """-E log D(x) - E log(1 - D(G(z))) with D = sigmoid(score)."""
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def hinge_discriminator(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def relativistic_discriminator(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """RpGAN: E softplus(D(G(z_i)) - D(x_i)), real and generated samples paired by batch row."""
    return F.softplus(fake - real).mean()


def relativistic_generator(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    return F.softplus(real - fake).mean()


def wasserstein_critic(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """-(E D(x) - E D(G(z))): the critic maximizes the Kantorovich-Rubinstein dual."""
    return fake.mean() - real.mean()


def fgan_critic(divergence: Divergence, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The critic maximizes the variational bound E_P[g_f(V(x))] - E_Q[f*(g_f(V(G(z))))] (Nowozin et al.)."""
    return -critic_objective(divergence, real, fake)


GENERATOR_OBJECTIVES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "minimax": lambda fake: -F.softplus(fake).mean(),  # E log(1 - D(G(z))): saturates when D wins
    "nonsaturating": lambda fake: F.softplus(-fake).mean(),  # -E log D(G(z))
    "hinge": lambda fake: -fake.mean(),
    "wgan": lambda fake: -fake.mean(),
    "wgan_gp": lambda fake: -fake.mean(),
}
DISCRIMINATOR_OBJECTIVES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "minimax": bce_discriminator, "nonsaturating": bce_discriminator, "hinge": hinge_discriminator,
    "wgan": wasserstein_critic, "wgan_gp": wasserstein_critic, "relativistic": relativistic_discriminator,
}
# objectives of the generator that also read the discriminator's scores on the real batch (paired losses)
PAIRED_GENERATOR_OBJECTIVES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "relativistic": relativistic_generator,
}


@dataclass(frozen=True)
class Conditioning:
    """How the players use classes: `classes` 0 (unconditional), or K with `mode` projection | acgan."""

    classes: int = 0
    mode: str = "projection"
    weight: float = 1.0  # acgan: weight of the classification cross-entropy

    def generate(self, generator: Callable, batch: Batch, latent_dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(G(z) or G(z, y), y): z, then the labels y, drawn from the batch's noise."""
        z = batch.randn(latent_dim)
        if not self.classes:
            return generator(z), None
        y = batch.randint(self.classes)
        return generator(z, y), y

    def judge(self, discriminator: Callable, x: torch.Tensor, y: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(scores (B, 1), AC-GAN class logits (B, K) or None) of samples x with labels y."""
        if not self.classes:
            return discriminator(x), None
        if self.mode == "projection":
            return discriminator(x, y), None
        out = discriminator(x)  # (B, 1 + K)
        return out[:, :1], out[:, 1:]

    def scorer(self, discriminator: Callable, y: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
        """x -> D's scores of x at labels y (what a gradient penalty differentiates)."""
        return lambda x: self.judge(discriminator, x, y)[0]

    def class_loss(self, logits: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor | None:
        return None if logits is None else F.cross_entropy(logits.float(), y)


UNCONDITIONAL = Conditioning()


def discriminator_loss(nets: Nets, batch: Batch, step: int, *, latent_dim: int, objective, pack: int = 1,
                       gp_weight: float = 0.0, objective_log: str = "", augment: Augmenter | None = None,
                       cond: Conditioning = UNCONDITIONAL) -> dict[str, torch.Tensor]:
    """The discriminator's objective (+ the WGAN-GP penalty); `objective_log` names -objective in the logs
    when it estimates something (the f-divergence bound, the Wasserstein distance). With `augment`, D sees
    augmented real and generated samples (and the penalty's interpolates are made of those)."""
    fake, fake_labels = cond.generate(nets.generator, batch, latent_dim)
    fake = fake.detach()
    real = batch.x
    if augment is not None:
        real, fake = augment(real, batch), augment(fake, batch)
    real_scores, real_logits = cond.judge(nets.discriminator, pack_samples(real, pack), batch.y)  # (B / pack, 1)
    fake_scores, fake_logits = cond.judge(nets.discriminator, pack_samples(fake, pack), fake_labels)
    loss = objective(real_scores, fake_scores)
    logs = {"real_score": real_scores.detach().float().mean(), "fake_score": fake_scores.detach().float().mean()}
    if real_logits is not None:  # AC-GAN: D also learns the class of real and generated samples
        class_loss = cond.class_loss(real_logits, batch.y) + cond.class_loss(fake_logits, fake_labels)
        loss = loss + cond.weight * class_loss
        logs["class_loss"] = class_loss.detach()
    if augment is not None:
        augment.observe(real_scores)  # ADA's statistic (nothing when p is fixed)
        logs["augment_p"] = torch.tensor(augment.p)
        if augment.last_rt is not None:  # ADA's statistic E[sign D(x)] of the last interval, against its target
            logs["augment_rt"] = torch.tensor(augment.last_rt)
    if objective_log:
        logs[objective_log] = -loss.detach().float()
    if gp_weight:
        mix = torch.special.ndtr(batch.randn(*[1] * (batch.x.dim() - 1)))  # uniform(0, 1) per sample
        penalty = gradient_penalty(cond.scorer(nets.unwrapped.discriminator, batch.y), real, fake,
                                   mix.to(batch.x.dtype), pack)
        loss = loss + gp_weight * penalty
        logs["gradient_penalty"] = penalty.detach()
    return {"loss": loss, **logs}


def generator_loss(nets: Nets, batch: Batch, step: int, *, latent_dim: int, objective, pack: int = 1,
                   unroll: tuple[int, float, Callable] | None = None, paired: bool = False,
                   augment: Augmenter | None = None, cond: Conditioning = UNCONDITIONAL) -> dict[str, torch.Tensor]:
    """`paired`: the objective is (fake scores, real scores), the real batch's scores taken as constants.
    `augment`: D judges augmented samples; the generator's gradient flows through the augmentation."""
    fake, fake_labels = cond.generate(nets.generator, batch, latent_dim)
    if unroll is None:
        def judge(x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
            return cond.judge(nets.discriminator, pack_samples(x if augment is None else augment(x, batch), pack), y)
    else:
        steps, lr, d_objective = unroll
        discriminator = nets.unwrapped.discriminator  # read as weights (torch.func), not through a wrapper
        state = unrolled_discriminator(discriminator, d_objective, batch.x, fake, steps, lr, pack)

        def judge(x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
            return call_with(discriminator, state, pack_samples(x, pack)), None  # (unconditional: validated)
    fake_scores, fake_logits = judge(fake, fake_labels)
    if paired:
        with torch.no_grad():
            real_scores, _ = judge(batch.x, batch.y)
        loss = objective(fake_scores, real_scores)
    else:
        loss = objective(fake_scores)
    if fake_logits is None:
        return {"loss": loss}
    class_loss = cond.class_loss(fake_logits, fake_labels)  # AC-GAN: G makes samples D classifies as asked
    return {"loss": loss + cond.weight * class_loss, "class_loss": class_loss.detach()}


def _lazy_gradient_penalty(nets: Nets, x: torch.Tensor, gamma: float, every: int, pack: int,
                           augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                           cond: Conditioning = UNCONDITIONAL, labels: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, penalty) of a lazy zero-centred penalty E||grad_x D(x)||^2 on samples x (R1 on real data, R2 on
    generated ones; D's score at `labels` when conditional): (gamma / 2) times the penalty, scaled by the
    interval so its average pull matches a penalty applied at every step."""
    penalty = r1_penalty(cond.scorer(nets.unwrapped.discriminator, labels), x, pack, augment)
    # The penalty's double backward goes around the distributed wrapper (see Nets.unwrapped); a zero-weight
    # term through the wrapped player lets the strategy see this phase's forward, so its gradient
    # synchronization runs (StyleGAN2-ADA adds `real_logits * 0` for the same reason).
    # The anchor sees what the penalty's D sees (augmented samples), so D never meets a raw image when augmenting.
    seen = pack_samples(x if augment is None else augment(x), pack)
    anchor = cond.judge(nets.discriminator, seen, labels)[0].float().sum() * 0
    return penalty * (gamma / 2) * every + anchor, penalty.detach()


def r1_loss(nets: Nets, batch: Batch, step: int, *, gamma: float, every: int, pack: int = 1,
            augment: Augmenter | None = None, cond: Conditioning = UNCONDITIONAL) -> dict[str, torch.Tensor]:
    """Lazy R1 (StyleGAN2): (gamma / 2) E||grad D(x)||^2 on real data (through the augmentation, if any)."""
    loss, penalty = _lazy_gradient_penalty(nets, batch.x, gamma, every, pack,
                                           None if augment is None else lambda x: augment(x, batch), cond, batch.y)
    return {"loss": loss, "r1_penalty": penalty}


def r2_loss(nets: Nets, batch: Batch, step: int, *, gamma: float, every: int, latent_dim: int,
            pack: int = 1, augment: Augmenter | None = None, cond: Conditioning = UNCONDITIONAL) -> dict[str, torch.Tensor]:
    """Lazy R2 (Mescheder et al. 2018; R3GAN pairs it with R1): (gamma / 2) E||grad D(G(z))||^2 on generated
    samples, which are constants here (the generator is not trained in this phase)."""
    with torch.no_grad():
        fake, labels = cond.generate(nets.generator, batch, latent_dim)
    loss, penalty = _lazy_gradient_penalty(nets, fake, gamma, every, pack,
                                           None if augment is None else lambda x: augment(x, batch), cond, labels)
    return {"loss": loss, "r2_penalty": penalty}


class GANRecipe:
    units = {"generator": ("generator",), "discriminator": ("discriminator",)}
    ema_networks = ("generator",)

    def __init__(self, config: RunConfig, data_info: DataInfo):
        self.config = config
        self.info = data_info
        gan = config.gan
        self.num_classes = num_classes_of(config, data_info)  # 0: unconditional
        self.cond = Conditioning(self.num_classes, gan.conditional, gan.acgan_weight)
        self.augmenter: Augmenter | None = None
        if gan.augment:
            if data_info.kind != "images":
                raise UserError(f"gan.augment transforms images; this data holds {data_info.kind} of shape "
                                f"{tuple(data_info.sample_shape)}: set gan.augment=''")
            self.augmenter = Augmenter(parse_policy(gan.augment), gan.augment_p, gan.ada_target, gan.ada_interval,
                                       gan.ada_kimg)

    # ADA's probability: global (trainer.json, any world size) and, with the interval's partial sums, per rank
    def end_step(self, step: int, images_per_step: int, reduce_mean) -> None:
        if self.augmenter is not None:
            self.augmenter.adapt(step, images_per_step, reduce_mean)

    def shared_state(self) -> dict:
        if self.augmenter is None or not self.augmenter.adaptive:
            return {}
        return {"augment_p": self.augmenter.p, "augment_rt": self.augmenter.last_rt}

    def load_shared_state(self, state: dict) -> None:
        if self.augmenter is not None and self.augmenter.adaptive and "augment_p" in state:
            self.augmenter.p = float(state["augment_p"])
            self.augmenter.last_rt = state.get("augment_rt")  # absent from older checkpoints

    def state_dict(self) -> dict:
        return {"augment": self.augmenter.state_dict()} if self.augmenter is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.augmenter is not None and "augment" in state:
            self.augmenter.load_state_dict(state["augment"])

    def build_networks(self) -> dict[str, nn.Module]:
        """generator: z -> x; discriminator: `gan.pack` samples stacked on the first feature axis -> score."""
        shape, pack = self.info.sample_shape, self.config.gan.pack
        build = NetworkBuilder(self.config, self.info.kind == "images")
        packed = (shape[0] * pack, *shape[1:])
        classes, acgan = self.num_classes, self.config.gan.conditional == "acgan"
        generator = build("generator", "generator", (self.config.model.latent_dim,), shape, num_classes=classes)
        if self.config.gan.pl_weight and style_network(generator) is None:
            raise UserError("gan.pl_weight regularizes a style-based generator (mapping + synthesis), which "
                            f"model.arch={self.config.model.arch} does not build: use model.arch=stylegan2 or gan.pl_weight=0")
        if classes and acgan:  # AC-GAN: an unconditional D with the score and K class logits
            discriminator = build("discriminator", "discriminator", packed, (1 + classes,))
        else:
            discriminator = build("discriminator", "discriminator", packed, (1,), num_classes=classes)
        return {"generator": generator, "discriminator": discriminator}

    def objectives(self) -> tuple[Callable, Callable]:
        """(discriminator objective on (real, fake) scores, generator objective on fake scores)."""
        gan = self.config.gan
        if gan.loss == "fgan":
            divergence = get_divergence(gan.divergence, gan.alpha, gan.pi)
            if gan.fgan_activation == "exp_negative_tail":
                divergence = with_exponential_negative_tail(divergence)
            generator_fn = generator_objective if gan.fgan_generator == "saturating" else \
                generator_objective_nonsaturating
            return partial(fgan_critic, divergence), partial(generator_fn, divergence)
        generator = PAIRED_GENERATOR_OBJECTIVES.get(gan.loss) or GENERATOR_OBJECTIVES[gan.loss]
        return DISCRIMINATOR_OBJECTIVES[gan.loss], generator

    def phases(self) -> list[Phase]:
        model, gan = self.config.model, self.config.gan
        d_objective, g_objective = self.objectives()
        gp_weight = gan.gp_weight if gan.loss == "wgan_gp" else 0.0
        objective_log = {"fgan": "divergence_bound", "wgan": "wasserstein_estimate",
                         "wgan_gp": "wasserstein_estimate"}.get(gan.loss, "")
        augment, cond = self.augmenter, self.cond
        d_loss = partial(discriminator_loss, latent_dim=model.latent_dim, objective=d_objective, pack=gan.pack,
                         gp_weight=gp_weight, objective_log=objective_log, augment=augment, cond=cond)
        unroll = None
        if gan.unroll_steps:
            lr = gan.unroll_lr or self.config.optim.lr_overrides.get("discriminator", self.config.optim.lr)
            unroll = (gan.unroll_steps, lr, d_objective)
        paired = gan.loss in PAIRED_GENERATOR_OBJECTIVES
        g_loss = partial(generator_loss, latent_dim=model.latent_dim, objective=g_objective, pack=gan.pack,
                         unroll=unroll, paired=paired, augment=augment, cond=cond)
        clamp = gan.clip_value if gan.loss == "wgan" else 0.0
        phases = [Phase("discriminator", "discriminator", d_loss, repeat=gan.n_critic, clamp_weights=clamp,
                        double_backward=bool(gp_weight))]
        if gan.r1_gamma:
            r1 = partial(r1_loss, gamma=gan.r1_gamma, every=gan.r1_every, pack=gan.pack, augment=augment, cond=cond)
            phases.append(Phase("discriminator_r1", "discriminator", r1, every=gan.r1_every,
                                clamp_weights=clamp, double_backward=True))
        if gan.r2_gamma:
            r2 = partial(r2_loss, gamma=gan.r2_gamma, every=gan.r1_every, latent_dim=model.latent_dim, pack=gan.pack,
                         augment=augment, cond=cond)
            phases.append(Phase("discriminator_r2", "discriminator", r2, every=gan.r1_every, uses_data=False,
                                clamp_weights=clamp, double_backward=True))
        phases.append(Phase("generator", "generator", g_loss, uses_data=unroll is not None or paired,
                            reads_weights_of=("discriminator",) if unroll else ()))
        if gan.pl_weight:
            pl = partial(path_length_loss, latent_dim=model.latent_dim, weight=gan.pl_weight, every=gan.pl_every,
                         num_classes=self.num_classes)
            phases.append(Phase("generator_pl", "generator", pl, every=gan.pl_every, uses_data=False,
                                double_backward=True))
        return phases

    # scores are one D forward per row: evaluation also scores as many training rows (train/d_real, gap/d_real)
    train_scores = True

    @torch.no_grad()
    def scores(self, nets: Nets, x: torch.Tensor, generator: torch.Generator,
               y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The discriminator's output on real images x (labels y, for a conditional D), per sample (B,; a pack's
        output for each of its rows). Its mean on training rows above its mean on held-out rows (`gap/d_real`)
        is a discriminator memorizing its training set (Karras et al. 2020, figure 1): the failure
        differentiable augmentation exists to prevent."""
        return {"d_real": self.judge_real(nets, x, y).repeat_interleave(self.config.gan.pack)}

    def judge_real(self, nets: Nets, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """D's outputs (B / pack,) on real x (the first multiple of gan.pack rows), at labels y if conditional."""
        pack = self.config.gan.pack
        count = len(x) - len(x) % pack
        device = next(nets.discriminator.parameters()).device
        labels = None if y is None or not self.num_classes else y[:count].to(device)
        real = pack_samples(x[:count].to(device), pack)
        return self.cond.judge(nets.discriminator, real, labels)[0].float().reshape(-1)

    @torch.no_grad()
    def diagnostics(self, nets: Nets, x: torch.Tensor, generator: torch.Generator,
                    y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Discriminator outputs on held-out data x (labels y, for a conditional D) and on as many generated
        samples (their histograms go to W&B and RUN/plots): two separated humps mean a winning discriminator,
        one a fooled one."""
        pack = self.config.gan.pack
        count = len(x) - len(x) % pack
        device = next(nets.discriminator.parameters()).device
        labels = balanced_labels(count, self.num_classes, device) if self.num_classes else None
        fake = self.sample(nets, count, generator, labels=labels)
        generated = self.cond.judge(nets.discriminator, pack_samples(fake, pack), labels)[0].float().reshape(-1)
        if self.num_classes and y is None:
            return {"generated": generated}
        return {"real": self.judge_real(nets, x, y), "generated": generated}

    def sample(self, nets: Nets, count: int, generator: torch.Generator, inputs: torch.Tensor | None = None,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """`count` samples G(z); `inputs` (latent codes (count, latent_dim)) replace the random z. A conditional
        generator makes `labels` (count,), by default every class equally often (0, 1, ..., K-1, 0, ...)."""
        z = torch.randn(count, self.config.model.latent_dim, generator=generator) if inputs is None else inputs
        device = next(nets.generator.parameters()).device
        if not self.num_classes:
            return nets.generator(z.to(device))
        labels = balanced_labels(count, self.num_classes) if labels is None else labels
        return nets.generator(z.to(device), labels.to(device))
