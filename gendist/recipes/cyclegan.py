"""CycleGAN (Zhu, Park, Isola & Efros 2017): unpaired translation between domains A and B.

Networks: g_ab: A -> B, g_ba: B -> A (one unit, one optimizer over both, as in the reference code),
d_a, d_b (the other unit). The generators minimize
    adversarial(d_b(g_ab(a))) + adversarial(d_a(g_ba(b)))
    + cycle_weight * (|g_ba(g_ab(a)) - a|_1 + |g_ab(g_ba(b)) - b|_1)
    + cycle_weight * identity_weight * (|g_ab(b) - b|_1 + |g_ba(a) - a|_1)
with the least-squares adversarial loss (the paper's) or the standard non-saturating one; each
discriminator separates its domain's real images from translations, drawn half the time from a history
pool of earlier translations (Shrivastava et al. 2017) kept per rank and saved in each rank's checkpoint.
No network uses batch statistics, so per-sample losses do not depend on how a batch is split over ranks.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from gendist.config import RunConfig
from gendist.data.info import DataInfo
from gendist.distributed import print0
from gendist.errors import UserError
from gendist.nets.registry import NetworkBuilder
from gendist.nets.translator import ImageTranslator
from gendist.recipes.base import Batch, Nets, Phase
from gendist.recipes.gan import bce_discriminator


def dihedral_transforms(shape_in: tuple[int, ...], shape_out: tuple[int, ...]) -> list[tuple[int, bool]]:
    """(quarter turns, flip first) of the 8 symmetries of the image grid that map shape_in to shape_out."""
    channels, height, width = shape_in
    turned = (channels, width, height)
    return [(turns, flip) for flip in (False, True) for turns in range(4)
            if (shape_in if turns % 2 == 0 else turned) == tuple(shape_out)]


def apply_dihedral(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """x (B, C, H, W) flipped left-right (if `flip`), then turned by `turns` quarter turns."""
    return torch.rot90(x.flip(-1) if flip else x, turns, dims=(-2, -1))


class DihedralAlign(nn.Module):
    """A learned global mixture sum_k softmax(logits)_k T_k(x) over the turns/flips T_k of the image grid that
    give the output shape; all weights start equal. The weight of T_k moves by how much T_k(x) as a whole helps
    the loss, not by an infinitesimal deformation, so a quarter turn is reachable by gradient descent.
    The logits learn at `LR_MULTIPLIER` times their network's rate (their own parameter group), so the choice
    settles before the correction network has learned to redraw the blend of candidates."""

    LR_MULTIPLIER = 10.0

    def __init__(self, shape_in: tuple[int, ...], shape_out: tuple[int, ...]):
        super().__init__()
        if len(shape_in) != 3 or len(shape_out) != 3:
            raise UserError("cyclegan.align=dihedral turns and flips images; these domains are not images — set "
                            "cyclegan.align=none")
        self.transforms = dihedral_transforms(shape_in, shape_out)
        if not self.transforms:
            raise UserError(f"cyclegan.align=dihedral needs domain B's images to be domain A's grid turned or "
                            f"flipped (A {tuple(shape_in)}, B {tuple(shape_out)}); set cyclegan.align=none")
        self.logits = nn.Parameter(torch.zeros(len(self.transforms)))

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits.float(), 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        candidates = torch.stack([apply_dihedral(x, turns, flip) for turns, flip in self.transforms])  # (K, B, ...)
        return torch.einsum("k,k...->...", self.weights().to(x.dtype), candidates)


class Translator(nn.Module):
    """x in domain A -> x in domain B: the architecture's translator network (`net`, logits) squashed into [0, 1]
    for images (the sum is taken in logit space).

    align=True (cyclegan.align=dihedral): a `DihedralAlign` first, then the network as a correction added in
    logit space whose output starts at exactly zero, so training starts from the alignment's mixture itself."""

    def __init__(self, net: nn.Module, images: bool, align: DihedralAlign | None = None):
        super().__init__()
        self.align = align
        self.net = net
        self.images = images

    def forward(self, x: torch.Tensor, return_aligned: bool = False):
        """The translation; with `return_aligned` (align=True only) also the aligned input it corrects."""
        if self.align is not None:
            aligned = self.align(x)
            # (aligned inputs are images: DihedralAlign refuses anything else.) In float32: under bf16 autocast
            # 1 - 1e-3 rounds to 1 and its logit is inf
            base = torch.logit(aligned.float(), eps=1e-3)
            out = torch.sigmoid(base + self.net(aligned))
            return (out, aligned) if return_aligned else out
        if return_aligned:
            raise ValueError("return_aligned needs cyclegan.align=dihedral")
        out = self.net(x)
        return torch.sigmoid(out) if self.images else out


