"""The hand-written training loops gendist is measured against (benchmarks/step_overhead.py).

What a careful user writes without a framework: the same networks (built by the recipe, same seed), data held
in memory as one tensor and indexed at random, `torch.randn` noise, one Adam per trained unit, the frozen
player's `requires_grad` switched off (no wasted weight gradients), one `.item()` per logged value at log
steps only. Under 2 processes (torchrun / accelerate launch, gloo) every trained unit has its own
DistributedDataParallel wrapper, frozen players are called unwrapped, and a comm hook counts all-reduces.

    python benchmarks/handwritten.py --config gan_ring --steps 2000 [--set train.batch_size=512 ...]

Prints one JSON line: {"rate": steady-state steps/s between --warmup and --steps, "allreduce_per_step": ...}.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from gendist.config import load_config
from gendist.data.info import DataInfo
from gendist.data.sources import build_ring
from gendist.recipes import build_recipe

ROOT = Path(__file__).resolve().parents[1]


def load_data(source: str) -> tuple[torch.Tensor, DataInfo]:
    if source == "ring":
        return torch.from_numpy(build_ring(0).x).float(), DataInfo("points", (2,))
    if source.startswith("npz:"):  # uint8 images (N, C, H, W), as `gendist data prepare` reads them
        images = torch.from_numpy(np.load(source[4:])["x"]).float() / 255.0
        return images, DataInfo("images", tuple(images.shape[1:]))
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images / 16.0).float()  # (N, 8, 8) in [0, 1]
    return rearrange(images, "n h w -> n 1 h w"), DataInfo("images", (1, 8, 8))


def counting_hook(counter: Counter, key: str):
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    def hook(state, bucket):
        counter[key] += 1
        return default_hooks.allreduce_hook(state, bucket)

    return hook


class Loop:
    """Networks, optimizers, DDP wrappers and the per-recipe step."""

    def __init__(self, config, distributed: bool, fused: bool = False, device: str = "cpu", compile: bool = False):
        self.config = config
        self.device = torch.device(device)
        data, info = load_data(config.data.source)
        self.data = data.to(self.device)
        torch.manual_seed(config.train.seed)
        self.recipe = build_recipe(config, info)
        self.nets: dict[str, nn.Module] = {name: net.to(self.device) for name, net in self.recipe.build_networks().items()}
        if compile:  # what a user writes: torch.compile of each network, in place
            for net in self.nets.values():
                net.compile()
        optim = config.optim
        self.optimizers = {unit: torch.optim.Adam([p for n in members for p in self.nets[n].parameters()],
                                                  lr=optim.lr, betas=tuple(optim.betas), fused=fused)
                           for unit, members in self.recipe.units.items()}
        self.syncs: Counter = Counter()
        self.call = dict(self.nets)  # what the trained unit's forward goes through
        self.wrapped: dict[str, nn.Module] = {}
        if distributed:
            from torch.nn.parallel import DistributedDataParallel

            for unit, members in self.recipe.units.items():
                for name in members:  # one wrapper per network: every network here is its own unit's member
                    self.wrapped[name] = DistributedDataParallel(
                        self.nets[name], device_ids=[self.device.index] if self.device.type == "cuda" else None)
                    self.wrapped[name].register_comm_hook(None, counting_hook(self.syncs, unit))
        self.batch = config.train.batch_size
        self.generator = torch.Generator().manual_seed(config.train.seed + int(os.environ.get("RANK", 0)))

    def trained(self, unit: str) -> dict[str, nn.Module]:
        """Freeze every other unit; the trained unit's networks are called through their DDP wrappers."""
        for name, members in self.recipe.units.items():
            for member in members:
                self.nets[member].requires_grad_(name == unit)
        return {name: self.wrapped.get(name, net) if name in self.recipe.units[unit] else net
                for name, net in self.nets.items()}

    def update(self, unit: str, loss: torch.Tensor) -> None:
        optimizer = self.optimizers[unit]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def real(self) -> torch.Tensor:
        return self.data[torch.randint(len(self.data), (self.batch,), generator=self.generator).to(self.device)]

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=self.device)

    def step(self) -> dict[str, torch.Tensor]:
        recipe = self.config.model.recipe
        latent = self.config.model.latent_dim
        if recipe == "gan":
            nets = self.trained("discriminator")
            x = self.real()
            fake = nets["generator"](self.randn(self.batch, latent)).detach()
            d_loss = F.softplus(-nets["discriminator"](x)).mean() + F.softplus(nets["discriminator"](fake)).mean()
            self.update("discriminator", d_loss)
            nets = self.trained("generator")
            g_loss = F.softplus(-nets["discriminator"](nets["generator"](self.randn(self.batch, latent)))).mean()
            self.update("generator", g_loss)
            return {"d": d_loss.detach(), "g": g_loss.detach()}
        if recipe == "bigan":
            nets = self.trained("discriminator")
            x, z = self.real(), self.randn(self.batch, latent)
            fake, code = nets["generator"](z).detach(), nets["encoder"](x).detach()
            d_loss = F.softplus(-nets["discriminator"](x, code)).mean() + F.softplus(nets["discriminator"](fake, z)).mean()
            self.update("discriminator", d_loss)
            nets = self.trained("generator")
            z = self.randn(self.batch, latent)
            g_loss = F.softplus(nets["discriminator"](x, nets["encoder"](x))).mean() + \
                F.softplus(-nets["discriminator"](nets["generator"](z), z)).mean()
            self.update("generator", g_loss)
            return {"d": d_loss.detach(), "g": g_loss.detach()}
        # VAE: dynamically binarized digits, one reparameterized sample, the ELBO
        nets = self.trained("vae")
        x = torch.bernoulli(self.real().cpu(), generator=self.generator).to(self.device)
        loss = -nets["vae"](x, self.randn(1, self.batch, latent))["objective"].mean()
        self.update("vae", loss)
        return {"loss": loss.detach()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a shipped config's name (configs/NAME.yaml)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100, help="steps before the clock starts")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--fused", action="store_true", help="Adam(fused=True) instead of torch's default")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile every network")
    args = parser.parse_args()
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = "cpu"
    if args.device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if distributed:
        torch.distributed.init_process_group("nccl" if args.device == "cuda" else "gloo")
    loop = Loop(load_config(ROOT / "configs" / f"{args.config}.yaml", args.set), distributed, args.fused or None,
                device, args.compile)
    started = None
    for step in range(1, args.steps + 1):
        logs = loop.step()
        if step % args.log_every == 0:
            values = {key: value.item() for key, value in logs.items()}
            if not all(np.isfinite(list(values.values()))):
                raise SystemExit(f"non-finite loss at step {step}: {values}")
        if step == args.warmup:
            if args.device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
    if args.device == "cuda":
        torch.cuda.synchronize()
    rate = (args.steps - args.warmup) / (time.perf_counter() - started)
    if int(os.environ.get("RANK", "0")) == 0:
        steps = args.steps
        print(json.dumps({"rate": rate, "allreduce_per_step": {k: v / steps for k, v in loop.syncs.items()}}))
    if distributed:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
