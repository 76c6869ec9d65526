"""Typed run configuration: one dataclass per concern, YAML + dotted overrides, strict validation.

Every field is documented in place; the fully resolved config is written to the run folder and to W&B.
Unknown keys, wrong types and out-of-range values raise `UserError` naming the key.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from gendist.errors import UserError


@dataclass
class RunSection:
    dir: str = "runs/default"  # run folder: config.yaml, metrics.jsonl, samples/, checkpoints/
    name: str = ""  # display name (W&B); defaults to the run folder's name


@dataclass
class DataConfig:
    # built-in source (ring|grid|digits|fashion_mnist|emoji|...|npz:PATH|folder:PATH), prepared once into the cache
    source: str = ""
    # images of data.source (and source_b) resampled to [H, W] when prepared (LANCZOS: no aliasing); [] keeps them
    resize: list[int] = field(default_factory=list)
    crop: Literal["center", "none"] = "center"  # with resize: centre-crop to the new aspect ratio, or stretch
    source_b: str = ""  # second domain of unpaired two-domain data (CycleGAN), a source spec like data.source
    dir: str = ""  # a folder written by `gendist data prepare`
    shards: str = ""  # path, glob or brace pattern of training .tar shards (data prepared elsewhere)
    test_shards: str = ""  # same for the held-out split
    cache_dir: str = ""  # where `source` shards are cached; default $GENDIST_CACHE or ~/.cache/gendist
    # shard: each rank reads its own shards; global: world-size independent batches; owner: rank r reads the
    # samples with id % world_size == r (a stable assignment, for per-datapoint state: vae.inference=per_datapoint)
    split_mode: Literal["shard", "global", "owner"] = "shard"
    num_workers: int = 0  # loader worker processes per rank
    shuffle_buffer: int = 4096  # samples in the seeded shuffle buffer
    # decoded shards kept in memory per rank after their first epoch (with num_workers 0); 0 turns it off. Data
    # that fit are then decoded once per run; the batches are the same either way
    memory_cache_mb: int = 1024
    on_error: Literal["raise", "skip"] = "raise"  # corrupt shard: stop with its name, or skip and count
    # images in [0, 1] -> {0, 1} with P(1) = x for Bernoulli decoders: fixed (once per sample) | dynamic (a new
    # draw at every read, Burda et al.); held-out data is binarized once per evaluation chunk
    binarize: Literal["none", "fixed", "dynamic"] = "none"


@dataclass
class ModelConfig:
    """Which family and which networks; each family's objective lives in its own section (gan, bigan,
    cyclegan, vae)."""

    # model family: gan | vae | bigan | cyclegan, or a user's recipe: package.module:Class or the name of an entry
    # point in the group gendist.recipes (its options: the `recipe` section)
    recipe: str = "gan"
    # networks (gendist/nets/registry.py): mlp for vectors/points, conv (DCGAN-style) | resnet (SNGAN/BigGAN-style,
    # the `resnet` section) | stylegan2 (the `stylegan2` section) for images, gaussian (the GAN generator is
    # x = mu + sigma * z; Nowozin et al.'s 1-D experiment), or package.module:Class of a user's Architecture
    arch: str = "mlp"
    latent_dim: int = 2  # size of z
    hidden: int = 128  # MLP width, or base channels of conv nets
    depth: int = 3  # hidden layers of each MLP
    # hidden-layer activation of the mlp and conv networks: auto keeps each network's own (ReLU in generators
    # and decoders, LeakyReLU in discriminators and encoders); a name applies it everywhere (smooth ones have no
    # kink: gendist/nets/activations.py)
    activation: Literal["auto", "relu", "leaky_relu", "silu", "gelu", "elu", "softplus", "tanh"] = "auto"
    gaussian_init: list[float] = field(default_factory=lambda: [0.0, 1.0])  # arch=gaussian: initial [mean, std]
    # spectral normalization (Miyato et al. 2018) of every Linear/Conv layer: auto (the architecture's default:
    # resnet's discriminators) | discriminators | all | none. Not under FSDP or ZeRO-3 (refused at start-up)
    spectral_norm: Literal["auto", "discriminators", "all", "none"] = "auto"
    # your own networks: {role or network name: package.module:Class, <that key>_kwargs: {keyword arguments}};
    # roles: generator, discriminator, encoder, decoder, joint_discriminator, translator (README "Your own
    # networks": the shape contract, checked at start-up)
    networks: dict[str, Any] = field(default_factory=dict)
    sync_batchnorm: bool = False  # BatchNorm layers of your networks use statistics of the global batch (DDP, GPU)
    # class-conditional networks (labelled data; gan and vae): the generator/decoder gets the class, and the
    # discriminator judges (x, class) (gan.conditional) or the encoder reads it (vae); README "Class-conditional"
    conditional: bool = False
    num_classes: int = 0  # classes 0 .. num_classes - 1; 0: from the data (its manifest)


@dataclass
class ResNetConfig:
    """model.arch=resnet: SNGAN/BigGAN-style residual networks, model.hidden base channels."""

    attention: int = 0  # a self-attention block (SAGAN) at the feature map whose larger side is this; 0: none


@dataclass
class StyleGAN2Config:
    """model.arch=stylegan2: mapping network, modulated convolutions, noise inputs, skip generator, residual
    discriminator with minibatch standard deviation; model.hidden channels at the largest resolution."""

    max_channels: int = 256  # channel cap at the small resolutions
    w_dim: int = 128  # size of the intermediate latent w
    mapping_layers: int = 4  # layers of the mapping network z -> w
    style_mixing: float = 0.0  # probability that a training sample mixes two latents (StyleGAN2: 0.9)
    # minibatch standard deviation over groups of this many consecutive rows of each rank's micro-batch (so
    # the discriminator's output depends on the split of the batch over ranks unless it is 1); 1 disables it
    mbstd_group: int = 4


@dataclass
class GANConfig:
    """The GAN family's objective and its regularizers (model.recipe=gan)."""

    # nonsaturating | minimax (saturating) | fgan (gan.divergence) | wgan (weight clipping, gan.clip_value) |
    # wgan_gp (gradient penalty, gan.gp_weight) | hinge | relativistic (RpGAN: real and generated samples
    # judged in pairs, the loss of R3GAN; with gan.r1_gamma and gan.r2_gamma)
    loss: Literal["nonsaturating", "minimax", "fgan", "wgan", "wgan_gp", "hinge", "relativistic"] = "nonsaturating"
    divergence: str = "jensen_shannon"  # f-GAN divergence (Nowozin et al. 2016, gendist/divergences.py)
    alpha: float = 1.5  # the α of divergence=alpha
    pi: float = 0.5  # the π of divergence=jensen_shannon_weighted, in (0, 1)
    fgan_generator: Literal["nonsaturating", "saturating"] = "nonsaturating"  # f-GAN generator objective
    # f-GAN output activation: the paper's g_f (table), or for dom f* = R an exponential branch for negative
    # scores (exp_negative_tail; see gendist.divergences.with_exponential_negative_tail)
    fgan_activation: Literal["table", "exp_negative_tail"] = "table"
    n_critic: int = 1  # discriminator steps per generator step
    clip_value: float = 0.01  # wgan: critic weights are clamped to [-clip_value, clip_value] after every step
    gp_weight: float = 10.0  # wgan_gp: lambda of E(||grad D(x_hat)|| - 1)^2 on real/fake interpolates
    r1_gamma: float = 0.0  # R1 penalty (gamma/2) E||grad D(x)||^2 on real data, as a lazy phase; 0 disables
    r2_gamma: float = 0.0  # R2 penalty (gamma/2) E||grad D(G(z))||^2 on generated samples, a lazy phase; 0 disables
    r1_every: int = 16  # the lazy R1 and R2 phases run every r1_every steps (their losses are scaled by r1_every)
    unroll_steps: int = 0  # unrolled GAN (Metz et al. 2017): the generator sees D after k SGD steps; 0 disables
    unroll_lr: float = 0.0  # step size of the unrolled discriminator steps; 0 uses the discriminator's lr
    pack: int = 1  # PacGAN (Lin et al. 2018): the discriminator judges `pack` samples at once; 1 disables
    # path-length regularization (StyleGAN2; weight 2 there) as a lazy generator phase every pl_every steps (its
    # loss scaled by pl_every); needs a style-based generator (mapping + synthesis: model.arch=stylegan2). Its
    # target (the running mean of path lengths) is a buffer of the generator updated from each rank's
    # micro-batch, as StyleGAN2-ADA does: with it on, 2 ranks x b is close to, not equal to, 1 x 2b
    pl_weight: float = 0.0
    pl_every: int = 4
    # differentiable augmentation of everything the discriminator sees (real, generated, inside R1/R2 and the
    # gradient penalty): DiffAugment's policies, comma-separated: color, translation, cutout ("" disables), each
    # applied to a sample with probability augment_p (gendist.augment). Images only
    augment: str = ""
    augment_p: float = 1.0  # with gan.ada_target > 0: the starting probability (ADA starts at 0)
    # ADA (Karras et al. 2020): p adapts so that E[sign D(x)] on real data stays at ada_target (0.6 in the paper;
    # 0: p fixed), adjusted every ada_interval steps by (images in the interval) / (ada_kimg * 1000): p can go
    # from 0 to 1 in ada_kimg thousand images. p is checkpointed and logged (discriminator/augment_p)
    ada_target: float = 0.0
    ada_interval: int = 4
    ada_kimg: float = 500.0
    # model.conditional: how D uses the class. projection (Miyato and Koyama 2018): score = psi(phi(x)) +
    # embed(y) . phi(x); acgan (Odena et al. 2017): D also classifies, both players add acgan_weight x the
    # cross-entropy of D's class logits (on real and generated samples for D, on generated ones for G)
    conditional: Literal["projection", "acgan"] = "projection"
    acgan_weight: float = 1.0


