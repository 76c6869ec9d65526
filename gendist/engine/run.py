"""Wiring of one training run: distributed set-up, data, recipe, strategy, resume, hooks, final evaluation."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import torch

from gendist.checkpoint import find_resumable, read_trainer_state
from gendist.config import RunConfig, dump_config
from gendist.errors import UserError
from gendist.distributed import barrier, broadcast_object, init_distributed, print0
from gendist.engine.data_setup import (SEED_OFFSET_B, DataSpec, build_train_loader, check_batch_size, iterate_test,
                                      iterate_in_order,
                                      resolve_data)
from gendist.engine.compiled import check_options as check_compile_options, setup_channels_last, setup_compile
from gendist.engine.strategies import build_strategy
from gendist.engine.units import build_units, check_gradient_coverage, prepare_network_state, probe_batch
from gendist.engine.health import DiscriminatorWatch, LossJumpWatch
from gendist.engine.trainer import LAUNCHER_DIED, Trainer, TrainingDiverged
from gendist.fsutil import write_bytes_atomic
from gendist.recipes import build_recipe
from gendist.tracking import Tracker, save_samples

EXIT_DIVERGED = 3
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpoint written, run again (or requeue) to resume
PREEMPTION_SIGNALS = [signal.SIGTERM, signal.SIGUSR1]
SAMPLE_GRID_SIZE = {"points": 2500, "images": 64}


class Hooks:
    """What happens at step boundaries: metrics, checkpoints, sample grids, evaluation."""

    def __init__(self, config: RunConfig, tracker: Tracker, spec: DataSpec, run_dir: Path,
                 health: dict | None = None):
        self.config, self.tracker, self.spec, self.run_dir = config, tracker, spec, run_dir
        self.last_saved_step = -1
        self.started = time.perf_counter()
        self.watches = {"discriminator_wins": DiscriminatorWatch(config, tracker),
                        "loss_jump": LossJumpWatch(config, tracker, math.prod(spec.info.sample_shape))}
        for name, state in (health or {}).items():  # a resumed run's watches go on where they stopped
            if name in self.watches:
                self.watches[name].load_state_dict(state)

    def after_step(self, trainer: Trainer, progress) -> None:
        step, config = trainer.step, self.config
        if step % config.log.every == 0 or step == config.train.max_steps:
            metrics = trainer.pop_metrics()
            metrics["time/elapsed_s"] = time.perf_counter() - self.started
            if trainer.dist.is_main:
                for watch in self.watches.values():
                    watch.update(step, metrics)
            self.tracker.log(step, metrics)
            progress.set_postfix({k.split("/")[0][:4] + "/" + k.split("/")[-1]: f"{v:.3f}"
                                  for k, v in metrics.items() if k.endswith("/loss")}, refresh=False)
        if config.ckpt.every and step % config.ckpt.every == 0:
            self.save(trainer, asynchronous=config.ckpt.async_save)
        final = step == config.train.max_steps  # the end of the run samples and evaluates this step, once
        if config.log.sample_every and step % config.log.sample_every == 0 and not final:
            self.samples(trainer)
        if config.eval.every and step % config.eval.every == 0 and not final:
            self.evaluate(trainer)

    def on_stop(self, trainer: Trainer) -> None:
        reason = "launcher died" if trainer.stop_signal == LAUNCHER_DIED else f"signal {trainer.stop_signal}"
        print0(f"gendist: stop requested ({reason}): checkpointing step {trainer.step}")
        self.save(trainer)
        if trainer.dist.is_main and self.config.ckpt.requeue:
            requeue_slurm_job_once()

    def save(self, trainer: Trainer, asynchronous: bool = False) -> None:
        """Checkpoint this step (once); a synchronous save also waits for an asynchronous one in flight."""
        if self.last_saved_step != trainer.step:
            health = {name: watch.state_dict() for name, watch in self.watches.items()}  # rank 0's are the ones used
            trainer.save(self.run_dir / "checkpoints", {"wandb_id": self.tracker.wandb_id, "health": health},
                         asynchronous)
            self.last_saved_step = trainer.step
        if not asynchronous:
            trainer.wait_for_save()

    def samples(self, trainer: Trainer) -> None:
        """Sample grids: every rank draws the same samples (a forward through sharded units is a
        collective), rank 0 saves them."""
        info, recipe, folder = self.spec.info, trainer.recipe, self.run_dir / "samples"
        with trainer.sampling() as nets:
            if getattr(recipe, "input_grid", "") != "translations":  # CycleGAN has no unconditional sampler
                count, columns = SAMPLE_GRID_SIZE.get(info.kind, 64), None
                classes = getattr(recipe, "num_classes", 0)
                if classes and info.kind == "images" and classes <= 20:  # one column per class
                    count, columns = classes * max(1, 64 // classes), classes
                samples = recipe.sample(nets, count, torch.Generator().manual_seed(self.config.train.seed))
                if trainer.dist.is_main:
                    reference = None  # points are drawn over held-out data (grey), so coverage shows at a glance
                    if info.kind == "points":
                        held_out = next(iterate_test(self.spec, batch_size=2500, limit=2500), None)
                        reference = held_out[0].numpy() if held_out is not None else None
                    path = save_samples(samples.float().cpu(), info, folder / f"step_{trainer.step:08d}.png",
                                        reference, **({"columns": columns} if columns else {}))
                    self.tracker.log_image(trainer.step, "samples", path)
            if getattr(recipe, "input_grid", "") and info.kind == "images":
                self.input_grid(trainer, nets)
            traversal = recipe.traversal(nets) if hasattr(recipe, "traversal") and info.kind == "images" else None
            if traversal is not None and trainer.dist.is_main:
                path = save_samples(traversal.float().cpu(), info, folder / f"traversals_step_{trainer.step:08d}.png",
                                    columns=9)
                self.tracker.log_image(trainer.step, "traversals", path)

    def input_grid(self, trainer: Trainer, nets) -> None:
        """Reconstructions (VAE, BiGAN) or A -> B translations (CycleGAN) of held-out images: the grid's top
        half are the inputs, the bottom half what the model made of them (same order)."""
        recipe, info = trainer.recipe, self.spec.info
        first = next(iterate_test(self.spec, batch_size=32, limit=32), None)
        if first is None:  # no held-out images to show
            return
        inputs, y = first
        labels = {}
        if getattr(recipe, "num_classes", 0):  # a conditional model reconstructs at the inputs' labels
            labels["labels"] = y
        outputs = recipe.sample(nets, len(inputs), torch.Generator().manual_seed(self.config.train.seed),
                                inputs, **labels).float().cpu()
        if not trainer.dist.is_main:
            return
        info_out = info.domain_b if recipe.input_grid == "translations" else info
        kind = recipe.input_grid
        folder = self.run_dir / "samples"
        if outputs.shape[1:] == inputs.shape[1:]:
            path = save_samples(torch.cat([inputs.float(), outputs.float()]), info_out,
                                folder / f"{kind}_step_{trainer.step:08d}.png")
        else:  # domains of different shapes: inputs and outputs side by side as two files
            save_samples(inputs, info, folder / f"{kind}_step_{trainer.step:08d}_inputs.png")
            path = save_samples(outputs, info_out, folder / f"{kind}_step_{trainer.step:08d}.png")
        self.tracker.log_image(trainer.step, kind, path)

    def evaluate(self, trainer: Trainer) -> dict[str, float]:
        """Evaluation shared by all ranks (gendist.evaluation); rank 0 logs, writes eval.json and the
        pictures (curves, mode histogram, per-class grid, discriminator outputs); the best checkpoint by
        ckpt.best_metric is kept in RUN/best."""
        config, recipe, step = self.config, trainer.recipe, trainer.step
        artifacts: dict = {}
        diagnostics: dict = {}
        with trainer.sampling() as nets:
            metrics = evaluate_recipe(recipe, nets, self.spec, config.train.seed, config.eval.num_samples,
                                      config.eval.features, artifacts if trainer.dist.is_main else None,
                                      config.eval.metrics, config.eval.noise_floor)
            if hasattr(recipe, "diagnostics"):  # every rank: a forward through sharded units is a collective
                x, y = next(iterate_test(self.spec, batch_size=500, limit=500), (None, None))
                if x is not None:
                    diagnostics = {k: v.cpu().numpy() for k, v in recipe.diagnostics(
                        nets, x, torch.Generator().manual_seed(config.train.seed),
                        *((y,) if getattr(recipe, "num_classes", 0) else ())).items()}
        if trainer.dist.is_main:
            self.tracker.log(step, {f"eval/{k}": v for k, v in metrics.items()})
            self.tracker.summary({f"eval/{k}": v for k, v in metrics.items()})
            write_bytes_atomic(self.run_dir / "eval.json", json.dumps({"step": step, **metrics}, indent=1).encode())
            self.pictures(step, artifacts, diagnostics)
        if config.ckpt.best_metric:
            self.keep_best(trainer, metrics)
        barrier()
        return metrics

    def pictures(self, step: int, artifacts: dict, diagnostics: dict) -> None:
        from gendist.tracking import plot_curves, plot_mode_histogram, plot_score_histograms, save_class_grid

        plots = self.run_dir / "plots"
        curves = plot_curves(self.run_dir / "metrics.jsonl", plots / "curves.png")
        if curves is not None:
            self.tracker.log_image(step, "plots/curves", curves)
        if "mode_counts" in artifacts:
            counts = artifacts["mode_counts"]
            self.tracker.log_image(step, "plots/mode_histogram",
                                   plot_mode_histogram(counts, plots / f"modes_step_{step:08d}.png"))
            if len(counts) <= 20 and self.spec.info.kind == "images":
                path = save_class_grid(artifacts["samples"], artifacts["labels"], len(counts),
                                       self.run_dir / "samples" / f"classes_step_{step:08d}.png")
                self.tracker.log_image(step, "samples_by_class", path)
        if diagnostics:
            self.tracker.log_histograms(step, {f"discriminator/{k}": v for k, v in diagnostics.items()})
            self.tracker.log_image(step, "plots/discriminator_outputs", plot_score_histograms(
                diagnostics, plots / f"discriminator_step_{step:08d}.png"))

    def keep_best(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """If this evaluation beats RUN/best/best.json by ckpt.best_metric, checkpoint this step (if not done
        yet) and copy it to RUN/best (atomically: a copy, then a rename). Retention never touches RUN/best.
        Every rank calls it (saving is a collective); metrics are the same on every rank."""
        key = self.config.ckpt.best_metric
        if key not in metrics:
            print0(f"gendist: WARNING: ckpt.best_metric={key} is not among this run's evaluation keys "
                   f"({', '.join(sorted(metrics))}); no best checkpoint kept")
            return
        value = float(metrics[key])
        mode = self.config.ckpt.best_mode
        if mode == "auto":
            higher = ("modes_covered", "hq_fraction", "precision", "recall", "test_elbo", "test_log_likelihood",
                      "c2st_p_value", "mmd_p_value", "active_units", "test_ess")
            mode = "max" if key.startswith(higher) or key.endswith(higher) else "min"
        record = self.run_dir / "best" / "best.json"
        better = None
        if trainer.dist.is_main:  # decided on rank 0 (the folder may not be shared), then by every rank
            if not (self.run_dir / "best").exists() and (self.run_dir / ".best.old").exists():
                (self.run_dir / ".best.old").rename(self.run_dir / "best")  # killed between the two renames
            previous = json.loads(record.read_text()) if record.is_file() else None
            better = value == value and (previous is None or (
                value > previous["value"] if mode == "max" else value < previous["value"]))
        if not broadcast_object(better):
            return
        self.save(trainer)
        if trainer.dist.is_main:
            import shutil

            source = self.run_dir / "checkpoints" / f"step_{trainer.step:08d}"
            staging = self.run_dir / ".best.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(source, staging / "checkpoint")
            (staging / "best.json").write_text(json.dumps({"step": trainer.step, "metric": key, "mode": mode,
                                                           "value": value}, indent=1))
            old = self.run_dir / ".best.old"
            shutil.rmtree(old, ignore_errors=True)
            if (self.run_dir / "best").exists():
                (self.run_dir / "best").rename(old)
            staging.rename(self.run_dir / "best")
            shutil.rmtree(old, ignore_errors=True)
            print0(f"gendist: best {key}={value:.6g} at step {trainer.step}: kept in {self.run_dir / 'best'}")


def evaluate_recipe(recipe, nets, spec: DataSpec, seed: int, num_samples: int, features: str = "pixels",
                    artifacts: dict | None = None, which: tuple[str, ...] | list[str] | None = None,
                    noise_floor: bool = False) -> dict[str, float]:
    """The recipe's evaluation on held-out data (both domains' for two-domain data), shared over ranks:
    every rank calls it and gets the same metrics."""
    from gendist.evaluation import CHUNK, DEFAULT_METRICS, MAX_TEST_SAMPLES, evaluate

    def held_out(domain: DataSpec):
        return lambda: iterate_test(domain, batch_size=CHUNK, limit=MAX_TEST_SAMPLES)

    return evaluate(recipe, nets, held_out(spec), seed, num_samples,
                    held_out(spec.domain_b) if spec.domain_b is not None else None, features, artifacts,
                    DEFAULT_METRICS if which is None else tuple(which),
                    (lambda: ((batch["x"], batch.get("y")) for batch in iterate_in_order(spec.train_urls, spec.manifest, CHUNK)))
                    if spec.domain_b is None else None, noise_floor)


def requeue_slurm_job_once() -> None:
    """Inside a SLURM job, put it back in the queue (once: SLURM_RESTART_COUNT counts earlier requeues).
    The requeued job runs the same command, which resumes from the checkpoint just written."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return
    if int(os.environ.get("SLURM_RESTART_COUNT", "0")) >= 1:
        print0(f"gendist: job {job} was already requeued once; not requeueing again")
        return
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    status = "requeued" if result.returncode == 0 else f"could not be requeued ({result.stderr.strip()})"
    print0(f"gendist: SLURM job {job} {status}")


