"""Robust defaults: the shipped image configs, run unchanged on a user's 28x28 grey and 32x32 RGB images.

    python benchmarks/robust_defaults.py [--data grey28 rgb32] [--runs gan_digits:conv vae_digits ...]
                                         [--steps N] [--work DIR] [--set KEY=VALUE ... --tag NAME]

The user's data are the 1,797 scikit-learn digits brought at another size, as a user would bring their own
images: `grey28` resampled (PIL LANCZOS) to 28x28 grey; `rgb32` resampled to 32x32 in colour (a random stroke
colour on a random dark background per image). Each is written as an npz with labels and a random 10% held out,
and prepared once with `gendist data prepare`; `gendist classifier train` on it gives the feature space.

Each run is what the README tells a user to do: `gendist train configs/CONFIG.yaml data.dir=DIR
[model.arch=ARCH]`, nothing else changed (its own default steps, unless --steps caps them for a short look; the
W&B logger and progress bar are turned off, which changes nothing that is learned); its peak memory (the
training process's maximum resident set, evaluation at the end included) is recorded. A run's row is kept in
WORK/NAME.json, so a second invocation with the same --work goes on where the first stopped. Then `gendist sample` draws
as many samples as there are real images (EMA weights where the config keeps them), and `gendist eval` compares
them with all the real images in the classifier's features: precision, recall (the target: >= 0.3) and Frechet
distance. The floor row is real against real: one half of the images against the other (899 a side, so
its precision/recall are those of a smaller sample). From each run's metrics.jsonl: how many metric lines had
the discriminator winning outright (`health/discriminator_wins`), and whether the watch's warning fired on
stderr as it happened.

Prints a table and a json line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _gendist import gendist  # noqa: E402

# config[:arch]; every shipped config that trains on images and draws samples, each image architecture of the GAN
# configs (the VAE and BiGAN configs name one architecture each; CycleGAN translates and draws no samples, see
# benchmarks/cyclegan.py)
RUNS = ["gan_digits:conv", "gan_digits:resnet", "gan_digits:stylegan2",
        "gan_fashion_mnist:conv", "gan_fashion_mnist:resnet", "gan_fashion_mnist:stylegan2",
        "gan_emoji:conv", "gan_emoji:resnet", "gan_emoji:stylegan2",
        "vae_digits", "vae_emoji", "bigan_digits"]
KEYS = ("precision", "recall", "frechet_distance")
QUIET = ["log.wandb=false", "log.progress=false"]


def user_images(kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The digits as uint8 (N, C, H, W) images of the user's size, with their labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    strokes = (digits.images / 16.0 * 255).round().astype(np.uint8)
    side = {"grey28": 28, "rgb32": 32}[kind]
    big = np.stack([np.asarray(Image.fromarray(a).resize((side, side), Image.LANCZOS)) for a in strokes])
    big = big.astype(np.float32)[:, None] / 255.0  # (N, 1, side, side)
    if kind == "rgb32":
        rng = np.random.default_rng(seed)
        stroke = rng.uniform(0.4, 1.0, (len(big), 3, 1, 1))
        ground = rng.uniform(0.0, 0.3, (len(big), 3, 1, 1))
        big = big * stroke + (1 - big) * ground
    return (big * 255).round().astype(np.uint8), digits.target


def discriminator_wins(run_dir: Path) -> tuple[int, int]:
    """(metric lines whose discriminator won outright, metric lines carrying the health entry)."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    flags = [line["health/discriminator_wins"] for line in lines if "health/discriminator_wins" in line]
    return int(sum(flags)), len(flags)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["grey28", "rgb32"], choices=["grey28", "rgb32"])
    parser.add_argument("--runs", nargs="+", default=RUNS, help="config[:arch], e.g. gan_digits:resnet")
    parser.add_argument("--steps", type=int, default=0, help="cap every run at N steps (0: the config's own)")
    parser.add_argument("--classifier-epochs", type=int, default=40)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides for every run (a change being tried, not the defaults: name it with --tag)")
    parser.add_argument("--tag", default="", help="suffix of the run names of --set runs (their rows are kept apart)")
    args = parser.parse_args()
    if args.set and not args.tag:
        parser.error("--set changes the shipped defaults: name its runs with --tag")
    for run in args.runs:
        if not (ROOT / "configs" / f"{run.split(':')[0]}.yaml").is_file():
            raise SystemExit(f"--runs: no config configs/{run.split(':')[0]}.yaml")
    work = args.work or Path(tempfile.mkdtemp(prefix="robust-defaults-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, WANDB_SILENT="true")
    evaluate = ["--metrics", "fd,pr", "--json"]
    results: dict[str, dict] = {}
    for kind in args.data:
        x, y = user_images(kind)
        test = np.zeros(len(x), dtype=bool)
        test[np.random.default_rng(0).permutation(len(x))[:len(x) // 10]] = True
        source, data_dir, classifier = work / f"{kind}.npz", work / kind, work / f"classifier-{kind}"
        np.savez(source, x=x, y=y, test=test)
        if not data_dir.exists():
            gendist("data", "prepare", "--source", f"npz:{source}", "--out", str(data_dir), env=env)
        if not (classifier / "classifier.json").is_file():
            gendist("classifier", "train", "--data", str(data_dir), "--out", str(classifier), "--epochs",
                    str(args.classifier_epochs), env=env)
        accuracy = json.loads((classifier / "classifier.json").read_text())["test_accuracy"]
        real = work / f"{kind}-real.npy"
        np.save(real, x.astype(np.float32) / 255.0)
        halves = np.random.default_rng(1).permutation(len(x))
        np.save(work / f"{kind}-half-a.npy", x[halves[:len(x) // 2]].astype(np.float32) / 255.0)
        np.save(work / f"{kind}-half-b.npy", x[halves[len(x) // 2:]].astype(np.float32) / 255.0)
        features = ["--features", f"classifier:{classifier}"]
        floor = json.loads(gendist("eval", "--real", str(work / f"{kind}-half-a.npy"), "--fake",
                                   str(work / f"{kind}-half-b.npy"), *features, *evaluate, env=env).splitlines()[-1])
        results[kind] = {"classifier_accuracy": accuracy, "floor": {k: floor[k] for k in KEYS}, "runs": {}}
        print(kind, "classifier test accuracy", accuracy, "floor", json.dumps(results[kind]["floor"]), flush=True)
        for run in args.runs:
            config, _, arch = run.partition(":")
            run_dir = work / f"{kind}-{config}{'-' + arch if arch else ''}{'-' + args.tag if args.tag else ''}"
            overrides = [f"data.dir={data_dir}", f"run.dir={run_dir}", *([f"model.arch={arch}"] if arch else []),
                         *([f"train.max_steps={args.steps}"] if args.steps else []), *args.set, *QUIET]
            cached = run_dir.parent / f"{run_dir.name}.json"
            if cached.is_file():  # a finished run of an earlier invocation with the same --work
                results[kind]["runs"][run] = json.loads(cached.read_text())
                print(kind, run, "(cached)", cached.read_text(), flush=True)
                continue
            shutil.rmtree(run_dir, ignore_errors=True)
            stderr_path = run_dir.parent / f"{run_dir.name}.stderr"
            started = time.perf_counter()
            with open(stderr_path, "w") as stderr:
                process = subprocess.Popen([sys.executable, "-m", "gendist", "train", f"configs/{config}.yaml",
                                            *overrides], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
                _, status, usage = os.wait4(process.pid, 0)  # this run's own peak memory, not all children's
            seconds = time.perf_counter() - started
            returncode, stderr_text = os.waitstatus_to_exitcode(status), stderr_path.read_text()
            peak_gib = round(usage.ru_maxrss / 2**20, 2)  # ru_maxrss is in KiB on Linux
            if returncode != 0:
                last = (stderr_text.strip().splitlines() or [f"exit status {returncode}"])[-1]
                row = {"error": last[:300], "train_s": round(seconds, 1), "peak_gib": peak_gib}
            else:
                samples = run_dir / "samples.npy"
                gendist("sample", str(run_dir), "--n", str(len(x)), "--seed", "0", "--out", str(samples), env=env)
                gendist("sample", str(run_dir), "--n", "64", "--seed", "0", "--out", str(run_dir / "grid.png"),
                        env=env)
                scores = json.loads(gendist("eval", "--real", str(real), "--fake", str(samples), *features, *evaluate,
                                            env=env).splitlines()[-1])
                won, lines = discriminator_wins(run_dir)
                steps = max(json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines())
                row = {"steps": steps, "train_s": round(seconds, 1), "peak_gib": peak_gib,
                       **{k: scores[k] for k in KEYS}, "d_wins_lines": f"{won}/{lines}" if lines else "-",
                       "d_wins_warned": "discriminator wins outright" in stderr_text}
                cached.write_text(json.dumps(row))
            results[kind]["runs"][run] = row
            print(kind, run, json.dumps(row), flush=True)
    for kind, result in results.items():
        print(f"\n{kind}: classifier test accuracy {result['classifier_accuracy']:.4f}")
        print("| run | steps | precision | recall | Frechet distance | D wins (lines) | warned | train s | peak GiB |")
        print("|---|---|---|---|---|---|---|---|---|")
        floor = result["floor"]
        print(f"| real vs real (halves) | - | {floor['precision']:.3f} | {floor['recall']:.3f} | "
              f"{floor['frechet_distance']:.3g} | - | - | - | - |")
        for run, row in result["runs"].items():
            if "error" in row:
                print(f"| {run} | failed: {row['error']} | | | | | | {row['train_s']} | {row['peak_gib']} |")
                continue
            print(f"| {run} | {row['steps']} | {row['precision']:.3f} | {row['recall']:.3f} | "
                  f"{row['frechet_distance']:.3g} | {row['d_wins_lines']} | {row['d_wins_warned']} | "
                  f"{row['train_s']} | {row['peak_gib']} |")
    print(json.dumps({"work": str(work), "steps_cap": args.steps, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