@dataclass
class BiGANConfig:
    """BiGAN (Donahue et al. 2017): D on (x, z) pairs separates (x, E(x)) from (G(z), z) (model.recipe=bigan)."""

    loss: Literal["nonsaturating", "minimax"] = "nonsaturating"  # what E and G minimize against D
    n_critic: int = 1  # discriminator steps per encoder+generator step


@dataclass
class CycleGANConfig:
    """CycleGAN (Zhu et al. 2017): G: A->B, F: B->A, D_A, D_B on unpaired data (model.recipe=cyclegan)."""

    loss: Literal["least_squares", "standard"] = "least_squares"  # adversarial loss (the paper's: least squares)
    cycle_weight: float = 10.0  # lambda of ||F(G(a)) - a||_1 + ||G(F(b)) - b||_1
    identity_weight: float = 0.0  # weight of ||G(b) - b||_1 + ||F(a) - a||_1, relative to cycle_weight (paper: 0.5)
    pool_size: int = 50  # history of generated images each discriminator also sees (per rank); 0 disables
    # hidden layers of the MLP generators (arch=mlp), residual blocks of the image translators (conv, resnet,
    # stylegan2); -1: model.depth. MLP: 0 makes each generator affine + sigmoid, enough for domains related by a
    # pixel permutation or an intensity change (rotation, inversion); an affine map cannot trade one digit for
    # another, which deeper generators can (cycle-consistently)
    generator_depth: int = -1
    # at most this many stride-2 convolutions in the image translators (CycleGAN's: 2); none takes a side below
    # 32 pixels, so images up to 63 pixels a side are translated at full size: through a coarser map the
    # translators redraw small images as other shapes (gendist.nets.translator; the plan is logged at start-up)
    downsample: int = 2
    # none | dihedral: each generator first applies a learned global mixture of the 8 turns and flips of the image
    # grid (those that give domain B's shape), softmax-weighted, then its network as a residual correction that
    # starts at zero. Gradient descent can then choose a turn (which a critic's local gradient never finds from
    # the identity); for domains whose difference includes a rotation or flip of the whole image
    align: Literal["none", "dihedral"] = "none"


