"""`gendist classifier train` and `gendist eval --real A --fake B` in-process: the keys, the stacked-digits
mode count with a digit classifier applied per channel (real stacked samples: the noise floor), and bad input
as one line with exit code 2."""
import json

import numpy as np
import pytest

from gendist.cli import main
from gendist.data.sources import build_stacked_digits


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    out = tmp_path_factory.mktemp("classifier")
    assert main(["classifier", "train", "--data", "digits", "--out", str(out), "--epochs", "15"]) == 0
    meta = json.loads((out / "classifier.json").read_text())
    assert meta["test_accuracy"] > 0.9 and meta["num_classes"] == 10 and meta["shape"] == [1, 8, 8]
    return out


def run_json(argv, capsys) -> dict:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.one_process
@pytest.mark.slow  # about a minute: a classifier fit and four statistics on 3,000 x 192 samples
def test_stacked_digits_modes_of_real_samples_and_of_a_collapsed_generator(classifier, tmp_path, capsys):
    real, other = build_stacked_digits(0, 3000), build_stacked_digits(1, 3000)
    np.savez(tmp_path / "real.npz", x=real.x)
    np.savez(tmp_path / "other.npz", x=other.x)
    collapsed = other.x.copy()
    collapsed[:, 0] = collapsed[0, 0]  # the first channel always shows one digit: 100 of 1,000 modes at most
    np.save(tmp_path / "collapsed.npy", collapsed)
    features = f"classifier:{classifier}"
    same = run_json(["eval", "--real", str(tmp_path / "real.npz"), "--fake", str(tmp_path / "other.npz"),
                     "--features", features, "--metrics", "mmd,c2st,kid,fd,pr,modes", "--json"], capsys)
    # 3,000 samples over 1,000 equally likely modes leave about 1000 e^-3 = 50 empty by chance
    assert same["num_modes"] == 1000 and same["modes_covered"] >= 920 and same["real_modes_covered"] >= 920
    assert same["kl_mode_histogram"] < 0.4, same  # the finite-sample floor at 3 samples per mode
    assert same["mmd_p_value"] > 0.01 and same["c2st_p_value"] > 0.01
    assert set(same) >= {"features", "num_real", "num_fake", "mmd2", "mmd_p_value", "c2st_accuracy",
                         "c2st_p_value", "kid", "kid_std", "frechet_distance", "precision", "recall",
                         "modes_covered", "num_modes", "kl_mode_histogram", "real_modes_covered",
                         "real_kl_mode_histogram"}
    bad = run_json(["eval", "--real", str(tmp_path / "real.npz"), "--fake", str(tmp_path / "collapsed.npy"),
                    "--features", features, "--metrics", "modes,mmd", "--json"], capsys)
    assert bad["modes_covered"] <= 100 and bad["kl_mode_histogram"] > 2.0
    assert bad["mmd_p_value"] < 0.01
    pixels = run_json(["eval", "--real", str(tmp_path / "real.npz"), "--fake", str(tmp_path / "collapsed.npy"),
                       "--metrics", "fd", "--json"], capsys)
    assert pixels["features"] == "pixels" and pixels["frechet_distance"] > 0