class HistoryPool:
    """Up to `size` earlier translations. `query` returns, per sample, the new one (pool not yet full, or a
    coin says so) or a stored one that the new one replaces. The coin and slot are functions of uniforms the
    caller draws from the step's deterministic noise, so a resumed run makes the same choices."""

    def __init__(self, size: int):
        self.size = size
        self.images: torch.Tensor | None = None  # (size, ...)
        self.count = 0

    @torch.no_grad()
    def query(self, fake: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        """fake (B, ...), uniforms (B, 2) in [0, 1) -> (B, ...)."""
        if self.size == 0:
            return fake
        if self.images is None:
            self.images = torch.zeros(self.size, *fake.shape[1:], dtype=fake.dtype, device=fake.device)
        out = fake.clone()
        for row in range(fake.shape[0]):
            if self.count < self.size:
                self.images[self.count] = fake[row]
                self.count += 1
            elif uniforms[row, 0] < 0.5:
                slot = min(int(uniforms[row, 1] * self.size), self.size - 1)
                out[row] = self.images[slot]
                self.images[slot] = fake[row]
        return out

    def state_dict(self) -> dict:
        return {"count": self.count, "images": None if self.images is None else self.images.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state["count"])
        device = self.images.device if self.images is not None else "cpu"
        self.images = None if state["images"] is None else state["images"].to(device)


def least_squares_discriminator(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Mao et al. 2017 as in CycleGAN: 1/2 E(D(real) - 1)^2 + 1/2 E D(fake)^2."""
    return 0.5 * ((real.float() - 1).pow(2).mean() + fake.float().pow(2).mean())


ADVERSARIAL = {  # (discriminator loss on (real, fake) scores, generator loss on fake scores)
    "least_squares": (least_squares_discriminator, lambda fake: (fake.float() - 1).pow(2).mean()),
    "standard": (bce_discriminator, lambda fake: F.softplus(-fake).mean()),
}


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).abs().mean()


def generators_loss(nets: Nets, batch: Batch, step: int, *, adversarial: str, cycle_weight: float,
                    identity_weight: float, aligned: bool = False) -> dict[str, torch.Tensor]:
    a, b = batch.x, batch.x_b
    _, generator_objective = ADVERSARIAL[adversarial]
    if aligned:  # the identity term then compares each translation with its aligned input
        (fake_b, aligned_a), (fake_a, aligned_b) = nets.g_ab(a, return_aligned=True), nets.g_ba(b, return_aligned=True)
    else:
        fake_b, fake_a = nets.g_ab(a), nets.g_ba(b)
    adversarial_loss = generator_objective(nets.d_b(fake_b)) + generator_objective(nets.d_a(fake_a))
    cycle = l1(nets.g_ba(fake_b), a) + l1(nets.g_ab(fake_a), b)
    loss = adversarial_loss + cycle_weight * cycle
    logs = {"adversarial": adversarial_loss.detach(), "cycle_l1": cycle.detach()}
    if identity_weight and aligned:
        identity = l1(fake_b, aligned_a.detach()) + l1(fake_a, aligned_b.detach())
        loss = loss + cycle_weight * identity_weight * identity
        logs["identity_l1"] = identity.detach()
    elif identity_weight:
        identity = l1(nets.g_ab(b), b) + l1(nets.g_ba(a), a)
        loss = loss + cycle_weight * identity_weight * identity
        logs["identity_l1"] = identity.detach()
    return {"loss": loss, **logs}


def discriminators_loss(nets: Nets, batch: Batch, step: int, *, adversarial: str,
                        pools: dict[str, HistoryPool]) -> dict[str, torch.Tensor]:
    a, b = batch.x, batch.x_b
    discriminator_objective, _ = ADVERSARIAL[adversarial]
    uniforms = torch.special.ndtr(batch.randn(4))  # (B, 4): coin and slot for each pool
    fake_b = pools["b"].query(nets.g_ab(a).detach(), uniforms[:, :2])
    fake_a = pools["a"].query(nets.g_ba(b).detach(), uniforms[:, 2:])
    real_a, real_b = nets.d_a(a), nets.d_b(b)
    loss_a = discriminator_objective(real_a, nets.d_a(fake_a))
    loss_b = discriminator_objective(real_b, nets.d_b(fake_b))
    return {"loss": loss_a + loss_b, "d_a": loss_a.detach(), "d_b": loss_b.detach(),
            "real_score_a": real_a.detach().float().mean(), "real_score_b": real_b.detach().float().mean()}


class CycleGANRecipe:
    units = {"generators": ("g_ab", "g_ba"), "discriminators": ("d_a", "d_b")}
    input_grid = "translations"  # what `sample(..., inputs)` makes: saved next to the sample grids
    ema_networks = ("g_ab", "g_ba")

    def __init__(self, config: RunConfig, data_info: DataInfo):
        self.config = config
        self.info = data_info
        if data_info.domain_b is None:
            raise UserError("model.recipe=cyclegan needs two domains: set data.source_b, or prepare data with "
                            "`gendist data prepare --source A --source-b B`")
        self.info_b = data_info.domain_b
        if (config.cyclegan.identity_weight and config.cyclegan.align == "none"
                and data_info.sample_shape != self.info_b.sample_shape):
            raise UserError(f"cyclegan.identity_weight needs domains of one shape (A {data_info.sample_shape}, "
                            f"B {self.info_b.sample_shape}); set cyclegan.identity_weight=0")
        self.pools = {"a": HistoryPool(config.cyclegan.pool_size), "b": HistoryPool(config.cyclegan.pool_size)}

    def build_networks(self) -> dict[str, nn.Module]:
        """g_ab, g_ba: translators (after a learned turn/flip with cyclegan.align=dihedral); d_a, d_b: scores."""
        shape_a, shape_b = self.info.sample_shape, self.info_b.sample_shape
        images = self.info.kind == "images"
        build = NetworkBuilder(self.config, images)
        align = self.config.cyclegan.align == "dihedral"

        def translator(name: str, shape_in: tuple[int, ...], shape_out: tuple[int, ...]) -> Translator:
            aligner = DihedralAlign(shape_in, shape_out) if align else None
            net = build("translator", name, shape_out if align else shape_in, shape_out, zero_start=align)
            return Translator(net, images, aligner)

        nets = {"g_ab": translator("g_ab", shape_a, shape_b), "g_ba": translator("g_ba", shape_b, shape_a),
                "d_a": build("discriminator", "d_a", shape_a, (1,)), "d_b": build("discriminator", "d_b", shape_b, (1,))}
        translator = nets["g_ab"].net
        if isinstance(translator, ImageTranslator):  # the image architectures' translators
            sizes = " -> ".join(f"{h}x{w}" for h, w in translator.sizes)
            field = translator.receptive_field()
            print0(f"gendist: cyclegan translators work at {sizes} (cyclegan.downsample), {len(translator.blocks)} "
                   f"residual blocks; each translated pixel sees {field}x{field} input pixels")
        return nets

    def phases(self) -> list[Phase]:
        cyclegan = self.config.cyclegan
        # the reference order: the generators step, then the discriminators see this step's translations
        return [Phase("generators", "generators", partial(generators_loss, adversarial=cyclegan.loss,
                                                          cycle_weight=cyclegan.cycle_weight,
                                                          identity_weight=cyclegan.identity_weight,
                                                          aligned=cyclegan.align == "dihedral")),
                Phase("discriminators", "discriminators", partial(discriminators_loss, adversarial=cyclegan.loss,
                                                                  pools=self.pools))]

    def state_dict(self) -> dict:
        return {name: pool.state_dict() for name, pool in self.pools.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, pool in self.pools.items():
            pool.load_state_dict(state[name])

    def translate(self, nets: Nets, x: torch.Tensor, direction: str = "a2b") -> torch.Tensor:
        network = nets.g_ab if direction == "a2b" else nets.g_ba
        return network(x.to(next(network.parameters()).device))

    def sample(self, nets: Nets, count: int, generator: torch.Generator,
               inputs: torch.Tensor | None = None) -> torch.Tensor:
        """Translations A -> B of `inputs` (CycleGAN has no unconditional sampler)."""
        if inputs is None:
            raise UserError("CycleGAN translates images, it does not sample from noise: use "
                            "`gendist translate RUN_DIR --input PATH --direction a2b|b2a --out OUT`")
        return self.translate(nets, inputs, "a2b")
