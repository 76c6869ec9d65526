"""Run outputs on rank 0: metrics.jsonl, W&B (offline unless WANDB_API_KEY is set), sample grids."""
from __future__ import annotations

import json
import math
import os
import secrets
import sys
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from gendist.config import RunConfig, to_dict
from gendist.data.info import DataInfo


def truncate_jsonl(path: Path, after_step: int) -> None:
    """Drop lines logged after `after_step` (by a run that died before its next checkpoint); they are
    re-logged by the resumed run, so the file holds each step once. A torn last line is dropped too."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and _step_of(line) <= after_step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except ValueError:
        return 1 << 62  # a torn last line from a kill: drop it


class Tracker:
    """Writes metrics on the main process only; other ranks get a tracker that does nothing."""

    def __init__(self, config: RunConfig, run_dir: Path, enabled: bool, wandb_id: str | None, resume_step: int):
        self.enabled = enabled
        self.run_dir = run_dir
        self.metrics_path = run_dir / "metrics.jsonl"
        self.wandb_run = None
        self.wandb_id = wandb_id
        self.wandb_mode = "disabled"
        if not enabled:
            return
        truncate_jsonl(self.metrics_path, resume_step)
        self.metrics_file = open(self.metrics_path, "a", buffering=1)
        if config.log.wandb:
            self._start_wandb(config, wandb_id)

    def _start_wandb(self, config: RunConfig, wandb_id: str | None) -> None:
        import wandb

        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self.wandb_mode = mode
        # Our own id (kept in checkpoints) so a resumed run appends to the same W&B run.
        self.wandb_id = wandb_id or secrets.token_hex(4)
        self.wandb_run = wandb.init(project=config.log.wandb_project, name=config.run.name or self.run_dir.name,
                                    id=self.wandb_id, resume="allow", dir=str(self.run_dir), mode=mode,
                                    config=to_dict(config), settings=wandb.Settings(console="off", silent=True))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: (v if isinstance(v, (int, str)) or math.isfinite(v) else str(v)) for k, v in metrics.items()}
        self.metrics_file.write(json.dumps({"step": step, **clean}) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)

    def log_image(self, step: int, key: str, path: Path) -> None:
        if self.enabled and self.wandb_run is not None:
            import wandb

            self.wandb_run.log({key: wandb.Image(str(path))}, step=step)

    def log_histograms(self, step: int, values: dict[str, np.ndarray]) -> None:
        if self.enabled and self.wandb_run is not None:
            import wandb

            self.wandb_run.log({key: wandb.Histogram(np.asarray(v).reshape(-1)) for key, v in values.items()}, step=step)

    def alert(self, title: str, text: str) -> None:
        """A W&B alert (email/Slack where the user set them up). Offline runs have none: the metrics and the
        summary carry the event instead."""
        if self.enabled and self.wandb_run is not None and self.wandb_mode != "offline":
            import wandb

            try:
                self.wandb_run.alert(title=title, text=text, level=wandb.AlertLevel.WARN)
            except Exception as error:  # noqa: BLE001 - an alert that fails must not stop training
                warn(f"W&B alert not sent ({type(error).__name__}: {error})")

    def summary(self, metrics: dict[str, float]) -> None:
        if self.enabled and self.wandb_run is not None:
            self.wandb_run.summary.update(metrics)

    def finish(self) -> None:
        if not self.enabled:
            return
        self.metrics_file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def save_samples(samples: torch.Tensor, info: DataInfo, path: Path, reference: np.ndarray | None = None,
                 columns: int = 0) -> Path:
    """A PNG of samples: a histogram for 1-D points, a scatter plot of the first two coordinates for points
    (modes marked), an image grid for images (`columns` per row; 0: a square grid)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = samples.detach().float().cpu()
    if info.kind == "points" and data[0].numel() == 1:
        _histogram(data.reshape(-1).numpy(), path, reference)
    elif info.kind == "points":
        points = data.reshape(data.shape[0], -1)[:, :2].numpy()
        _scatter(points, info, path, None if reference is None else reference.reshape(len(reference), -1)[:, :2])
    else:
        _image_grid(data, path, columns)
    return path