@dataclass
class VAEConfig:
    """VAE (model.recipe=vae)."""

    # latent family: gaussian (reparameterized) | categorical (model.latent_dim variables of vae.categories
    # classes) | bernoulli (model.latent_dim binary units); discrete ones train with vae.estimator
    latent: Literal["gaussian", "categorical", "bernoulli"] = "gaussian"
    categories: int = 10  # classes of each categorical latent variable
    # likelihood p(x|z): bernoulli (use data.binarize for binary data) | gaussian (learned shared variance, or
    # fixed std vae.decoder_std > 0) | categorical over vae.levels pixel levels (images)
    decoder: Literal["bernoulli", "gaussian", "categorical"] = "bernoulli"
    decoder_std: float = 0.0  # gaussian decoder: 0 learns one shared variance; > 0 fixes the std
    levels: int = 256  # categorical decoder: pixel levels (x in [0, 1] quantized to round(x * (levels - 1)))
    k: int = 1  # importance samples per datapoint in training: 1 is the ELBO, > 1 the IWAE bound (Gaussian)
    kl: Literal["analytic", "monte_carlo"] = "analytic"  # KL term of the ELBO (k = 1, Gaussian latents)
    kl_warmup_steps: int = 0  # KL weight rises linearly from 0 to 1 over these steps (k = 1); 0: off
    free_bits: float = 0.0  # nats per latent dimension below which KL is not penalized (per sample; k = 1)
    # discrete latents: reinforce (score function with vae.baseline) | enumerate (the exact gradient)
    estimator: Literal["reinforce", "enumerate"] = "reinforce"
    # score-function control variate: none | moving_average | learned (input-dependent network, NVIL) |
    # vimco (leave-one-out over vae.k >= 2 samples; trains the IW bound). moving_average keeps a per-rank
    # running mean (DDP broadcasts rank 0's, other strategies let ranks drift; rank 0's is checkpointed): still
    # unbiased, but not bit-identical across world sizes or resumes under FSDP/DeepSpeed; the others are.
    baseline: Literal["none", "moving_average", "learned", "vimco"] = "none"
    baseline_decay: float = 0.9  # moving_average baseline: weight of the old average
    # amortized: an encoder q(z|x) | per_datapoint: variational parameters per training sample (phi_i, sharded by
    # sample over ranks: needs data.split_mode=owner), optimized by SGD with the decoder (the lecture's
    # algorithm before amortization); held-out data gets its q optimized at test time (vae.test_steps)
    inference: Literal["amortized", "per_datapoint"] = "amortized"
    local_lr: float = 1e-2  # Adam learning rate of the per-datapoint parameters
    test_steps: int = 200  # per_datapoint: Adam steps of a held-out sample's q before it is scored
    eval_samples: int = 5000  # K of the importance-sampled test log-likelihood (`test_nll`)
    # decoded values (decoder calls x values per sample) per block of that estimate: its memory, at any image size;
    # the default is 100,000 calls of the 8x8 digits, about 1 GiB of activations with the shipped conv decoder
    eval_budget: int = 6_400_000
    prior_samples: int = 0  # K of the naive estimate with z from the prior (`test_nll_prior`); 0: off
    gap_steps: int = 0  # Adam steps of per-datapoint q at test time (`amortization_gap`); 0: off
    gap_lr: float = 1e-2  # their learning rate


@dataclass
class OptimConfig:
    name: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"  # rmsprop: the original WGAN's optimizer
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # max gradient norm per player; 0 disables clipping (the norm is still checked for NaN)
    lr_overrides: dict[str, float] = field(default_factory=dict)  # per-player learning rate, e.g. {discriminator: 4e-4}
    # learning-rate schedule over train.max_steps, a pure function of the step (nothing to checkpoint):
    # constant | linear (to final_lr_fraction * lr) | cosine (same end point); after warmup_steps of linear warm-up
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0
    final_lr_fraction: float = 0.0


@dataclass
class TrainConfig:
    max_steps: int = 1000  # generator (outer) steps
    seed: int = 0
    batch_size: int = 256  # per process
    grad_accum: int = 1  # micro-batches per optimizer step
    ema_decay: float = 0.0  # generator EMA; 0 disables
    # the EMA's half-life is at most ema_rampup x the steps taken (StyleGAN2-ADA's default 0.05); 0: ema_decay
    # from the first step
    ema_rampup: float = 0.05
    max_bad_steps: int = 20  # consecutive non-finite steps before the run stops
    inject_nan_steps: list[int] = field(default_factory=list)  # fault injection: NaN loss in these steps (one phase)
    inject_nan_phase: str = ""  # the phase whose first micro-step gets the NaN; "" = the recipe's first phase
    # torch.compile each network once (gendist.engine.compiled); phases that differentiate through a gradient
    # (R1, R2, WGAN-GP, path length), sampling and evaluation run eager
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    channels_last: bool = False  # conv weights and image batches in channels-last memory format


@dataclass
class DistConfig:
    strategy: Literal["auto", "single", "ddp", "fsdp", "deepspeed"] = "auto"  # auto follows the launcher
    zero_stage: int = 2  # DeepSpeed ZeRO stage 1|2|3
    timeout_s: int = 300  # collective timeout; a dead rank makes the others exit within this


@dataclass
class CheckpointConfig:
    every: int = 500  # steps between checkpoints; 0 saves only at the end
    keep: int = 3  # checkpoints kept; older ones are deleted after a successful save
    requeue: bool = True  # on SLURM, rank 0 requeues the job once after a preemption checkpoint
    # periodic saves copy the state to host memory at the step and write it in a background thread while
    # training goes on (the final, preemption and divergence saves are synchronous); DeepSpeed saves
    # synchronously whatever this says (it writes its engines' files itself)
    async_save: bool = False
    # keep the checkpoint of the best evaluation by this eval.json key (e.g. mmd2, kl_mode_histogram,
    # test_log_likelihood_iw64) in RUN/best, apart from retention; "" keeps none
    best_metric: str = ""
    best_mode: Literal["auto", "min", "max"] = "auto"  # auto: max for coverage/likelihood/precision/recall keys


