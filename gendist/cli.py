"""Command line: `gendist data prepare | train | sample | eval | encode | translate`. User errors exit 2 with
one line."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from gendist.errors import UserError


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and still exit code 2)."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="gendist", description="Distributed training of deep generative models.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    data = commands.add_parser("data", help="prepare data as webdataset shards")
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=OneLineParser)
    prepare = data_commands.add_parser("prepare", help="write DIR/train-*.tar, DIR/test-*.tar, DIR/manifest.json")
    prepare.add_argument("--source", required=True,
                         help="ring | grid | digits | fashion_mnist | emoji | ... | npz:PATH | folder:PATH")
    prepare.add_argument("--source-b", default="", help="second domain of unpaired data (CycleGAN), written to OUT/b")
    prepare.add_argument("--out", required=True, type=Path, help="output folder")
    prepare.add_argument("--shard-size", type=int, default=16384, help="samples per shard")
    prepare.add_argument("--test-fraction", type=float, default=0.1, help="held-out fraction")
    prepare.add_argument("--block-size", type=int, default=1024, help="small samples packed per tar member")
    prepare.add_argument("--seed", type=int, default=0)
    prepare.add_argument("--resize", type=int, nargs=2, metavar=("H", "W"), default=None,
                         help="resample every image to H x W (LANCZOS, antialiased)")
    prepare.add_argument("--crop", choices=["center", "none"], default="center",
                         help="with --resize: centre-crop to the new aspect ratio first (center) or stretch (none)")

    train = commands.add_parser("train", help="train (resumes automatically from RUN_DIR/checkpoints)")
    train.add_argument("config", type=Path, help="YAML config, e.g. configs/gan_ring.yaml")
    train.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.max_steps=3000")

    sample = commands.add_parser("sample", help="draw samples from a trained run")
    sample.add_argument("run_dir", type=Path)
    sample.add_argument("--n", type=int, default=64, help="number of samples")
    sample.add_argument("--out", type=Path, required=True, help="grid.png, or x.npy for the raw array")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--checkpoint", choices=["latest", "best"], default="latest")
    sample.add_argument("--class", dest="cls", type=int, default=None, metavar="K",
                        help="class-conditional runs: every sample of class K (default: every class equally, "
                             "one grid column per class)")

    encode = commands.add_parser("encode", help="latent codes E(x) of a trained BiGAN (or VAE encoder means)")
    encode.add_argument("run_dir", type=Path)
    encode.add_argument("--data", type=Path, required=True,
                        help="x.npz / x.npy / image folder / a `data prepare` folder (its --split) / shards")
    encode.add_argument("--out", type=Path, required=True, help="z.npy")
    encode.add_argument("--features", choices=["encoder", "discriminator"], default="encoder",
                        help="encoder: E(x); discriminator: D's last hidden layer on (x, E(x)) (BiGAN)")
    encode.add_argument("--split", choices=["train", "test"], default="test", help="split of a prepared folder")
    encode.add_argument("--class", dest="cls", type=int, default=None, metavar="K",
                        help="class-conditional VAE: encode every input at class K (default: at the inputs' own "
                             "labels)")

    translate = commands.add_parser("translate", help="translate images with a trained CycleGAN")
    translate.add_argument("run_dir", type=Path)
    translate.add_argument("--input", type=Path, required=True,
                           help="x.npz / x.npy / image folder / a `data prepare` folder (its --split) / shards")
    translate.add_argument("--direction", choices=["a2b", "b2a"], default="a2b")
    translate.add_argument("--out", type=Path, required=True, help="x.npy, grid.png, or a folder (one PNG per image)")
    translate.add_argument("--split", choices=["train", "test"], default="test", help="split of a prepared folder")

    evaluate = commands.add_parser("eval", help="evaluate a trained run on held-out data, or compare two sample "
                                   "sets (--real A --fake B)")
    evaluate.add_argument("run_dir", type=Path, nargs="?", default=None)
    evaluate.add_argument("--real", type=Path, default=None, help="reference samples: .npz/.npy, image folder, "
                          "prepared data folder (its test split) or shards")
    evaluate.add_argument("--fake", type=Path, default=None, help="samples to judge (same forms as --real)")
    evaluate.add_argument("--metrics", default=None, help="comma list of mmd,c2st,kid,fd,pr,modes "
                          "(default: all but modes; modes needs --features classifier:DIR)")
    evaluate.add_argument("--features", default="pixels", help="pixels | classifier:DIR | inception:PATH")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--num-samples", type=int, default=None, help="generated samples (default eval.num_samples)")
    evaluate.add_argument("--seed", type=int, default=None)
    evaluate.add_argument("--checkpoint", choices=["latest", "best"], default="latest")
    evaluate.add_argument("--noise-floor", action="store_true", help="also score real training samples (as many "
                          "as --num-samples) against the held-out data: each metric's floor, as floor/<metric>")

    classifier = commands.add_parser("classifier", help="a classifier for evaluation features and mode counts")
    classifier_commands = classifier.add_subparsers(dest="action", required=True)
    fit = classifier_commands.add_parser("train", help="fit a small classifier on labelled data; prints its "
                                         "held-out accuracy")
    fit.add_argument("--data", required=True, help="a `data prepare` folder, or a source: digits, npz:PATH "
                     "(x and y), folder:PATH (one sub-folder per class)")
    fit.add_argument("--out", type=Path, required=True, help="folder for classifier.safetensors/.json")
    fit.add_argument("--epochs", type=int, default=40)
    fit.add_argument("--seed", type=int, default=0)

    slurm = commands.add_parser("slurm", help="run training as a SLURM job")
    slurm_commands = slurm.add_subparsers(dest="action", required=True)
    submit = slurm_commands.add_parser("submit", help="render slurm/train.sbatch.template for CONFIG and sbatch it "
                                       "(preemption-safe: checkpoint, requeue once, resume)")
    submit.add_argument("config", help="a config YAML, as for `gendist train`")
    submit.add_argument("overrides", nargs="*", help="key=value config overrides")
    submit.add_argument("--nodes", type=int, default=1)
    submit.add_argument("--gpus-per-node", type=int, default=8)
    submit.add_argument("--strategy", choices=["ddp", "fsdp", "zero1", "zero2", "zero3"], default="ddp")
    submit.add_argument("--time", default="04:00:00", help="SLURM time limit (HH:MM:SS, MM, D-HH:MM:SS)")
    submit.add_argument("--partition", default="")
    submit.add_argument("--job-name", default="")
    submit.add_argument("--cpus-per-task", type=int, default=0, help="default: 8 per GPU (processes with --cpu)")
    submit.add_argument("--signal", default="TERM", help="signal sent --grace seconds before the time limit")
    submit.add_argument("--grace", type=int, default=120, help="seconds between the signal and the kill")
    submit.add_argument("--port", type=int, default=29500, help="main process port (MAIN_PORT in the job overrides)")
    submit.add_argument("--cpu", action="store_true", help="CPU processes over gloo (tests, clusters without GPUs)")
    submit.add_argument("--processes-per-node", type=int, default=2, help="with --cpu")
    submit.add_argument("--template", choices=["auto", "single", "multi"], default="auto",
                        help="auto: the single-node template for --nodes 1, the multi-node one otherwise")
    submit.add_argument("--dry-run", action="store_true", help="print the script instead of submitting it")
    return parser


def command_prepare(args: argparse.Namespace) -> int:
    from gendist.data import prepare_dataset

    if args.shard_size < 1 or args.block_size < 1:
        raise UserError("--shard-size and --block-size must be >= 1")
    if not 0 < args.test_fraction < 1:
        raise UserError(f"--test-fraction must be in (0, 1), got {args.test_fraction}")
    options = dict(shard_size=args.shard_size, test_fraction=args.test_fraction, seed=args.seed,
                   block_size=args.block_size, resize=args.resize, crop=args.crop)
    if args.source_b:
        from gendist.data.shards import prepare_two_domains
        from gendist.data.sources import check_source_spec

        check_source_spec(args.source, "--source")
        check_source_spec(args.source_b, "--source-b")
        manifests = prepare_two_domains(args.source, args.source_b, args.out, **options)
        a, b = (manifests[d]["splits"] for d in ("a", "b"))
        print(f"gendist: wrote domain A ({a['train']['num_samples']} train / {a['test']['num_samples']} test) to "
              f"{args.out} and domain B ({b['train']['num_samples']} train / {b['test']['num_samples']} test) to "
              f"{args.out / 'b'}")
        return 0
    manifest = prepare_dataset(args.source, args.out, **options)
    splits = manifest["splits"]
    print(f"gendist: wrote {splits['train']['num_samples']} train / {splits['test']['num_samples']} test samples "
          f"({len(splits['train']['shards'])}+{len(splits['test']['shards'])} shards) to {args.out}")
    return 0


def command_train(args: argparse.Namespace) -> int:
    from gendist.config import load_config
    from gendist.distributed import shutdown
    from gendist.engine.run import train

    config = load_config(args.config, args.overrides)
    try:
        return train(config)
    finally:
        shutdown()  # leave the process group cleanly: no half-closed gloo pairs at exit


def exit_without_native_teardown(code: int) -> None:
    """End a launched worker (torchrun, accelerate launch, DeepSpeed, srun: LOCAL_RANK is set) with os._exit
    once its command returned and the process group is gone, after success or a one-line error.

    Distributed C++ state (gloo's pairs and the rendezvous store's threads, and DeepSpeed's JIT-loaded
    shared-memory comm op on CPU) sometimes aborts at interpreter teardown ("terminate called without an
    active exception", SIGABRT) after the run finished cleanly, even with the process group destroyed; the
    launcher then reports the whole job as failed (seen now and then in DDP, FSDP, DeepSpeed runs and in
    eval on a loaded machine). Python's own exit work runs first: atexit handlers (logging,
    W&B), then the flushes; only native static destruction is skipped. Checkpoints, metrics and W&B files
    are closed by then (train() waits for an asynchronous save before it returns)."""
    if "LOCAL_RANK" not in os.environ:
        return
    import atexit

    try:
        atexit._run_exitfuncs()  # what a normal exit would run, in the same order
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def command_sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from gendist.inference import load_run
    from gendist.inputs import check_class
    from gendist.tracking import save_samples

    if args.n < 1:
        raise UserError(f"--n must be >= 1, got {args.n}")
    if args.out.suffix not in (".png", ".npy"):
        raise UserError(f"--out must end in .png (a grid) or .npy (the raw array), got '{args.out}'")
    loaded = load_run(args.run_dir, args.checkpoint)
    classes = getattr(loaded.recipe, "num_classes", 0)
    extra, what = {}, ""
    if args.cls is not None:
        check_class(classes, args.cls, args.run_dir)
        extra, what = {"labels": torch.full((args.n,), args.cls, dtype=torch.long)}, f" of class {args.cls}"
    with torch.no_grad():
        samples = loaded.recipe.sample(loaded.nets, args.n, torch.Generator().manual_seed(args.seed), **extra).cpu()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.suffix == ".npy":
        np.save(args.out, samples.numpy())
    else:  # a conditional run's balanced samples: one column per class (labels 0, 1, ..., K-1, 0, ...)
        columns = classes if classes and args.cls is None and classes <= 20 else 0
        save_samples(samples, loaded.spec.info, args.out, columns=columns)
    print(f"gendist: wrote {args.n} samples{what} from step {loaded.step} to {args.out}")
    return 0


def command_encode(args: argparse.Namespace) -> int:
    from gendist.inference import load_run
    from gendist.inputs import check_shape, labels_for, map_batches, read_labelled_inputs, write_outputs

    if args.out.suffix != ".npy":
        raise UserError(f"--out must end in .npy, got '{args.out}'")
    loaded = load_run(args.run_dir)
    recipe = loaded.recipe
    if not hasattr(recipe, "encode"):
        raise UserError(f"'{args.run_dir}' is a {loaded.config.model.recipe} run, which has no encoder; "
                        "encode works on BiGAN and VAE runs")
    x, y = read_labelled_inputs(args.data, args.split)
    check_shape(x, loaded.spec.info.sample_shape, args.data, "data")
    labels = labels_for(getattr(recipe, "num_classes", 0), args.cls, y, len(x), args.data, args.run_dir)
    # a conditional VAE's labels ride as encode's fourth argument; a run without classes gets none
    codes = map_batches(lambda batch, *given: recipe.encode(loaded.nets, batch, args.features, *given), x,
                        labels=labels)
    write_outputs(codes, args.out, loaded.spec.info)
    print(f"gendist: wrote {args.features} features {tuple(codes.shape)} of {len(x)} samples to {args.out}")
    return 0


def command_translate(args: argparse.Namespace) -> int:
    from gendist.inference import load_run
    from gendist.inputs import check_shape, map_batches, read_inputs, write_outputs

    if args.out.suffix not in (".npy", ".png", ""):
        raise UserError(f"--out must be x.npy, grid.png or a folder, got '{args.out}'")
    loaded = load_run(args.run_dir)
    recipe, info = loaded.recipe, loaded.spec.info
    if not hasattr(recipe, "translate"):
        raise UserError(f"'{args.run_dir}' is a {loaded.config.model.recipe} run; translate works on CycleGAN runs")
    source, target = (info, info.domain_b) if args.direction == "a2b" else (info.domain_b, info)
    x = read_inputs(args.input, args.split)
    check_shape(x, source.sample_shape, args.input, f"domain {'A' if args.direction == 'a2b' else 'B'}")
    translated = map_batches(lambda batch: recipe.translate(loaded.nets, batch, args.direction), x)
    where = write_outputs(translated, args.out, target)
    print(f"gendist: translated {len(x)} images ({args.direction}) from step {loaded.step} to {where}")
    return 0


def print_metrics(metrics: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(metrics))
        return
    for key, value in metrics.items():
        print(f"{key:>32s}  {value:.6g}" if isinstance(value, float) else f"{key:>32s}  {value}")


def command_compare(args: argparse.Namespace) -> int:
    """`gendist eval --real A --fake B`: two-sample statistics of two sample sets, no run needed."""
    from gendist.evaluation import TWO_SAMPLE_METRICS, compare_sets
    from gendist.features import build_featurizer
    from gendist.inputs import read_inputs

    if args.run_dir is not None or args.real is None or args.fake is None:
        raise UserError("gendist eval: pass either RUN_DIR, or both --real A and --fake B (not both forms)")
    metrics = [m.strip() for m in (args.metrics or "mmd,c2st,kid,fd,pr").split(",") if m.strip()]
    unknown = sorted(set(metrics) - set(TWO_SAMPLE_METRICS))
    if unknown or not metrics:
        raise UserError(f"--metrics: unknown {', '.join(unknown) or '(empty)'}; choose from {','.join(TWO_SAMPLE_METRICS)}")
    real, fake = read_inputs(args.real), read_inputs(args.fake)
    if real.shape[1:] != fake.shape[1:]:
        raise UserError(f"--real has samples of shape {tuple(real.shape[1:])}, --fake {tuple(fake.shape[1:])}; "
                        "compare samples of one shape")
    if min(len(real), len(fake)) < 4:
        raise UserError(f"--real/--fake: need at least 4 samples each (got {len(real)} and {len(fake)})")
    featurizer = build_featurizer(args.features, tuple(real.shape[1:]))
    if "modes" in metrics and featurizer.num_modes is None:
        raise UserError("--metrics modes: counting modes needs a classifier; pass --features classifier:DIR "
                        "(train one with `gendist classifier train --data SPEC --out DIR`)")
    result = {"features": featurizer.name, **compare_sets(real, fake, metrics, featurizer, seed=args.seed or 0)}
    print_metrics(result, args.json)
    return 0


def command_eval(args: argparse.Namespace) -> int:
    from gendist.distributed import barrier, is_main, shutdown
    from gendist.engine.run import evaluate_recipe
    from gendist.inference import load_run

    if args.real is not None or args.fake is not None or args.run_dir is None:
        return command_compare(args)
    if args.metrics is not None or args.features != "pixels":
        raise UserError("--metrics/--features apply to --real/--fake; a run is evaluated with its own metrics")
    loaded = load_run(args.run_dir, args.checkpoint)
    if args.num_samples is not None:
        if args.num_samples < 2:
            raise UserError(f"--num-samples must be >= 2, got {args.num_samples}")
        loaded.config.eval.num_samples = args.num_samples
    seed = loaded.config.train.seed if args.seed is None else args.seed
    import torch

    try:
        with torch.no_grad():  # shared over ranks when launched with several processes
            metrics = {"step": loaded.step, **evaluate_recipe(loaded.recipe, loaded.nets, loaded.spec, seed,
                                                              loaded.config.eval.num_samples,
                                                              loaded.config.eval.features,
                                                              which=loaded.config.eval.metrics,
                                                              noise_floor=args.noise_floor or loaded.config.eval.noise_floor)}
        barrier()
    finally:
        shutdown()  # leave the process group cleanly: exiting with live gloo pairs can abort the process
    if not is_main():
        return 0
    print_metrics(metrics, args.json)
    return 0


def command_classifier(args: argparse.Namespace) -> int:
    from gendist.classifier import train_classifier

    if args.epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {args.epochs}")
    meta = train_classifier(args.data, args.out, epochs=args.epochs, seed=args.seed)
    print(f"gendist: classifier on {meta['shape']} samples, {meta['num_classes']} classes: test accuracy "
          f"{meta['test_accuracy']:.4f} ({meta['num_test']} held-out samples); saved to {args.out} "
          f"(use --features classifier:{args.out})")
    return 0


def command_slurm(args: argparse.Namespace) -> int:
    from gendist.slurm import submit

    return submit(args)


COMMANDS = {"slurm": command_slurm, "classifier": command_classifier, "data": command_prepare, "train": command_train, "sample": command_sample, "eval": command_eval,
            "encode": command_encode, "translate": command_translate}


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if args.command == "slurm" and all("=" in item and not item.startswith("-") for item in extra):
            args.overrides = [*args.overrides, *extra]  # key=value overrides may follow the options
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return COMMANDS[args.command](args)
    except UserError as error:
        message = " ".join(str(error).split())  # one line, whatever a library put in its message
        print(f"gendist: error: {message}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("gendist: interrupted", file=sys.stderr)
        return 130


def entry_point() -> None:
    code = main()
    exit_without_native_teardown(code)  # also after an error (exit 2): a teardown abort would hide it
    sys.exit(code)
