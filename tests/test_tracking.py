"""W&B offline run files, read back; resume appends to the same W&B run."""
import json

import pytest

from helpers import gendist_command, make_env, read_metrics, read_wandb_records, run

pytestmark = pytest.mark.slow


def logged_history(run_dir):
    history = {}
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        for record in read_wandb_records(path):
            if record.WhichOneof("record_type") == "history":
                items = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item}
                history[items["_step"]] = items
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