def _histogram(values: np.ndarray, path: Path, reference: np.ndarray | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3), dpi=100)
    if reference is not None:
        axes.hist(reference.reshape(-1), bins=100, density=True, color="#bbbbbb", label="data")
    axes.hist(values, bins=100, density=True, histtype="step", color="#1f77b4", label="samples")
    axes.legend(loc="upper right", fontsize=6)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _scatter(points: np.ndarray, info: DataInfo, path: Path, reference: np.ndarray | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(4, 4), dpi=100)
    if reference is not None:
        axes.scatter(reference[:, 0], reference[:, 1], s=2, c="#bbbbbb", label="data")
    axes.scatter(points[:, 0], points[:, 1], s=2, c="#1f77b4", label="samples")
    if info.modes is not None:
        modes = np.asarray(info.modes)
        axes.scatter(modes[:, 0], modes[:, 1], s=30, marker="x", c="#d62728", label="modes")
    axes.set_aspect("equal")
    axes.legend(loc="upper right", fontsize=6)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _image_grid(images: torch.Tensor, path: Path, columns: int = 0) -> None:
    if images.dim() == 3:  # (N, H, W) -> (N, 1, H, W)
        images = images[:, None]
    count = images.shape[0]
    columns = columns or int(math.ceil(math.sqrt(count)))
    rows = int(math.ceil(count / columns))
    pad = torch.zeros(rows * columns - count, *images.shape[1:])
    _image_grid_rows(torch.cat([images, pad]), columns, path)


def warn(message: str) -> None:
    print(f"gendist: WARNING: {message}", file=sys.stderr, flush=True)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(metrics_path: Path, path: Path) -> Path | None:
    """Loss curves (every `*/loss` key) and evaluation curves (every `eval/*` key), one panel each, from
    metrics.jsonl."""
    series: dict[str, list[tuple[int, float]]] = {}
    if not metrics_path.is_file():
        return None
    for line in metrics_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        for key, value in record.items():
            if (key.endswith("/loss") or key.startswith("eval/")) and isinstance(value, (int, float)) \
                    and math.isfinite(value):
                series.setdefault(key, []).append((record["step"], float(value)))
    if not series:
        return None
    plt = _pyplot()
    keys = sorted(series, key=lambda k: (k.startswith("eval/"), k))
    columns = min(4, len(keys))
    rows = math.ceil(len(keys) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows), dpi=90, squeeze=False)
    for axis, key in zip(axes.flat, keys):
        steps, values = zip(*series[key])
        axis.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3)
        axis.set_title(key, fontsize=8)
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(keys):]:
        axis.axis("off")
    return _save_figure(figure, path)


def _save_figure(figure, path: Path) -> Path:
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    _pyplot().close(figure)
    return path


def plot_mode_histogram(counts: np.ndarray, path: Path) -> Path:
    """Samples per mode (class), modes sorted by count, with the uniform level: a collapsed generator shows
    a long empty tail."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 2.6), dpi=90)
    ordered = np.sort(counts)[::-1]
    axis.bar(np.arange(len(ordered)), ordered, width=1.0, color="#1f77b4")
    axis.axhline(counts.sum() / len(counts), color="#d62728", lw=1, label="uniform")
    axis.set_xlabel(f"mode (sorted; {np.count_nonzero(counts)} of {len(counts)} covered)", fontsize=8)
    axis.set_ylabel("samples", fontsize=8)
    axis.legend(fontsize=7)
    return _save_figure(figure, path)


def plot_score_histograms(scores: dict[str, np.ndarray], path: Path) -> Path:
    """Overlaid histograms, e.g. discriminator outputs on real and generated samples."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 3), dpi=90)
    for name, values in scores.items():
        axis.hist(np.asarray(values).reshape(-1), bins=50, histtype="step", label=name)
    axis.legend(fontsize=7)
    return _save_figure(figure, path)


def save_class_grid(samples: np.ndarray, labels: np.ndarray, num_classes: int, path: Path,
                    per_class: int = 8) -> Path:
    """Image samples arranged by predicted class: row c holds up to `per_class` samples the classifier calls
    c (empty cells stay grey): which classes a generator draws, and how well."""
    shape = samples.shape[1:]
    cells = np.full((num_classes, per_class, *shape), 0.5, np.float32)
    for label in range(num_classes):
        chosen = samples[labels == label][:per_class]
        cells[label, :len(chosen)] = chosen
    _image_grid_rows(torch.from_numpy(cells.reshape(num_classes * per_class, *shape)), per_class, path)
    return path


def _image_grid_rows(images: torch.Tensor, columns: int, path: Path) -> None:
    """(rows x columns, C, H, W) in [0, 1] -> one PNG, row-major, each cell in a 1-px grey frame."""
    rows = images.shape[0] // columns
    cells = torch.nn.functional.pad(images.clamp(0, 1), (1, 1, 1, 1), value=0.5)
    grid = rearrange(cells, "(r c) ch h w -> (r h) (c w) ch", r=rows, c=columns)
    pixels = (grid.numpy() * 255).round().astype(np.uint8)
    scale = max(1, 256 // max(pixels.shape[:2]))  # small images (8x8 digits) are enlarged to be seen
    from PIL import Image  # here, not at the top: it is off the path to the first training step

    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.resize((image.width * scale, image.height * scale), Image.NEAREST).save(path)
