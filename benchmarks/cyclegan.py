"""CycleGAN on two labelled domains: do A -> B translations keep the source's label?

    python benchmarks/cyclegan.py [--config configs/cyclegan_digits_rot90.yaml] [--seeds 0 1 2] [--steps N]
                                  [--run-dir DIR] [--min-accuracy 0.9] [--classifier auto|svm|cnn] [--json F]
                                  [overrides ...]

For each seed, trains the config (unless --run-dir names a finished run; two-domain data made from one source
take disjoint halves of it, so the data are unpaired), then:
- fits a classifier on domain B's training split (labels used only here): scikit-learn's RBF support-vector
  machine on pixels for small images (<= 256 pixels: the 8x8 digits), `gendist classifier train` (the
  evaluation classifier, a small CNN) for larger ones; reports its accuracy on B's held-out split, on A's
  held-out images transformed exactly as B was made from them (the ceiling a perfect translation reaches, for
  built-in variants: digits_rot90, digits_inverted, fashion_mnist_inverted) and on A's held-out images
  untranslated (what doing nothing scores);
- translates A's held-out images with `gendist translate --direction a2b` and reports the share the B
  classifier labels with the source's label (the target); the same for A's training split, the mean absolute
  difference to the exact transform, the cycle L1 |F(G(a)) - a| on held-out images and, with
  cyclegan.align=dihedral, the turn or flip each generator's alignment chose.
Prints one table row per seed (and writes all figures to --json). Exit status 1 when a seed's held-out
translation accuracy is below --min-accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SVM_MAX_PIXELS = 256  # larger images get the CNN classifier: an RBF SVM on raw pixels is slow and weaker there


def labelled_split(spec, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of a prepared split, in file order."""
    from gendist.engine.data_setup import iterate_in_order

    urls = spec.train_urls if split == "train" else spec.test_urls
    batches = list(iterate_in_order(urls, spec.manifest, 256))
    return (np.concatenate([b["x"].numpy() for b in batches]), np.concatenate([b["y"].numpy() for b in batches]))


def chosen_alignment(run_dir: Path, config, shape_a, shape_b) -> dict:
    """With cyclegan.align=dihedral: each generator's heaviest turn/flip and its softmax weight."""
    if config.cyclegan.align != "dihedral":
        return {}
    import torch

    from gendist.checkpoint import find_resumable, load_network
    from gendist.recipes.cyclegan import dihedral_transforms

    folder = find_resumable(run_dir / "checkpoints")
    out = {}
    for name, (shape_in, shape_out) in (("g_ab", (shape_a, shape_b)), ("g_ba", (shape_b, shape_a))):
        weights = torch.softmax(load_network(folder, name)["align.logits"].float(), 0)
        turns, flip = dihedral_transforms(tuple(shape_in), tuple(shape_out))[int(weights.argmax())]
        out[f"{name}_alignment"] = f"{'flip, then ' if flip else ''}{turns} quarter turn(s) counter-clockwise"
        out[f"{name}_alignment_weight"] = round(float(weights.max()), 4)
    return out


class BClassifier:
    """A classifier of domain B's labels, fitted on B's training split."""

    def __init__(self, kind: str, spec_b, folder_b: Path, work: Path, epochs: int, env: dict):
        self.kind = kind
        if kind == "svm":
            from sklearn.svm import SVC

            x, y = labelled_split(spec_b, "train")
            self.svm = SVC(C=10.0).fit(x.reshape(len(x), -1), y)
        else:
            from gendist.classifier import load_classifier

            out = work / "classifier_b"
            subprocess.run([sys.executable, "-m", "gendist", "classifier", "train", "--data", str(folder_b),
                            "--out", str(out), "--epochs", str(epochs)], cwd=ROOT, env=env, check=True)
            self.cnn, _ = load_classifier(out)

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "svm":
            return self.svm.predict(x.reshape(len(x), -1))
        import torch

        with torch.no_grad():
            return torch.cat([self.cnn(torch.from_numpy(x[s:s + 1024]).float()).argmax(1)
                              for s in range(0, len(x), 1024)]).numpy()

    def score(self, x: np.ndarray, y: np.ndarray) -> float:
        return float((self.predict(x) == y).mean())