@dataclass
class LogConfig:
    every: int = 50  # steps between metrics.jsonl lines
    sample_every: int = 500  # steps between sample grids; 0 only at the end
    wandb: bool = True  # W&B (offline unless WANDB_API_KEY is set)
    wandb_project: str = "gendist"
    progress: bool = True  # progress bar on rank 0
    data_keys: bool = False  # write the sample ids each rank consumed to RUN/data_keys/rank_N.jsonl (audits resume)
    # A discriminator that wins outright (GAN, BiGAN, CycleGAN losses with a floor at 0: its loss below
    # d_wins_loss in d_wins_logs metric lines in a row) is reported as it happens: a warning, a W&B alert and
    # summary entry; every metric line carries health/discriminator_wins (1 when this line's loss is below). 0: off
    d_wins_loss: float = 0.01
    d_wins_logs: int = 5


@dataclass
class EvalConfig:
    every: int = 0  # steps between in-training evaluations; 0 only at the end
    num_samples: int = 2500  # generated samples for sample-based metrics
    # feature space of the two-sample metrics: pixels, or classifier:DIR (`gendist classifier train`), whose
    # predictions also give class/mode histograms (modes_covered, kl_mode_histogram) and per-class grids
    features: str = "pixels"
    # metric groups: mmd (MMD²), c2st (classifier two-sample test), kid, fd (Fréchet distance), pr
    # (precision/recall), modes (mixture or classifier mode coverage); per-sample scores always
    metrics: list[str] = field(default_factory=lambda: ["mmd", "kid", "fd", "pr", "modes"])
    # also report each metric's noise floor: the same metric of real training samples (as many as
    # num_samples) against the same held-out data, as floor/<metric> (`gendist eval RUN --noise-floor`)
    noise_floor: bool = False


