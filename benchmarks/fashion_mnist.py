"""Fashion-MNIST (28x28 grey, the Debian package's 60,000 + 10,000 images): GAN quality per architecture in the
features of a Fashion-MNIST classifier, against the real-vs-real noise floor.

    python benchmarks/fashion_mnist.py [--archs conv resnet stylegan2] [--seeds 0 1 2] [--minutes 60]
                                       [--conditional] [--train-images N] [--augment color,translation,cutout]
                                       [--steps N] [--eval-at N ...] [--samples 10000] [--work DIR]
                                       [overrides ...]

Trains the Fashion-MNIST classifier once (`gendist classifier train --data fashion_mnist`, its shipped test set
scores it), prepares the data once, then per architecture and seed trains configs/gan_fashion_mnist.yaml with
`model.arch=ARCH` for a step budget worth --minutes of training on this machine (measured: a 40-step run per
architecture gives the time per step; or --steps), draws --samples samples (EMA weights; a conditional model every class
equally) and compares them with the 10,000 test images by `gendist eval --real --fake --features
classifier:DIR --metrics fd,kid,pr`. The floor row compares --samples real training images with the same test
images. --conditional adds class accuracy (the classifier gives the requested class; the worst class too).
--train-images N trains on the first N training images only (data-efficient runs; evaluation is unchanged).
Prints a table and a json line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _gendist import gendist  # noqa: E402

KEYS = ("frechet_distance", "kid", "precision", "recall")
CALIBRATION_STEPS = 40
# checkpoints every 5,000 steps: a run cut short (a session's end, a kill) resumes exactly from its last one when the
# same command runs again; its train_s then counts only the last invocation's wall time
QUIET = ["ckpt.every=5000", "log.sample_every=0", "log.wandb=false", "log.progress=false", "eval.metrics=[]"]


def seconds_per_step(run_dir: Path) -> float:
    """From a calibration run's metrics.jsonl: the time of its second half (start-up and first steps excluded)."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = [(line["step"], line["time/elapsed_s"]) for line in lines if "time/elapsed_s" in line]
    (first_step, first_time), (last_step, last_time) = timed[len(timed) // 2], timed[-1]
    return (last_time - first_time) / max(last_step - first_step, 1)


def class_accuracy(classifier: Path, samples: np.ndarray, requested: np.ndarray) -> dict[str, float]:
    import torch

    from gendist.classifier import load_classifier

    model, _ = load_classifier(classifier)
    with torch.no_grad():
        predicted = torch.cat([model(torch.from_numpy(samples[s:s + 1000]).float()).argmax(1)
                               for s in range(0, len(samples), 1000)]).numpy()
    per_class = [float((predicted[requested == k] == k).mean()) for k in np.unique(requested)]
    return {"class_accuracy": float((predicted == requested).mean()), "class_accuracy_min": min(per_class),
            "class_accuracy_per_class": [round(a, 4) for a in per_class]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["conv", "resnet", "stylegan2"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--minutes", type=float, default=60.0, help="training budget per run (this machine)")
    parser.add_argument("--steps", type=int, default=0, help="a fixed step budget instead of --minutes (runs "
                        "compared at equal steps, e.g. with and without --augment)")
    parser.add_argument("--conditional", action="store_true")
    parser.add_argument("--train-images", type=int, default=0, help="train on the first N images (0: all)")
    parser.add_argument("--augment", default="", help="gan.augment for every run (DiffAugment policies)")
    parser.add_argument("--eval-at", type=int, nargs="*", default=[], help="also evaluate at these steps (the run "
                        "resumes from its checkpoint after each; a curve of FD over steps at no extra training)")
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--classifier-epochs", type=int, default=10)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="config overrides for every run")
    args = parser.parse_args()
    from gendist.data import load_source

    work = args.work or Path(tempfile.mkdtemp(prefix="fashion-mnist-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, WANDB_SILENT="true")
    classifier = work / "classifier"
    if not (classifier / "classifier.json").is_file():
        print(gendist("classifier", "train", "--data", "fashion_mnist", "--out", str(classifier), "--epochs",
                      str(args.classifier_epochs), env=env).strip(), flush=True)
    meta = json.loads((classifier / "classifier.json").read_text())
    source = load_source("fashion_mnist")
    test = np.zeros(len(source.x), dtype=bool)
    test[source.test_rows] = True
    np.save(work / "test.npy", source.x[test])
    train_x, train_y = source.x[~test], source.y[~test]
    np.save(work / "train.npy", train_x[:args.samples])
    evaluate = ["--features", f"classifier:{classifier}", "--metrics", "fd,kid,pr", "--json"]
    floor = json.loads(gendist("eval", "--real", str(work / "test.npy"), "--fake", str(work / "train.npy"), *evaluate,
                               env=env).splitlines()[-1])
    print("floor (real train vs real test)", json.dumps({k: floor[k] for k in KEYS}), flush=True)
    if args.conditional:  # the classifier on the real test images, per class: the reference for samples' scores
        floor.update(class_accuracy(classifier, source.x[test], source.y[test]))
        print("classifier on the real test images", json.dumps(floor["class_accuracy_per_class"]), flush=True)
    data = ["data.source=fashion_mnist"]
    if args.train_images:  # the first N training images, the shipped test set kept as the held-out split
        subset = work / f"train{args.train_images}.npz"
        np.savez(subset, x=np.concatenate([train_x[:args.train_images], source.x[test]]),
                 y=np.concatenate([train_y[:args.train_images], source.y[test]]),
                 test=np.concatenate([np.zeros(args.train_images, bool), np.ones(int(test.sum()), bool)]))
        data = [f"data.source=npz:{subset}"]
    common = [*data, *(["model.conditional=true"] if args.conditional else []),
              *([f"gan.augment={args.augment}"] if args.augment else []), *args.overrides, *QUIET]
    rows: dict[str, list[dict]] = {arch: [] for arch in args.archs}
    steps: dict[str, int] = {}
    for arch in args.archs:
        if args.steps:
            steps[arch] = args.steps
            continue
        calibration = work / f"calibrate-{arch}"
        gendist("train", "configs/gan_fashion_mnist.yaml", f"run.dir={calibration}", f"model.arch={arch}",
                f"train.max_steps={CALIBRATION_STEPS}", "log.every=5", *common, env=env)
        per_step = seconds_per_step(calibration)
        steps[arch] = max(CALIBRATION_STEPS, int(args.minutes * 60 / per_step))
        print(f"{arch}: {per_step:.3f} s/step -> {steps[arch]} steps in {args.minutes} min", flush=True)
    for seed in args.seeds:
        for arch in args.archs:
            run_dir = work / f"{arch}-{seed}"
            seconds = 0.0
            for stage in sorted({s for s in args.eval_at if 0 < s < steps[arch]} | {steps[arch]}):
                started = time.perf_counter()  # each stage resumes the run from its last checkpoint, exactly
                gendist("train", "configs/gan_fashion_mnist.yaml", f"run.dir={run_dir}", f"model.arch={arch}",
                        f"train.seed={seed}", f"train.max_steps={stage}", *common, env=env)
                seconds += time.perf_counter() - started
                gendist("sample", str(run_dir), "--n", str(args.samples), "--seed", str(seed), "--out",
                        str(run_dir / "samples.npy"), env=env)
                row = json.loads(gendist("eval", "--real", str(work / "test.npy"), "--fake",
                                         str(run_dir / "samples.npy"), *evaluate, env=env).splitlines()[-1])
                result = {"seed": seed, "steps": stage, "train_s": round(seconds, 1), **{k: row[k] for k in KEYS},
                          "fd_over_floor": row["frechet_distance"] / floor["frechet_distance"]}
                if args.conditional:
                    requested = np.arange(args.samples) % int(meta["num_classes"])
                    result.update(class_accuracy(classifier, np.load(run_dir / "samples.npy"), requested))
                rows[arch].append(result)
                print(arch, json.dumps(rows[arch][-1]), flush=True)
    keys = (*KEYS, "fd_over_floor", *(("class_accuracy", "class_accuracy_min") if args.conditional else ()))
    print(f"classifier test accuracy {meta['test_accuracy']:.4f}")
    print("| architecture | seed | steps | " + " | ".join(keys) + " | train s |")
    print("|---" * (len(keys) + 4) + "|")
    print("| real train vs test (floor) | - | - | " + " | ".join(
        f"{floor[k]:.4g}" if k in floor else "-" for k in keys) + " | - |")
    for arch, results in rows.items():
        for row in results:
            cells = [f"{row[k]:.4g}" for k in keys]
            print(f"| {arch} | {row['seed']} | {row['steps']} | " + " | ".join(cells) + f" | {row['train_s']} |")
    print(json.dumps({"work": str(work), "minutes": args.minutes, "conditional": args.conditional,
                      "train_images": args.train_images, "augment": args.augment, "floor": floor,
                      "classifier_accuracy": meta["test_accuracy"], "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
