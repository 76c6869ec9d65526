"""W&B offline run files, read back; resume appends to the same W&B run."""
import json

import pytest

from helpers import gendist_command, make_env, read_metrics, read_wandb_records, run

pytestmark = [pytest.mark.slow, pytest.mark.one_process]


def logged_history(run_dir):
    history = {}
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        for record in read_wandb_records(path):
            if record.WhichOneof("record_type") == "history":
                items = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item}
                history.setdefault(items["_step"], {}).update(items)
    return history


def test_wandb_offline_run_holds_config_and_metrics_and_resumes_same_id(tmp_path):
    env = make_env(tmp_path / "cache")
    env.pop("WANDB_API_KEY", None)
    run_dir = tmp_path / "run"
    common = ["train", "configs/gan_ring.yaml", f"run.dir={run_dir}", "log.every=10", "ckpt.every=20",
              "log.sample_every=20", "log.progress=false", "eval.num_samples=300"]
    run(gendist_command(*common, "train.max_steps=20"), env)
    run(gendist_command(*common, "train.max_steps=40"), env)  # resumes from step 20
    run_files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(run_files) == 2 and len({p.name for p in run_files}) == 1  # the same run id, twice
    history = logged_history(run_dir)
    assert {10, 20, 30, 40} <= set(history)
    assert history[40]["generator/loss"] == pytest.approx(
        [m for m in read_metrics(run_dir) if m["step"] == 40 and "generator/loss" in m][0]["generator/loss"])
    records = read_wandb_records(run_files[0])
    (run_record,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run_record.config.update}
    assert config["train"]["max_steps"] == 20 and config["model"]["recipe"] == "gan"


def test_wandb_offline_files_hold_evaluation_metrics_images_and_discriminator_histograms(tmp_path):
    """A short gan_ring run with W&B offline: the run file holds the config, the losses, every evaluation
    metric under eval/, the sample grid, the curves picture and the discriminator-output histograms; the PNGs
    are in RUN/plots too; each evaluation step is evaluated once."""
    env = make_env(tmp_path / "cache")
    env.pop("WANDB_API_KEY", None)
    run_dir = tmp_path / "run"
    run(gendist_command("train", "configs/gan_ring.yaml", f"run.dir={run_dir}", "train.max_steps=40", "log.every=10",
                        "ckpt.every=20", "log.sample_every=20", "eval.every=20", "log.progress=false",
                        "eval.num_samples=300", "ckpt.best_metric=mmd2"), env)
    history = logged_history(run_dir)
    evaluation = json.loads((run_dir / "eval.json").read_text())
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # bug caught: the last step evaluated twice (eval.every divides max_steps, then the end of the run again)
    assert [line["step"] for line in lines if "eval/mmd2" in line] == [20, 40]
    for key, value in evaluation.items():
        if key != "step":
            assert history[40][f"eval/{key}"] == pytest.approx(value, nan_ok=True), key
    assert {"eval/mmd2", "eval/modes_covered", "generator/loss", "discriminator/loss"} <= set(history[20])
    for key in ("samples", "plots/curves", "plots/discriminator_outputs"):  # nested keys read back flat
        assert history[40][f"{key}/_type"] == "image-file", key
    for key in ("discriminator/real", "discriminator/generated"):
        assert history[40][f"{key}/_type"] == "histogram" and sum(history[40][f"{key}/values"]) > 0, key
    (run_file,) = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    (run_record,) = [r.run for r in read_wandb_records(run_file) if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run_record.config.update}
    assert config["eval"]["every"] == 20 and config["ckpt"]["best_metric"] == "mmd2"
    assert (run_dir / "plots" / "curves.png").is_file() and (run_dir / "plots" / "discriminator_step_00000040.png").is_file()
    best = json.loads((run_dir / "best" / "best.json").read_text())
    assert best["metric"] == "mmd2" and best["mode"] == "min" and best["step"] in (20, 40)
    assert best["value"] == min(h["eval/mmd2"] for h in history.values() if "eval/mmd2" in h)
    assert (run_dir / "best" / "checkpoint" / "players" / "generator.safetensors").is_file()
    again = json.loads(run(gendist_command("eval", str(run_dir), "--json", "--checkpoint", "best",
                                           "--num-samples", "300"), env).stdout.strip().splitlines()[-1])
    assert again["step"] == best["step"] and again["mmd2"] == pytest.approx(best["value"], rel=1e-6)