@pytest.mark.parametrize("argv, message", [
    (["eval", "--real", "R", "--fake", "F", "--metrics", "bogus"], "--metrics: unknown bogus"),
    (["eval", "--real", "R"], "pass either RUN_DIR, or both --real A and --fake B"),
    (["eval", "--real", "R", "--fake", "F", "--metrics", "modes"], "--metrics modes: counting modes needs a classifier"),
    (["eval", "--real", "R", "--fake", "F", "--features", "inception:/nowhere/w.pth"], "inception:/nowhere/w.pth: no such file"),
    (["eval", "--real", "R", "--fake", "F", "--features", "resnet"], "unknown feature space 'resnet'"),
    (["eval", "--real", "R", "--fake", "F", "--features", "classifier:/nowhere"], "no classifier.json"),
    (["eval", "--real", "R", "--fake", "POINTS"], "--real has samples of shape (1, 8, 8), --fake (2,)"),
    (["classifier", "train", "--data", "swissroll", "--out", "OUT"], "no labels"),
    (["classifier", "train", "--data", "nothing_like_this", "--out", "OUT"], "not a prepared data folder or a source"),
])
def test_bad_input_is_one_line_with_exit_code_2(argv, message, tmp_path, capsys):
    x = build_stacked_digits(0, 50).x[:, :1]
    np.save(tmp_path / "r.npy", x)
    np.save(tmp_path / "f.npy", x[::-1].copy())
    np.save(tmp_path / "p.npy", np.zeros((50, 2), np.float32))
    names = {"R": tmp_path / "r.npy", "F": tmp_path / "f.npy", "POINTS": tmp_path / "p.npy", "OUT": tmp_path / "o"}
    capsys.readouterr()
    assert main([str(names.get(arg, arg)) for arg in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gendist: error:") and message in err[0], err


def test_inception_features_feed_torch_fidelity_uint8_rgb(tmp_path, monkeypatch):
    """torch-fidelity is not installed here (it pulls torchvision); a stand-in with its constructor and call
    signature checks gendist's side: the weights path is passed on, images reach it as uint8 RGB in 0..255,
    grey ones repeated to 3 channels, and its 2048-d output comes back as the features."""
    import sys
    import types

    import torch

    from gendist.features import build_featurizer

    seen = {}

    class FeatureExtractorInceptionV3(torch.nn.Module):
        def __init__(self, name, features_list, feature_extractor_weights_path=None):
            super().__init__()
            seen.update(name=name, features=features_list, weights=feature_extractor_weights_path)

        def forward(self, x):
            seen.setdefault("batches", []).append(x)
            return (x.float().mean(dim=(2, 3)).repeat(1, 683)[:, :2048],)

    module = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    module.FeatureExtractorInceptionV3 = FeatureExtractorInceptionV3
    monkeypatch.setitem(sys.modules, "torch_fidelity", types.ModuleType("torch_fidelity"))
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", module)
    weights = tmp_path / "pt_inception.pth"
    weights.write_bytes(b"0")
    featurizer = build_featurizer(f"inception:{weights}", (1, 8, 8))
    x = np.linspace(0, 1, 300 * 64, dtype=np.float32).reshape(300, 1, 8, 8)
    features = featurizer.features(x)
    assert seen["weights"] == str(weights) and seen["features"] == ["2048"]
    assert features.shape == (300, 2048)
    batch = seen["batches"][0]
    assert batch.dtype == torch.uint8 and batch.shape[1] == 3 and int(batch.max()) <= 255
    assert torch.equal(batch[:, 0], batch[:, 1]) and int(batch[-1].max()) > 200


def test_training_evaluates_in_classifier_features_with_the_chosen_metrics(classifier, tmp_path, monkeypatch):
    """eval.features=classifier:DIR and eval.metrics in a (short, in-process) digits GAN run: eval.json holds
    exactly the chosen groups (and the GAN's per-sample scores, which are always reported), the classifier's
    class histogram, and the per-class grid and mode histogram pictures are written."""
    monkeypatch.setenv("GENDIST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    assert main(["train", "configs/gan_digits.yaml", f"run.dir={run_dir}", "train.max_steps=4", "train.batch_size=32",
                 "log.every=2", "ckpt.every=0", "log.sample_every=0", "log.wandb=false", "log.progress=false",
                 "eval.num_samples=600", f"eval.features=classifier:{classifier}", "eval.metrics=[mmd,c2st,modes]"]) == 0
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert set(evaluation) == {"step", "mmd2", "c2st_accuracy", "c2st_p_value", "modes_covered", "num_modes",
                               "kl_mode_histogram", "d_real", "train/d_real", "gap/d_real",
                               "gap_se/d_real"}, evaluation  # scores: always
    assert evaluation["num_modes"] == 10 and 1 <= evaluation["modes_covered"] <= 10
    assert (run_dir / "samples" / "classes_step_00000004.png").is_file()
    assert (run_dir / "plots" / "modes_step_00000004.png").is_file()


@pytest.mark.parametrize("override, message", [
    ("eval.metrics=[mmd,bogus]", "eval.metrics has unknown bogus"),
    ("eval.features=resnet", "eval.features must be pixels, classifier:DIR or inception:PATH"),
    ("ckpt.best_mode=median", "ckpt.best_mode"),
])
def test_bad_evaluation_options_are_one_line(override, message, tmp_path, capsys):
    capsys.readouterr()
    assert main(["train", "configs/gan_ring.yaml", f"run.dir={tmp_path / 'run'}", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