def check_binarize(config: RunConfig, spec: DataSpec) -> None:
    """data.binarize draws pixels with P(1) = x: the data must be images in [0, 1]."""
    if config.data.binarize != "none" and spec.info.kind != "images":
        raise UserError(f"config: data.binarize={config.data.binarize} binarizes images in [0, 1]; this data is "
                        f"{spec.info.kind}: set data.binarize=none")


def build_trainer(config: RunConfig) -> tuple[Trainer, DataSpec]:
    dist_info = init_distributed(config.dist.timeout_s)
    spec = resolve_data(config, dist_info)
    check_batch_size(config, spec, dist_info)
    check_binarize(config, spec)
    if config.eval.features != "pixels":  # a missing or mismatched classifier stops the run now, not at its end
        from gendist.features import build_featurizer

        build_featurizer(config.eval.features, spec.info.sample_shape, key="eval.features")
    torch.manual_seed(config.train.seed)  # identical initial weights on every rank
    recipe = build_recipe(config, spec.info)
    strategy = build_strategy(config, dist_info)
    check_compile_options(config, strategy.name, getattr(strategy, "stage", 0), spec.info.kind == "images")
    units = build_units(recipe.build_networks(), recipe.units)
    sharding = "zero3" if getattr(strategy, "stage", 0) == 3 else strategy.name
    prepare_network_state(units, sharding, dist_info.world_size, dist_info.device, config.model.sync_batchnorm, print0)
    phases = recipe.phases()
    domain_b = spec.info.domain_b
    probe = probe_batch(spec.info.sample_shape, config.train.batch_size, torch.device("cpu"),
                        domain_b.sample_shape if domain_b else None)
    if hasattr(recipe, "local_tables"):  # per-datapoint rows of the probe's samples, at their initial values
        probe.local = {name: torch.tensor(spec.init).repeat(probe.size, 1).requires_grad_(True)
                       for name, spec in recipe.local_tables().items()} or None
    check_gradient_coverage(units, phases, probe, recipe)
    channels_last = setup_channels_last(config, units)
    strategy.setup(units, phases)
    compile_watch = setup_compile(config, units, phases, print0)
    loader = build_train_loader(config, spec, dist_info)
    loader_b = build_train_loader(config, spec.domain_b, dist_info, SEED_OFFSET_B) if spec.domain_b else None
    return Trainer(config, recipe, strategy, loader, dist_info, Path(config.run.dir), loader_b,
                   compile_watch=compile_watch, channels_last=channels_last), spec


