"""Standard webdataset shards, as webdataset's own TarWriter and the usual converters write them (one sample
per member group: `__key__`, `png`/`jpg`, `cls`), train directly through data.shards, with the same guarantees
as gendist's own packed shards: sample ids from `__key__`, labels from `cls`, exact resume after SIGKILL."""
import io

import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from sklearn.datasets import load_digits

from helpers import gendist_command, latest_step, launch_and_kill_at_step, make_env, read_metrics, run

pytestmark = [pytest.mark.slow, pytest.mark.one_process]
QUIET = ["log.wandb=false", "log.progress=false", "log.sample_every=0", "eval.num_samples=64"]


def write_digit_shards(folder, image_format: str) -> tuple[str, str]:
    """All 1,797 digits as 16x16 images: train-000000.tar (1,500) and test-000000.tar (297)."""
    digits = load_digits()
    images = (np.kron(digits.images / 16.0, np.ones((2, 2))) * 255).astype(np.uint8)  # (N, 16, 16)
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", range(0, 1500)), ("test", range(1500, len(images)))):
        with wds.TarWriter(str(folder / f"{split}-000000.tar")) as writer:
            for row in rows:
                encoded = io.BytesIO()
                Image.fromarray(images[row]).save(encoded, format=image_format)
                writer.write({"__key__": f"digit{row:05d}", image_format.lower().replace("jpeg", "jpg"): encoded.getvalue(),
                              "cls": int(digits.target[row])})
    return str(folder / "train-000000.tar"), str(folder / "test-000000.tar")


@pytest.mark.parametrize("image_format", ["JPEG"])  # PNG: the resume test below
def test_standard_shards_train_directly(image_format, tmp_path):
    train, test = write_digit_shards(tmp_path / "shards", image_format)
    env = make_env(tmp_path / "cache")
    run_dir = tmp_path / "run"
    run(gendist_command("train", "configs/gan_digits.yaml", f"data.shards={train}", f"data.test_shards={test}",
                        f"run.dir={run_dir}", "train.max_steps=20", "train.batch_size=64", "log.every=10",
                        "ckpt.every=0", "log.data_keys=true", *QUIET), env)
    losses = [m for m in read_metrics(run_dir) if "generator/loss" in m]
    assert [m["step"] for m in losses] == [10, 20] and all(np.isfinite(m["discriminator/loss"]) for m in losses)
    run(gendist_command("sample", str(run_dir), "--n", "4", "--out", str(tmp_path / "x.npy")), env)
    assert np.load(tmp_path / "x.npy").shape == (4, 1, 16, 16)
    consumed = [line for line in (run_dir / "data_keys" / "rank_00000.jsonl").read_text().splitlines()]
    assert len(consumed) == 20


def test_standard_shards_resume_exactly_after_sigkill(tmp_path):
    train, test = write_digit_shards(tmp_path / "shards", "PNG")
    env = make_env(tmp_path / "cache")

    def command(run_dir):  # 1,500 samples / 64 = 23 batches an epoch: the run crosses epochs
        return gendist_command("train", "configs/gan_digits.yaml", f"data.shards={train}", f"data.test_shards={test}",
                               f"run.dir={run_dir}", "train.max_steps=80", "train.batch_size=64", "log.every=1",
                               "ckpt.every=15", "log.data_keys=true", "data.shuffle_buffer=256", *QUIET)

    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    run(command(reference), env)
    launch_and_kill_at_step(command(interrupted), env, interrupted, 40, tmp_path / "killed.log")
    saved = latest_step(interrupted)
    assert saved is not None and 15 <= saved < 80
    resumed = run(command(interrupted), env)
    assert f"(step {saved})" in resumed.stdout
    keys = {name: (folder / "data_keys" / "rank_00000.jsonl").read_text() for name, folder in
            (("reference", reference), ("interrupted", interrupted))}
    assert keys["interrupted"] == keys["reference"] and len(keys["reference"].splitlines()) == 80
    expected = {m["step"]: m["generator/loss"] for m in read_metrics(reference) if "generator/loss" in m}
    got = {m["step"]: m["generator/loss"] for m in read_metrics(interrupted) if "generator/loss" in m}
    assert got == expected
