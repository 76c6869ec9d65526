"""Differentiable augmentation of everything a GAN's discriminator sees: DiffAugment (Zhao et al. 2020, "Differentiable
Augmentation for Data-Efficient GAN Training"), with its three policies:

- `color`: brightness (+U(-0.5, 0.5)), saturation (x U(0, 2) around the channel mean; RGB only) and contrast
  (x U(0.5, 1.5) around the image mean), one draw of each per sample;
- `translation`: an integer shift of up to 1/8 of the height and width, with zero padding;
- `cutout`: a zeroed square of half the height and width at a random centre.

Each policy is applied to a sample with probability `p` (1: always, as DiffAugment; below 1, the per-sample
probability of ADA, Karras et al. 2020, here a fixed number). Every operation is differentiable in the images,
so the generator is trained through the augmentation of its samples, and the R1 penalty differentiates through
it as well.

The random parameters come from the batch's noise source (`Batch.randn`): a deterministic function of (seed,
step, phase, call, global row), so 2 ranks x b see exactly the augmentations of 1 rank x 2b and a resumed run
those of the uninterrupted one. Each call draws all COLUMNS uniforms per row whichever policies are on, so
turning one policy off leaves the draws of the others unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")
# uniforms per row: color (apply, brightness, saturation, contrast), translation (apply, dy, dx), cutout (apply,
# centre y, centre x)
COLUMNS = 10
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def parse_policy(text: str) -> tuple[str, ...]:
    """"color,translation,cutout" -> the policies, in the fixed order they are applied; ValueError names the
    unknown one."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in POLICIES]
    if unknown:
        raise ValueError(f"unknown augmentation '{unknown[0]}' (choose from {', '.join(POLICIES)})")
    return tuple(name for name in POLICIES if name in names)


def _rows(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *[1] * (like.dim() - 1)).to(like.dtype)


