"""CycleGAN digits <-> digits rotated by 90 degrees: do A -> B translations keep the digit?

    python benchmarks/cyclegan_digits.py [--run-dir DIR | --steps 3000] [--seed 0] [--min-accuracy 0.95]

Trains `configs/cyclegan_digits_rot90.yaml` (unless --run-dir names a finished run; A and B are disjoint
halves of the digits, so the data are unpaired), then:
- fits a classifier (logistic regression on pixels) on domain B's training split (rotated digits, labels
  used only here) and reports its accuracy on B's held-out split;
- translates A's held-out digits with `gendist translate --direction a2b` and reports the share the B
  classifier labels with the source digit's label (target >= 95%); the same for A's training split;
- reports the cycle L1 |F(G(a)) - a| on A's held-out split.
Exit status 1 when the held-out translation accuracy is below --min-accuracy.
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


def labelled_split(spec, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of a prepared split, in file order."""
    from gendist.engine.data_setup import iterate_in_order

    urls = spec.train_urls if split == "train" else spec.test_urls
    batches = list(iterate_in_order(urls, spec.manifest, 256))
    return (np.concatenate([b["x"].numpy() for b in batches]), np.concatenate([b["y"].numpy() for b in batches]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-accuracy", type=float, default=0.95)
    parser.add_argument("--extra", nargs="*", default=[], help="more config overrides")
    args = parser.parse_args()
    from sklearn.linear_model import LogisticRegression

    from gendist.config import load_config
    from gendist.distributed import init_distributed
    from gendist.engine.data_setup import resolve_data

    work = Path(tempfile.mkdtemp(prefix="cyclegan-digits-"))
    env = dict(os.environ, WANDB_SILENT="true")
    run_dir, seconds = args.run_dir, 0.0
    if run_dir is None:
        run_dir = work / "run"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "gendist", "train", "configs/cyclegan_digits_rot90.yaml",
                        f"run.dir={run_dir}", f"train.max_steps={args.steps}", f"train.seed={args.seed}",
                        "log.wandb=false", "log.progress=false", *args.extra], cwd=ROOT, env=env, check=True)
        seconds = time.perf_counter() - started
    config = load_config(run_dir / "config.yaml", saved_run=True)
    spec = resolve_data(config, init_distributed(config.dist.timeout_s))
    b_train, b_train_y = labelled_split(spec.domain_b, "train")
    b_test, b_test_y = labelled_split(spec.domain_b, "test")
    classifier = LogisticRegression(max_iter=5000).fit(b_train.reshape(len(b_train), -1), b_train_y)
    result = {"run_dir": str(run_dir), "train_seconds": round(seconds, 1),
              "classifier_on_real_b_test": float(classifier.score(b_test.reshape(len(b_test), -1), b_test_y))}
    for split in ("test", "train"):
        a, a_y = labelled_split(spec, split)
        np.save(work / f"a_{split}.npy", a)
        subprocess.run([sys.executable, "-m", "gendist", "translate", str(run_dir), "--input", str(work / f"a_{split}.npy"),
                        "--direction", "a2b", "--out", str(work / f"a2b_{split}.npy")], cwd=ROOT, env=env, check=True)
        translated = np.load(work / f"a2b_{split}.npy")
        result[f"a2b_label_kept_{split}"] = float(classifier.score(translated.reshape(len(a), -1), a_y))
        result[f"num_a_{split}"] = len(a)
        if split == "test":
            subprocess.run([sys.executable, "-m", "gendist", "translate", str(run_dir), "--input",
                            str(work / "a2b_test.npy"), "--direction", "b2a", "--out", str(work / "cycle_test.npy")],
                           cwd=ROOT, env=env, check=True)
            result["cycle_l1_a_test"] = float(np.abs(np.load(work / "cycle_test.npy") - a).mean())
    eval_file = run_dir / "eval.json"
    if eval_file.is_file():
        result["eval"] = json.loads(eval_file.read_text())
    print(json.dumps(result, indent=1))
    ok = result["a2b_label_kept_test"] >= args.min_accuracy
    print("PASS" if ok else "FAIL", f"A->B translations of held-out digits keep their label: "
          f"{result['a2b_label_kept_test']:.3f} (>= {args.min_accuracy})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