@dataclass
class RunConfig:
    run: RunSection = field(default_factory=RunSection)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    gan: GANConfig = field(default_factory=GANConfig)
    bigan: BiGANConfig = field(default_factory=BiGANConfig)
    cyclegan: CycleGANConfig = field(default_factory=CycleGANConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    resnet: ResNetConfig = field(default_factory=ResNetConfig)
    stylegan2: StyleGAN2Config = field(default_factory=StyleGAN2Config)
    recipe: dict[str, Any] = field(default_factory=dict)  # options of a user's recipe (its own Config dataclass)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    ckpt: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


DATA_LOCATIONS = ("source", "dir", "shards")  # where the training data comes from: exactly one is set
# Units (what one optimizer trains) and their networks, per recipe: what optim.lr_overrides may name (a network
# or a unit). tests/test_config.py checks this against each recipe's own `units`.
RECIPE_UNITS = {"gan": {"generator": ("generator",), "discriminator": ("discriminator",)},
                "vae": {"vae": ("vae",)},
                "bigan": {"generator": ("generator", "encoder"), "discriminator": ("discriminator",)},
                "cyclegan": {"generators": ("g_ab", "g_ba"), "discriminators": ("d_a", "d_b")}}
# Phases of each recipe (train.inject_nan_phase); the R1/R2 phases exist only with gan.r1_gamma/r2_gamma > 0.
RECIPE_PHASES = {"gan": ("discriminator", "discriminator_r1", "discriminator_r2", "generator", "generator_pl"), "vae": ("elbo",),
                 "bigan": ("discriminator", "generator"), "cyclegan": ("discriminators", "generators")}
# Keys that moved out of the flat `model` section: an old key is an error naming its new place.
MOVED_KEYS = {**{f"model.{key}": f"gan.{key}" for key in (
    "divergence", "alpha", "fgan_generator", "fgan_activation", "n_critic", "clip_value", "gp_weight", "r1_gamma",
    "r1_every", "unroll_steps", "unroll_lr", "pack")},
    "model.gan_loss": "gan.loss", "model.decoder": "vae.decoder", "model.iw_samples": "vae.eval_samples",
    "vae.iw_samples": "vae.eval_samples"}

MIN_EVAL_SAMPLES = 10  # precision/recall's k-nearest-neighbour radii (k = 3) and the unbiased MMD/KID need a few
POSITIVE_INTS = {"train.max_steps", "train.batch_size", "train.grad_accum", "model.latent_dim", "model.hidden",
                 "gan.n_critic", "gan.pl_every", "gan.ada_interval", "vae.eval_samples", "vae.eval_budget", "vae.k", "vae.categories", "gan.r1_every", "gan.pack", "log.every", "eval.num_samples", "ckpt.keep",
                 "data.shuffle_buffer", "dist.timeout_s", "train.max_bad_steps", "bigan.n_critic"}
NON_NEGATIVE_INTS = {"log.d_wins_logs", "gan.unroll_steps", "optim.warmup_steps", "ckpt.every", "log.sample_every", "eval.every",
                     "data.num_workers", "data.memory_cache_mb", "model.depth", "cyclegan.pool_size",
                     "vae.kl_warmup_steps", "vae.prior_samples", "vae.gap_steps"}


def lr_scale(optim: OptimConfig, step: int, max_steps: int) -> float:
    """Multiplier of every player's learning rate at `step` (0-based)."""
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - optim.warmup_steps) / max(1, max_steps - optim.warmup_steps))
    end = optim.final_lr_fraction
    if optim.schedule == "linear":
        return 1.0 - (1.0 - end) * progress
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return "one of " + "|".join(map(str, get_args(annotation)))
    return getattr(annotation, "__name__", str(annotation))


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check `value` against the field's type; ints are accepted for floats, nothing else is converted."""
    origin = get_origin(annotation)
    if annotation is Any:  # free-form (model.networks kwargs, a user recipe's section): checked where it is used
        return value
    if origin is Literal:
        if value not in get_args(annotation):
            raise UserError(f"config: {key} must be {_type_name(annotation)}, got {value!r}")
        return value
    if origin in (list, tuple):
        (item_type,) = get_args(annotation)[:1]
        if not isinstance(value, list):
            raise UserError(f"config: {key} must be a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    if origin is dict:
        _, value_type = get_args(annotation)
        if not isinstance(value, dict):
            raise UserError(f"config: {key} must be a mapping, got {value!r}")
        return {str(k): _coerce(f"{key}.{k}", v, value_type) for k, v in value.items()}
    if origin in (Union, types.UnionType):
        for option in get_args(annotation):
            try:
                return _coerce(key, value, option)
            except UserError:
                continue
        raise UserError(f"config: {key} has the wrong type: {value!r}")
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        try:  # YAML 1.1 reads "2e-4" (no dot) as a string: accept the notation users type
            return float(value)
        except ValueError:
            pass
    if annotation is type(None) and value is None:
        return None
    if annotation in (int, str, bool) and type(value) is annotation:
        return value
    raise UserError(f"config: {key} must be {_type_name(annotation)}, got {value!r} ({type(value).__name__})")


def _build(cls: type, values: dict, prefix: str) -> Any:
    if not isinstance(values, dict):
        raise UserError(f"config: {prefix.rstrip('.') or 'the file'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    moved = [key for key in unknown if prefix + key in MOVED_KEYS]
    if moved:
        old = prefix + moved[0]
        raise UserError(f"config: {old} moved to {MOVED_KEYS[old]}; write it as {MOVED_KEYS[old]} "
                        f"(in the file: a '{MOVED_KEYS[old].split('.')[0]}:' section)")
    if unknown:
        raise UserError(f"config: unknown key '{prefix}{unknown[0]}' (valid keys here: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in values.items():
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            kwargs[name] = _build(annotation, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(prefix + name, value, annotation)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`optim.lr=2e-4` -> (["optim", "lr"], 0.0002); values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise UserError(f"override '{text}' must look like key=value, e.g. train.max_steps=3000")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"override '{text}': empty key; use a dotted path like optim.lr=2e-4")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _set_dotted(tree: dict, path: list[str], value: Any, text: str) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"override '{text}': {part} is not a section")
        node = child
    node[path[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] = (), saved_run: bool = False) -> RunConfig:
    """Read a YAML config, apply dotted `key=value` overrides, validate, and return a RunConfig.
    `saved_run`: the resolved config.yaml of a run folder, possibly written by an older gendist: keys that
    have moved are read at their new place instead of refused (a user's own file is told to move them)."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file '{path}' not found; pass an existing YAML file such as configs/gan_ring.yaml")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise UserError(f"config file '{path}'{where}: invalid YAML ({getattr(error, 'problem', error)})") from None
        if not isinstance(tree, dict):
            raise UserError(f"config file '{path}' must hold a mapping of sections (run:, data:, model:, ...)")
    if saved_run:
        _migrate_moved_keys(tree)
    parsed = [(parse_override(text), text) for text in overrides]
    if any(len(keys) == 2 and keys[0] == "data" and keys[1] in DATA_LOCATIONS and value
           for (keys, value), _ in parsed):
        _drop_file_data_location(tree, keep_resize=any(keys[:2] == ["data", "resize"] for (keys, _), _ in parsed))
    for (keys, value), text in parsed:
        _set_dotted(tree, keys, value, text)
    config = _build(RunConfig, tree, "")
    validate(config)
    return config


def _migrate_moved_keys(tree: dict) -> None:
    for old, new in MOVED_KEYS.items():
        old_section, old_key = old.split(".")
        section = tree.get(old_section)
        if isinstance(section, dict) and old_key in section:
            value = section.pop(old_key)
            new_section, new_key = new.split(".")
            tree.setdefault(new_section, {})
            if isinstance(tree[new_section], dict):
                tree[new_section].setdefault(new_key, value)


def _drop_file_data_location(tree: dict, keep_resize: bool) -> None:
    """A data location given on the command line replaces the one the config file names (its source, dir or
    shards, and the test shards that go with them); two locations on the command line stay an error. The file's
    data.resize/crop say how its own source is prepared, so they go too, with a one-line note (rank 0): the new
    location's images train at their prepared size (a data.resize on the command line is kept, and validated)."""
    data = tree.get("data")
    if not isinstance(data, dict):
        return
    for key in DATA_LOCATIONS + ("test_shards", "source_b"):
        data.pop(key, None)
    if keep_resize:
        return
    resize = data.pop("resize", None)
    data.pop("crop", None)
    if resize and os.environ.get("RANK", "0") == "0":
        size = " ".join(map(str, resize)) if isinstance(resize, list) else str(resize)
        print(f"gendist: note: the data location on the command line replaces the config file's data.source and its "
              f"data.resize {resize}: the images train at the size they were prepared at (to train at that size: "
              f"`gendist data prepare --source ... --resize {size} --out DIR`)",
              file=sys.stderr, flush=True)


def _get(config: RunConfig, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def validate(config: RunConfig) -> None:
    """Range checks that types cannot express."""
    features = config.eval.features
    unknown = sorted(set(config.eval.metrics) - {"mmd", "c2st", "kid", "fd", "pr", "modes"})
    if unknown:
        raise UserError(f"config: eval.metrics has unknown {', '.join(unknown)}; choose from mmd, c2st, kid, fd, pr, modes")
    name, _, argument = features.partition(":")
    if features != "pixels" and not (name in ("classifier", "inception") and argument):
        raise UserError(f"config: eval.features must be pixels, classifier:DIR or inception:PATH, got {features!r}")
    if config.eval.metrics and config.eval.num_samples < MIN_EVAL_SAMPLES:
        raise UserError(f"config: eval.num_samples must be >= {MIN_EVAL_SAMPLES} (precision/recall needs more "
                        f"samples than its k = 3 neighbours), got {config.eval.num_samples}")
    if not 0 <= config.log.d_wins_loss < 1:
        raise UserError(f"config: log.d_wins_loss must be in [0, 1), got {config.log.d_wins_loss}")
    for key in POSITIVE_INTS:
        if _get(config, key) < 1:
            raise UserError(f"config: {key} must be >= 1, got {_get(config, key)}")
    for key in NON_NEGATIVE_INTS:
        if _get(config, key) < 0:
            raise UserError(f"config: {key} must be >= 0, got {_get(config, key)}")
    if not config.optim.lr > 0:
        raise UserError(f"config: optim.lr must be > 0, got {config.optim.lr}")
    if len(config.optim.betas) != 2 or not all(0 <= b < 1 for b in config.optim.betas):
        raise UserError(f"config: optim.betas must be two numbers in [0, 1), got {config.optim.betas}")
    if not 0 <= config.optim.final_lr_fraction <= 1:
        raise UserError(f"config: optim.final_lr_fraction must be in [0, 1], got {config.optim.final_lr_fraction}")
    if config.optim.grad_clip < 0:
        raise UserError(f"config: optim.grad_clip must be >= 0, got {config.optim.grad_clip}")
    if not 0 <= config.train.ema_decay < 1:
        raise UserError(f"config: train.ema_decay must be in [0, 1), got {config.train.ema_decay}")
    if not 0 <= config.train.ema_rampup <= 1:
        raise UserError(f"config: train.ema_rampup must be in [0, 1] (0 turns the ramp off), got "
                        f"{config.train.ema_rampup}")
    if not config.run.dir.strip():
        raise UserError("config: run.dir must name a folder, got ''; e.g. run.dir=runs/my_run")
    units, phases = recipe_names(config)
    names = [*units, *(network for networks in units.values() for network in networks if network not in units)]
    for name, lr in config.optim.lr_overrides.items():
        if name not in names:
            raise UserError(f"config: optim.lr_overrides.{name}: no network or unit '{name}' in model.recipe="
                            f"{config.model.recipe} (names: {', '.join(names)})")
        if not lr > 0:
            raise UserError(f"config: optim.lr_overrides.{name} must be > 0, got {lr}")
    if config.train.inject_nan_phase and phases is not None and config.train.inject_nan_phase not in phases:
        raise UserError(f"config: train.inject_nan_phase must be one of {', '.join(phases)} for model.recipe="
                        f"{config.model.recipe}, got '{config.train.inject_nan_phase}'")
    if any(step < 0 for step in config.train.inject_nan_steps):
        raise UserError(f"config: train.inject_nan_steps must be steps >= 0, got {config.train.inject_nan_steps}")
    if not config.log.wandb_project.strip():
        raise UserError("config: log.wandb_project must name a W&B project, got ''")
    if config.train.seed < 0:
        raise UserError(f"config: train.seed must be >= 0, got {config.train.seed}")
    if config.optim.weight_decay < 0:
        raise UserError(f"config: optim.weight_decay must be >= 0, got {config.optim.weight_decay}")
    if config.dist.zero_stage not in (1, 2, 3):
        raise UserError(f"config: dist.zero_stage must be 1, 2 or 3, got {config.dist.zero_stage}")
    validate_model(config)
    data = config.data
    given = [name for name in DATA_LOCATIONS if getattr(data, name)]
    if not given:
        raise UserError("config: no training data: set one of data.source, data.dir, data.shards")
    if len(given) > 1:
        raise UserError(f"config: set exactly one of data.source, data.dir, data.shards (got {', '.join(given)}); "
                        "keep one (a location given on the command line replaces the config file's)")
    if data.source:
        from gendist.data.sources import check_source_spec

        check_source_spec(data.source)
    if data.source_b:
        from gendist.data.sources import check_source_spec

        check_source_spec(data.source_b, "data.source_b")
        if not data.source:
            raise UserError("config: data.source_b needs data.source (domain A); for a prepared folder use "
                            "`gendist data prepare --source A --source-b B --out DIR` and data.dir=DIR")
    if config.model.recipe == "cyclegan" and data.shards:
        raise UserError("config: model.recipe=cyclegan needs two domains: data.source + data.source_b, or "
                        "data.dir prepared with `gendist data prepare --source A --source-b B`")
    if config.model.recipe == "cyclegan" and data.source and not data.source_b:
        raise UserError("config: model.recipe=cyclegan needs data.source_b (domain B) besides data.source")
    if data.resize:
        from gendist.data.sources import check_resize

        check_resize(data.resize, data.crop)
        if not data.source:
            raise UserError("config: data.resize applies when data.source is prepared; for data.dir/data.shards "
                            "prepare them with `gendist data prepare --resize H W`")
    if data.test_shards and not data.shards:
        raise UserError("config: data.test_shards needs data.shards (data.dir/data.source carry their own test split)")


BUILTIN_RECIPES = tuple(RECIPE_UNITS)
ARCH_NAMES = ("mlp", "conv", "resnet", "stylegan2", "gaussian")
NETWORK_ROLES = ("generator", "discriminator", "encoder", "decoder", "joint_discriminator", "translator")


def recipe_names(config: RunConfig) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...] | None]:
    """(units, phase names or None when the recipe does not list them) of model.recipe; a user's recipe is
    imported here, so a wrong name stops at start-up, and its `Config` section (if any) is checked."""
    if config.model.recipe in RECIPE_UNITS:
        if config.recipe:
            raise UserError(f"config: the recipe section holds a user recipe's options; model.recipe="
                            f"{config.model.recipe} has its own section ({config.model.recipe}:)")
        return RECIPE_UNITS[config.model.recipe], RECIPE_PHASES[config.model.recipe]
    from gendist.recipes import resolve_recipe  # imports the user's package (and torch)

    cls = resolve_recipe(config.model.recipe)
    options = getattr(cls, "Config", None)
    if options is not None:
        recipe_options(config, options)
    elif config.recipe:
        raise UserError(f"config: recipe.{next(iter(config.recipe))}: model.recipe={config.model.recipe} declares "
                        "no options (a Config dataclass); remove the recipe section")
    units = {unit: tuple(networks) for unit, networks in cls.units.items()}
    phases = getattr(cls, "phase_names", None)
    return units, None if phases is None else tuple(phases)


def recipe_options(config: RunConfig, options: type) -> Any:
    """A user recipe's `recipe:` section as its own dataclass, checked like every other section."""
    return _build(options, dict(config.recipe), "recipe.")


def validate_networks(config: RunConfig) -> None:
    model = config.model
    if model.arch not in ARCH_NAMES and ":" not in model.arch:
        raise UserError(f"config: model.arch must be one of {', '.join(ARCH_NAMES)} or package.module:Architecture, "
                        f"got {model.arch!r}")
    for key, value in model.networks.items():
        base = key[:-len("_kwargs")] if key.endswith("_kwargs") else key
        if key.endswith("_kwargs"):
            if not isinstance(value, dict):
                raise UserError(f"config: model.networks.{key} must be a mapping of keyword arguments, got {value!r}")
            if base not in model.networks:
                raise UserError(f"config: model.networks.{key} has no network: set model.networks.{base}=package.module:Class")
        elif not isinstance(value, str) or ":" not in value:
            raise UserError(f"config: model.networks.{key} must be package.module:Class, got {value!r}")
    if model.networks and model.recipe in RECIPE_UNITS:
        names = {n for networks in RECIPE_UNITS[model.recipe].values() for n in networks}
        for key in model.networks:
            base = key[:-len("_kwargs")] if key.endswith("_kwargs") else key
            if base not in NETWORK_ROLES and base not in names:
                raise UserError(f"config: model.networks.{base}: not a role ({', '.join(NETWORK_ROLES)}) or a network "
                                f"of model.recipe={model.recipe} ({', '.join(sorted(names))})")
    stylegan2 = config.stylegan2
    for key in ("max_channels", "w_dim", "mapping_layers", "mbstd_group"):
        if getattr(stylegan2, key) < 1:
            raise UserError(f"config: stylegan2.{key} must be >= 1, got {getattr(stylegan2, key)}")
    if not 0 <= stylegan2.style_mixing <= 1:
        raise UserError(f"config: stylegan2.style_mixing must be in [0, 1], got {stylegan2.style_mixing}")
    if config.resnet.attention < 0:
        raise UserError(f"config: resnet.attention must be >= 0 (a feature-map side; 0: none), got {config.resnet.attention}")


def validate_model(config: RunConfig) -> None:
    model, gan = config.model, config.gan
    validate_networks(config)
    for key in ("clip_value", "gp_weight", "r1_gamma", "r2_gamma", "unroll_lr", "pl_weight"):
        value = getattr(gan, key)
        if value < 0 or value != value:
            raise UserError(f"config: gan.{key} must be >= 0, got {value}")
    if not 0 <= config.cyclegan.downsample <= 4:
        raise UserError(f"config: cyclegan.downsample must be 0..4 (stride-2 convolutions of the image translators), "
                        f"got {config.cyclegan.downsample}")
    if config.cyclegan.generator_depth < -1:
        raise UserError(f"config: cyclegan.generator_depth must be >= -1 (-1: model.depth), got "
                        f"{config.cyclegan.generator_depth}")
    for key in ("cycle_weight", "identity_weight"):
        value = getattr(config.cyclegan, key)
        if value < 0 or value != value:
            raise UserError(f"config: cyclegan.{key} must be >= 0, got {value}")
    if not 0 < gan.pi < 1:  # checked for every divergence: a bad value never waits for the day it is used
        raise UserError(f"config: gan.pi must be in (0, 1), got {gan.pi}")
    from gendist.divergences import get_divergence

    try:  # a name from the table (and a valid alpha / pi for the rows that take one)
        get_divergence(gan.divergence, gan.alpha, gan.pi)
    except UserError as error:
        key = {"alpha": "gan.alpha", "jensen_shannon_weighted": "gan.pi"}.get(gan.divergence, "gan.divergence")
        raise UserError(f"config: {key}: {error}") from None
    if gan.loss == "wgan" and gan.clip_value == 0:
        raise UserError("config: gan.clip_value must be > 0 with gan.loss=wgan (or use wgan_gp)")
    if model.recipe == "gan" and config.train.batch_size % gan.pack:
        raise UserError(f"config: train.batch_size ({config.train.batch_size}) must be a multiple of gan.pack "
                        f"({gan.pack})")
    if gan.augment:
        from gendist.augment import parse_policy

        try:
            parse_policy(gan.augment)
        except ValueError as error:
            raise UserError(f"config: gan.augment: {error}") from None
        if gan.unroll_steps:
            raise UserError("config: gan.augment does not combine with gan.unroll_steps (the unrolled "
                            "discriminator steps see the raw batch); set one of them")
    if not 0 <= gan.ada_target < 1:
        raise UserError(f"config: gan.ada_target must be in [0, 1) (0: a fixed gan.augment_p), got {gan.ada_target}")
    if gan.ada_target and not gan.augment:
        raise UserError("config: gan.ada_target adapts the probability of gan.augment, which is empty: set "
                        "gan.augment=color,translation,cutout (or ada_target=0)")
    if not gan.ada_kimg > 0:
        raise UserError(f"config: gan.ada_kimg must be > 0, got {gan.ada_kimg}")
    if not (0 <= gan.augment_p <= 1 and (gan.augment_p > 0 or gan.ada_target > 0)):
        raise UserError(f"config: gan.augment_p must be in (0, 1] (0 only as ADA's start, with gan.ada_target > 0), "
                        f"got {gan.augment_p}")
    if model.conditional:
        validate_conditional(config)
    if gan.unroll_steps and gan.loss == "wgan_gp":
        raise UserError("config: gan.unroll_steps does not combine with gan.loss=wgan_gp "
                        "(unrolling through the gradient penalty); use nonsaturating, minimax, hinge, wgan or fgan")
    validate_vae(config)
    if len(model.gaussian_init) != 2 or not model.gaussian_init[1] > 0:
        raise UserError(f"config: model.gaussian_init must be [mean, std] with std > 0, got {model.gaussian_init}")
    if model.arch == "gaussian" and model.recipe != "gan":
        raise UserError(f"config: model.arch=gaussian is a GAN generator; use mlp or conv for model.recipe={model.recipe}")


def validate_conditional(config: RunConfig) -> None:
    model, gan = config.model, config.gan
    if model.recipe not in ("gan", "vae"):
        raise UserError(f"config: model.conditional=true is built for model.recipe gan and vae, not {model.recipe}; "
                        "set model.conditional=false")
    if model.arch == "gaussian":
        raise UserError("config: model.arch=gaussian has no class-conditional generator; use mlp, conv, resnet or "
                        "stylegan2 with model.conditional=true")
    if model.num_classes < 0:
        raise UserError(f"config: model.num_classes must be >= 0 (0: from the data), got {model.num_classes}")
    if model.recipe == "gan":
        if gan.pack != 1:
            raise UserError("config: model.conditional=true judges one (sample, class) at a time: set gan.pack=1")
        if gan.unroll_steps:
            raise UserError("config: model.conditional=true does not combine with gan.unroll_steps; set one of them")
        if not gan.acgan_weight >= 0:
            raise UserError(f"config: gan.acgan_weight must be >= 0, got {gan.acgan_weight}")
    if model.recipe == "vae" and config.vae.latent != "gaussian":
        raise UserError(f"config: model.conditional=true with model.recipe=vae needs vae.latent=gaussian, got "
                        f"{config.vae.latent}")


def validate_vae(config: RunConfig) -> None:
    vae = config.vae
    if vae.levels < 2:
        raise UserError(f"config: vae.levels must be >= 2, got {vae.levels}")
    if vae.categories < 2:
        raise UserError(f"config: vae.categories must be >= 2, got {vae.categories}")
    for key in ("decoder_std", "free_bits", "gap_lr", "local_lr"):
        value = getattr(vae, key)
        if value < 0 or value != value:
            raise UserError(f"config: vae.{key} must be >= 0, got {value}")
    if not 0 <= vae.baseline_decay < 1:
        raise UserError(f"config: vae.baseline_decay must be in [0, 1), got {vae.baseline_decay}")
    if vae.k > 1 and (vae.kl_warmup_steps or vae.free_bits or vae.kl == "monte_carlo"):
        raise UserError("config: vae.kl_warmup_steps, vae.free_bits and vae.kl=monte_carlo shape the k = 1 ELBO; "
                        f"with vae.k={vae.k} (IWAE) the KL is inside the importance weights: set vae.k=1 or drop them")
    if vae.baseline == "vimco" and vae.k < 2:
        raise UserError("config: vae.baseline=vimco leaves one of vae.k samples out: set vae.k >= 2")
    if vae.latent != "gaussian" and (vae.kl_warmup_steps or vae.free_bits):
        raise UserError("config: vae.kl_warmup_steps and vae.free_bits apply to Gaussian latents (vae.latent=gaussian)")
    if vae.latent == "gaussian" and vae.baseline != "none":
        raise UserError("config: vae.baseline is a control variate of the score-function estimator for discrete "
                        "latents; Gaussian latents are reparameterized (set vae.latent=categorical|bernoulli)")
    if vae.latent != "gaussian" and vae.estimator == "enumerate":
        count = (vae.categories if vae.latent == "categorical" else 2) ** config.model.latent_dim
        if count > 4096:
            raise UserError(f"config: vae.estimator=enumerate would sum over {count} latent configurations (at most "
                            "4096); lower model.latent_dim or use vae.estimator=reinforce")
    if vae.inference == "per_datapoint":
        if vae.latent != "gaussian":
            raise UserError("config: vae.inference=per_datapoint keeps Gaussian parameters per sample; set vae.latent=gaussian")
        if config.data.split_mode != "owner":
            raise UserError("config: vae.inference=per_datapoint needs data.split_mode=owner (each sample's parameters "
                            f"live on the one rank that reads it), got data.split_mode={config.data.split_mode}")
        if vae.gap_steps:
            raise UserError("config: vae.gap_steps measures an encoder's amortization gap; vae.inference=per_datapoint "
                            "has no encoder (set vae.gap_steps=0)")
        if config.precision == "fp16":
            raise UserError("config: vae.inference=per_datapoint does not combine with fp16 loss scaling; use bf16 or fp32")
    if vae.test_steps < 1:
        raise UserError(f"config: vae.test_steps must be >= 1, got {vae.test_steps}")
    if vae.latent != "gaussian" and vae.estimator == "enumerate" and (vae.baseline != "none" or vae.k > 1):
        raise UserError("config: vae.estimator=enumerate is the exact gradient: it draws no samples, so vae.baseline "
                        "and vae.k do not apply (set vae.baseline=none vae.k=1, or vae.estimator=reinforce)")
    if vae.latent != "gaussian" and vae.kl == "monte_carlo":
        raise UserError("config: vae.kl chooses the Gaussian KL term; discrete latents use log q - log p at the "
                        "sample (score function) or the exact sum (enumerate): set vae.kl=analytic")
    if vae.gap_steps and vae.latent != "gaussian":
        raise UserError("config: vae.gap_steps optimizes per-datapoint Gaussian posteriors; set vae.latent=gaussian")


def to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)


def dump_config(config: RunConfig, path: Path) -> None:
    """Write the fully resolved config (atomically: a crash never leaves half a file)."""
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    tmp.replace(path)