def evaluate(run_dir: Path, work: Path, args, env: dict, seconds: float) -> dict:
    from gendist.config import load_config
    from gendist.data.sources import VARIANT_SOURCES, apply_variant
    from gendist.distributed import init_distributed
    from gendist.engine.data_setup import resolve_data

    config = load_config(run_dir / "config.yaml", saved_run=True)
    spec = resolve_data(config, init_distributed(config.dist.timeout_s))
    b_test, b_test_y = labelled_split(spec.domain_b, "test")
    kind = args.classifier
    if kind == "auto":
        kind = "svm" if np.prod(b_test.shape[2:]) <= SVM_MAX_PIXELS else "cnn"
    folder_b = Path(spec.domain_b.train_urls[0]).parent
    classifier = BClassifier(kind, spec.domain_b, folder_b, work, args.classifier_epochs, env)
    a_test, a_test_y = labelled_split(spec, "test")
    result = {"seed": config.train.seed, "run_dir": str(run_dir), "train_seconds": round(seconds, 1),
              "steps": config.train.max_steps, "classifier": kind,
              "classifier_on_b_test": classifier.score(b_test, b_test_y),
              "untranslated_a_test": classifier.score(a_test, a_test_y)}
    variant = VARIANT_SOURCES.get(config.data.source_b, ("", ""))
    exact = None
    if variant[0] and variant[0] == config.data.source:
        exact = apply_variant(a_test, variant[1])
        result["ceiling_exact_a_test"] = classifier.score(exact, a_test_y)
    result.update(chosen_alignment(run_dir, config, a_test.shape[1:], b_test.shape[1:]))
    for split in ("test", "train"):
        a, a_y = (a_test, a_test_y) if split == "test" else labelled_split(spec, "train")
        np.save(work / f"a_{split}.npy", a)
        subprocess.run([sys.executable, "-m", "gendist", "translate", str(run_dir), "--input", str(work / f"a_{split}.npy"),
                        "--direction", "a2b", "--out", str(work / f"a2b_{split}.npy")], cwd=ROOT, env=env, check=True)
        translated = np.load(work / f"a2b_{split}.npy")
        result[f"a2b_label_kept_{split}"] = classifier.score(translated, a_y)
        result[f"num_a_{split}"] = len(a)
        if split == "test":
            if exact is not None:
                result["l1_to_exact_a_test"] = float(np.abs(translated - exact).mean())
            subprocess.run([sys.executable, "-m", "gendist", "translate", str(run_dir), "--input",
                            str(work / "a2b_test.npy"), "--direction", "b2a", "--out", str(work / "cycle_test.npy")],
                           cwd=ROOT, env=env, check=True)
            result["cycle_l1_a_test"] = float(np.abs(np.load(work / "cycle_test.npy") - a).mean())
    eval_file = run_dir / "eval.json"
    if eval_file.is_file():  # the run's own end-of-training evaluation (A -> B translations against B)
        result["eval"] = json.loads(eval_file.read_text())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/cyclegan_digits_rot90.yaml")
    parser.add_argument("--run-dir", type=Path, default=None, help="evaluate this finished run (no training)")
    parser.add_argument("--steps", type=int, default=None, help="train.max_steps (default: the config's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--min-accuracy", type=float, default=0.9)
    parser.add_argument("--classifier", choices=("auto", "svm", "cnn"), default="auto")
    parser.add_argument("--classifier-epochs", type=int, default=15)
    parser.add_argument("--work", type=Path, default=None, help="folder for runs and files (default: a new temp)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("overrides", nargs="*", help="more config overrides (key=value)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cyclegan-"))
    env = dict(os.environ, WANDB_SILENT="true")
    results = []
    for seed in ([None] if args.run_dir else args.seeds):
        seed_work = work / ("run" if seed is None else f"seed{seed}")
        seed_work.mkdir(parents=True, exist_ok=True)
        run_dir, seconds = args.run_dir, 0.0
        if run_dir is None:
            run_dir = seed_work / "run"
            steps = [f"train.max_steps={args.steps}"] if args.steps else []
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "gendist", "train", args.config, f"run.dir={run_dir}", *steps,
                            f"train.seed={seed}", "log.wandb=false", "log.progress=false", *args.overrides],
                           cwd=ROOT, env=env, check=True)
            seconds = time.perf_counter() - started
        results.append(evaluate(run_dir, seed_work, args, env, seconds))
        print(json.dumps(results[-1], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    columns = ("seed", "steps", "train_seconds", "classifier_on_b_test", "ceiling_exact_a_test", "untranslated_a_test",
               "a2b_label_kept_test", "a2b_label_kept_train", "l1_to_exact_a_test", "cycle_l1_a_test")
    print("| " + " | ".join(columns) + " |")
    for result in results:
        print("| " + " | ".join(f"{result[c]:.3f}" if isinstance(result.get(c), float) else str(result.get(c, "-"))
                                for c in columns) + " |")
    failed = [r["seed"] for r in results if r["a2b_label_kept_test"] < args.min_accuracy]
    kept = ", ".join(f"{r['a2b_label_kept_test']:.3f}" for r in results)
    print("FAIL" if failed else "PASS", f"A->B translations of held-out images keep their label: {kept} "
          f"(>= {args.min_accuracy})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
