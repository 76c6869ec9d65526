"""Per-datapoint state sharded by sample: a table with one row per training sample (a VAE's non-amortized
variational parameters phi_i), of which each rank holds only the rows of the samples it reads.

Not a unit: the rows are never all-reduced, all-gathered or partitioned by ZeRO; the loader's `owner` split
mode gives every sample a fixed rank (id % world_size), so a rank only ever touches its own rows. A loss reads
`batch.local[name]` (rows for batch.idx, a leaf tensor); after the micro-step's backward the trainer steps those
rows with a row-wise Adam that touches only them (like torch.optim.SparseAdam, with a per-row step count for
the bias correction, so a row's update does not depend on how often other rows were read). The gradient is
rescaled to that of the sample's own loss, so a row's trajectory does not depend on the batch size or on how
many ranks share the batch. Each rank checkpoints its rows with their sample ids; a run resumed with another
world size reads every rank's file and keeps the rows it now owns.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gendist.errors import UserError


@dataclass(frozen=True)
class TableSpec:
    """A recipe's per-datapoint table: `width` numbers per sample, initialized to `init` (width,)."""

    width: int
    init: tuple[float, ...]
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


class LocalTable:
    def __init__(self, name: str, spec: TableSpec, owned_ids: np.ndarray, device: torch.device):
        self.name, self.spec, self.device = name, spec, device
        self.ids = torch.as_tensor(np.sort(np.asarray(owned_ids, dtype=np.int64)))  # (N_local,) on the CPU
        rows = len(self.ids)
        self.table = torch.tensor(spec.init, dtype=torch.float32, device=device).repeat(rows, 1)  # (N_local, W)
        self.exp_avg = torch.zeros(rows, spec.width, device=device)
        self.exp_avg_sq = torch.zeros(rows, spec.width, device=device)
        self.steps = torch.zeros(rows, dtype=torch.int64, device=device)

    def index(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.detach().cpu().to(torch.int64)
        position = torch.searchsorted(self.ids, ids).clamp(max=max(len(self.ids) - 1, 0))
        if len(self.ids) == 0 or not torch.equal(self.ids[position], ids):
            missing = ids[(self.ids[position] != ids) if len(self.ids) else slice(None)][:1].tolist()
            raise UserError(f"local table '{self.name}': sample {missing} is not held by this rank; per-datapoint "
                            "state needs data.split_mode=owner (each sample read by one fixed rank)")
        return position.to(self.device)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The rows of `ids` as a fresh leaf tensor the loss may differentiate, (B, W)."""
        return self.table[self.index(ids)].clone().requires_grad_(True)

    @torch.no_grad()
    def step(self, ids: torch.Tensor, rows: torch.Tensor, scale: float) -> None:
        """Adam on the rows read, with `scale` * their gradient (the per-sample loss's gradient); rows whose
        gradient is not finite are left as they were."""
        if rows.grad is None:
            return
        index = self.index(ids)
        grad = rows.grad.float() * scale
        finite = torch.isfinite(grad).all(1)
        index, grad = index[finite], grad[finite]
        beta1, beta2 = self.spec.betas
        steps = self.steps[index] + 1
        self.steps[index] = steps
        exp_avg = self.exp_avg[index].mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq = self.exp_avg_sq[index].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        self.exp_avg[index], self.exp_avg_sq[index] = exp_avg, exp_avg_sq
        correction1 = (1 - beta1 ** steps.double()).float().unsqueeze(1)
        correction2 = (1 - beta2 ** steps.double()).float().unsqueeze(1)
        update = (exp_avg / correction1) / ((exp_avg_sq / correction2).sqrt() + self.spec.eps)
        self.table[index] = self.table[index] - self.spec.lr * update

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.table, self.exp_avg, self.exp_avg_sq, self.steps))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"ids": self.ids.clone(), "table": self.table.cpu(), "exp_avg": self.exp_avg.cpu(),
                "exp_avg_sq": self.exp_avg_sq.cpu(), "steps": self.steps.cpu()}

    def load_state_dicts(self, states: list[dict[str, torch.Tensor]]) -> None:
        """Rows this rank owns, from the states of every rank of the saved run (any world size)."""
        ids = torch.cat([state["ids"] for state in states])
        order = torch.argsort(ids)
        ids = ids[order]
        position = torch.searchsorted(ids, self.ids).clamp(max=max(len(ids) - 1, 0))
        if len(self.ids) and not torch.equal(ids[position], self.ids):
            raise UserError(f"checkpoint: local table '{self.name}' lacks rows for some samples of this data; "
                            "resume with the data the run was trained on")
        for key, target in (("table", self.table), ("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq),
                            ("steps", self.steps)):
            values = torch.cat([state[key] for state in states])[order]
            target.copy_(values[position].to(target.device))


def load_table_states(folder: Path, name: str) -> list[dict[str, torch.Tensor]]:
    """The table `name` of every rank file in a checkpoint folder (for re-sharding)."""
    from gendist.checkpoint import load_torch, rank_files

    states = []
    for path in rank_files(folder):
        tables = load_torch(path).get("tables", {})
        if name in tables:
            states.append(tables[name])
    return states