def train(config: RunConfig) -> int:
    """Train (resuming from the run folder's newest good checkpoint); returns the process exit code."""
    early: list[int] = []  # a preemption signal during start-up (imports, data, resume) is kept, not fatal
    for signum in PREEMPTION_SIGNALS:
        signal.signal(signum, lambda signum, frame: early.append(signum))
    dist_info = init_distributed(config.dist.timeout_s)
    run_dir = Path(config.run.dir)
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(config, run_dir / "config.yaml")
    barrier()
    trainer, spec = build_trainer(config)
    folder = broadcast_object(find_resumable(run_dir / "checkpoints") if dist_info.is_main else None)
    wandb_id, health = None, None
    if folder is not None:
        state = read_trainer_state(Path(folder))
        try:
            trainer.load(Path(folder), state)
        except RuntimeError as error:  # torch lists every mismatched key over many lines
            if "state_dict" not in str(error):
                raise
            first = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error))
            raise UserError(f"run.dir {run_dir} holds a checkpoint of other networks than this config builds "
                            f"({first}); resume with the config it was trained with, or use a new run.dir") from None
        wandb_id, health = state.get("wandb_id"), state.get("health")
        print0(f"gendist: resumed from {folder} (step {trainer.step})")
    tracker = Tracker(config, run_dir, dist_info.is_main, wandb_id, trainer.step)
    if config.log.data_keys:
        trainer.open_data_keys()
    hooks = Hooks(config, tracker, spec, run_dir, health)
    trainer.install_signal_handlers(PREEMPTION_SIGNALS)
    if early:  # honoured at the first step boundary, like any other stop request
        trainer.stop_signal = early[0]
    print0(f"gendist: training {config.model.recipe} with strategy {trainer.strategy.name} on "
           f"{dist_info.world_size} process(es), steps {trainer.step}..{config.train.max_steps}, run dir {run_dir}")
    try:
        outcome = trainer.fit(hooks)
    except TrainingDiverged as error:
        hooks.save(trainer)  # skipped steps never changed the weights: this is the last good state
        print0(f"gendist: error: {error}")
        tracker.finish()
        return EXIT_DIVERGED
    except Exception:  # e.g. a shard gone bad mid-run: close the W&B/metrics files before the one-line error
        tracker.finish()
        raise
    if outcome == "stopped":
        tracker.finish()
        return EXIT_PREEMPTED
    hooks.save(trainer)
    hooks.samples(trainer)
    metrics = hooks.evaluate(trainer)
    tracker.finish()
    if dist_info.is_main:
        print0("gendist: done. " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        print0(f"gendist: samples in {run_dir / 'samples'}, metrics in {run_dir / 'metrics.jsonl'}, "
               f"evaluation in {run_dir / 'eval.json'}, checkpoints in {run_dir / 'checkpoints'}")
    return 0
