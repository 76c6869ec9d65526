"""Load a trained run (config + newest good checkpoint) in one process, for sampling and evaluation."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


from gendist.checkpoint import ema_file, find_resumable, load_network, load_tensors, read_trainer_state
from gendist.config import RunConfig, load_config
from gendist.distributed import init_distributed
from gendist.engine.data_setup import DataSpec, resolve_data
from gendist.errors import UserError
from gendist.recipes import Nets, Recipe, build_recipe


@dataclass
class LoadedRun:
    config: RunConfig
    recipe: Recipe
    nets: Nets
    spec: DataSpec
    step: int


def load_run(run_dir: Path, checkpoint: str = "latest") -> LoadedRun:
    """`checkpoint`: latest (the newest good one) or best (RUN/best, kept by ckpt.best_metric)."""
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise UserError(f"'{run_dir}' is not a run folder (no config.yaml); pass the run.dir of a training run")
    config = load_config(config_path, saved_run=True)
    if checkpoint == "best":
        folder = run_dir / "best" / "checkpoint"
        if not folder.is_dir():
            raise UserError(f"'{run_dir}' has no best checkpoint (RUN/best); train with ckpt.best_metric=KEY")
    else:
        folder = find_resumable(run_dir / "checkpoints")
    if folder is None:
        raise UserError(f"'{run_dir}' has no usable checkpoint yet; train longer or check {run_dir}/checkpoints")
    dist_info = init_distributed(config.dist.timeout_s)
    spec = resolve_data(config, dist_info)
    recipe = build_recipe(config, spec.info)
    networks = recipe.build_networks()
    for name, module in networks.items():
        ema_path = folder / ema_file(name)
        try:
            module.load_state_dict(load_network(folder, name))
            if ema_path.is_file():  # sample from the EMA weights, as training's own evaluation does
                module.load_state_dict(load_tensors(ema_path), strict=False)
        except RuntimeError as error:  # torch lists every missing/unexpected key over many lines
            first = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
            raise UserError(f"checkpoint {folder}: network '{name}' does not match the architecture this version "
                            f"of gendist builds from {config_path} ({first}); evaluate it with the gendist "
                            "version that trained it") from None
        module.to(dist_info.device).eval()
    return LoadedRun(config, recipe, Nets(networks), spec, int(read_trainer_state(folder)["step"]))