def _color(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    x = x + _rows(u[:, 0] - 0.5, x)
    if x.shape[1] == 3:  # saturation: colour images only
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * _rows(2 * u[:, 1], x) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _rows(u[:, 2] + 0.5, x) + mean


def _translation(x: torch.Tensor, u: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
    batch, _, height, width = x.shape
    reach_y, reach_x = int(height * TRANSLATION_RATIO + 0.5), int(width * TRANSLATION_RATIO + 0.5)
    if reach_y == reach_x == 0:
        return x
    # shifts uniform on {-reach, ..., reach}, 0 where the policy is off for the row
    dy = ((u[:, 0] * (2 * reach_y + 1)).floor().long().clamp(max=2 * reach_y) - reach_y) * on
    dx = ((u[:, 1] * (2 * reach_x + 1)).floor().long().clamp(max=2 * reach_x) - reach_x) * on
    padded = F.pad(x, [reach_x, reach_x, reach_y, reach_y])  # zeros around
    rows = torch.arange(height, device=x.device)[None, :] + reach_y - dy[:, None]  # (B, H) source rows
    cols = torch.arange(width, device=x.device)[None, :] + reach_x - dx[:, None]  # (B, W)
    index = torch.arange(batch, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, u: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
    _, _, height, width = x.shape
    size_y, size_x = int(height * CUTOUT_RATIO + 0.5), int(width * CUTOUT_RATIO + 0.5)
    # centres as DiffAugment draws them: 0 .. H + (1 - size % 2) - 1
    centre_y = (u[:, 0] * (height + (1 - size_y % 2))).floor().long()
    centre_x = (u[:, 1] * (width + (1 - size_x % 2))).floor().long()
    ys = torch.arange(height, device=x.device)[None, :]
    xs = torch.arange(width, device=x.device)[None, :]
    inside_y = (ys >= (centre_y - size_y // 2)[:, None]) & (ys < (centre_y - size_y // 2 + size_y)[:, None])
    inside_x = (xs >= (centre_x - size_x // 2)[:, None]) & (xs < (centre_x - size_x // 2 + size_x)[:, None])
    cut = inside_y[:, :, None] & inside_x[:, None, :] & on.bool()[:, None, None]  # (B, H, W)
    return x * (~cut)[:, None].to(x.dtype)


def diff_augment(x: torch.Tensor, uniform: torch.Tensor, policies: tuple[str, ...], p: float = 1.0) -> torch.Tensor:
    """Augment images x (B, C, H, W) with per-row uniforms `uniform` (B, COLUMNS) in [0, 1)."""
    if x.dim() != 4:
        raise ValueError(f"augmentation needs images (B, C, H, W), got a tensor of shape {tuple(x.shape)}")
    u = uniform.to(x.device, torch.float32)
    if "color" in policies:
        on = u[:, 0] < p
        x = torch.where(_rows(on, x).bool(), _color(x, u[:, 1:4]), x)
    if "translation" in policies:
        x = _translation(x, u[:, 5:7], (u[:, 4] < p).long())
    if "cutout" in policies:
        x = _cutout(x, u[:, 8:10], (u[:, 7] < p).long())
    return x


class Augmenter:
    """`augmenter(x, batch)`: x augmented with uniforms drawn from the batch's noise source (one call).

    With `target` > 0 the probability adapts as ADA's (Karras et al. 2020): the discriminator's losses report
    the signs of its scores on real data (`observe`), and every `interval` steps `adapt` moves p by
    sign(r_t - target) * (images in the interval) / (kimg * 1000), r_t = E[sign D(x)] over the interval's global
    batch (summed over ranks: the same number for 2 ranks x b as for 1 x 2b), clipped to [0, 1]. p starts at
    `p`. Its value and the interval's partial sums are checkpointed (`state_dict`).
    """

    def __init__(self, policies: tuple[str, ...], p: float = 1.0, target: float = 0.0, interval: int = 4,
                 kimg: float = 500.0):
        self.policies, self.p = policies, float(p)
        self.target, self.interval, self.kimg = target, interval, kimg
        self.signs: torch.Tensor | None = None  # this rank's sum of sign(D(x)) since the last adjustment (device)
        self.count = 0  # and how many scores it adds (known on the host: no copy to the device per step)
        self.last_rt: float | None = None

    @property
    def adaptive(self) -> bool:
        return self.target > 0

    def __call__(self, x: torch.Tensor, batch) -> torch.Tensor:
        if len(x) != batch.size:
            raise ValueError(f"augmentation draws one row of parameters per sample of the batch ({batch.size}), "
                             f"got {len(x)} images")
        uniform = torch.special.ndtr(batch.randn(COLUMNS).float())  # (B, COLUMNS) in (0, 1)
        return diff_augment(x, uniform, self.policies, self.p)

    def observe(self, real_scores: torch.Tensor) -> None:
        """Add the signs of D's scores on (augmented) real data; on the device, no host sync."""
        if not self.adaptive:
            return
        signs = real_scores.detach().float().sign().sum()
        self.signs = signs if self.signs is None else self.signs + signs
        self.count += real_scores.numel()

    def adapt(self, step: int, images_per_step: int, reduce_mean) -> None:
        """After step `step` (1-based count of finished steps): every `interval` steps, one collective over
        ranks (`reduce_mean`, every rank calls it) and p moves by ADA's rule."""
        if not self.adaptive or step % self.interval:
            return
        signs = self.signs if self.signs is not None else torch.zeros(())
        totals = reduce_mean({"signs": signs, "count": torch.tensor(float(self.count), device=signs.device)})
        self.signs, self.count = None, 0
        if totals["count"] == 0:
            return
        self.last_rt = totals["signs"] / totals["count"]
        step_size = images_per_step * self.interval / (self.kimg * 1000)
        direction = (self.last_rt > self.target) - (self.last_rt < self.target)
        self.p = min(1.0, max(0.0, self.p + direction * step_size))

    def state_dict(self) -> dict:
        return {"p": self.p, "signs": None if self.signs is None else float(self.signs), "count": self.count,
                "last_rt": self.last_rt}

    def load_state_dict(self, state: dict) -> None:
        """(0-dim CPU tensors: they add to the device's sums like numbers.)"""
        self.p = float(state["p"])
        self.signs = None if state.get("signs") is None else torch.tensor(state["signs"])
        self.count = int(state.get("count") or 0)
        self.last_rt = state.get("last_rt")  # logged until the next adjustment (absent from older checkpoints)


__all__ = ["Augmenter", "diff_augment", "parse_policy", "POLICIES", "COLUMNS"]
