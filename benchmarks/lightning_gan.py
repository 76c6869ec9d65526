"""PyTorch Lightning's manual-optimization GAN on gendist's networks (benchmarks/step_overhead.py).

The pattern of Lightning's own GAN example: `automatic_optimization = False`, `toggle_optimizer` around each
player's update, `manual_backward`, one Adam per player, losses logged with `self.log` every step (Lightning
reduces them at its logging interval). Data: the same in-memory tensor through a shuffling DataLoader. Under
2 processes Lightning wraps the whole module in one DDP and needs `find_unused_parameters=True` (the
generator step leaves the discriminator's parameters without gradients).

    python benchmarks/lightning_gan.py --config gan_ring --steps 2000 [--devices 2] [--set key=value ...]
"""
from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import torch
import torch.nn.functional as F

from handwritten import ROOT, load_data
from gendist.config import load_config
from gendist.recipes import build_recipe


def build_module(config, info):
    import lightning as L

    latent, optim = config.model.latent_dim, config.optim

    class GAN(L.LightningModule):
        def __init__(self, networks):
            super().__init__()
            self.automatic_optimization = False
            self.generator, self.discriminator = networks["generator"], networks["discriminator"]

        def training_step(self, batch, batch_idx):
            (x,) = batch
            opt_g, opt_d = self.optimizers()
            self.toggle_optimizer(opt_d)
            fake = self.generator(torch.randn(len(x), latent)).detach()
            d_loss = F.softplus(-self.discriminator(x)).mean() + F.softplus(self.discriminator(fake)).mean()
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            opt_d.step()
            self.untoggle_optimizer(opt_d)
            self.toggle_optimizer(opt_g)
            g_loss = F.softplus(-self.discriminator(self.generator(torch.randn(len(x), latent)))).mean()
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(g_loss)
            opt_g.step()
            self.untoggle_optimizer(opt_g)
            self.log_dict({"d_loss": d_loss, "g_loss": g_loss})

        def configure_optimizers(self):
            adam = dict(lr=optim.lr, betas=tuple(optim.betas))
            return torch.optim.Adam(self.generator.parameters(), **adam), \
                torch.optim.Adam(self.discriminator.parameters(), **adam)

    torch.manual_seed(config.train.seed)
    return GAN(build_recipe(config, info).build_networks())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--set", nargs="*", default=[])
    args = parser.parse_args()
    import lightning as L
    from lightning.pytorch.strategies import DDPStrategy

    warnings.filterwarnings("ignore")
    config = load_config(ROOT / "configs" / f"{args.config}.yaml", args.set)
    data, info = load_data(config.data.source)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=config.train.batch_size,
                                         shuffle=True, drop_last=True)
    marks: dict[int, float] = {}

    class Clock(L.Callback):
        """Wall-clock at the end of batch `--warmup` and batch `--steps` (then stop)."""

        def __init__(self):
            self.batches = 0

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.batches += 1
            if self.batches in (args.warmup, args.steps):
                marks[self.batches] = time.perf_counter()
            if self.batches == args.steps:
                trainer.should_stop = True

    strategy = DDPStrategy(find_unused_parameters=True, process_group_backend="gloo") if args.devices > 1 else "auto"
    trainer = L.Trainer(accelerator="cpu", devices=args.devices, strategy=strategy, max_epochs=-1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Clock()], num_sanity_val_steps=0)
    trainer.fit(build_module(config, info), loader)
    if trainer.global_rank == 0:
        rate = (args.steps - args.warmup) / (marks[args.steps] - marks[args.warmup])
        print(json.dumps({"rate": rate, "threads": torch.get_num_threads(), "pid": os.getpid()}))


if __name__ == "__main__":
    main()
