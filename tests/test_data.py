"""gendist.data: sources, crash-safe packed shards + manifest, and the deterministic resumable loader.
Real files in tmp folders, no mocks; small data so the whole module runs in seconds."""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gendist.data import (ShardLoader, load_manifest, load_source, measure_throughput, prepare_dataset,
                          resolve_shards)
from gendist.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def shard_urls(folder: Path, manifest: dict, split: str = "train") -> list[str]:
    return [str(folder / shard["name"]) for shard in manifest["splits"][split]["shards"]]


def collect_idx(loader: ShardLoader, num_batches: int) -> list[list[int]]:
    return [batch["idx"].tolist() for batch in itertools.islice(iter(loader), num_batches)]


@pytest.fixture(scope="module")
def ring(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("ring")
    return folder, prepare_dataset("ring", folder)


@pytest.fixture(scope="module")
def points(tmp_path_factory) -> tuple[Path, dict]:
    """3,000 labelled points -> 2,700 train samples in uneven shards of 700/700/700/600, blocks of 64."""
    folder = tmp_path_factory.mktemp("points")
    rng = np.random.default_rng(0)
    np.savez(folder / "points.npz", x=rng.standard_normal((3000, 2)), y=rng.integers(0, 5, 3000))
    return folder, prepare_dataset(f"npz:{folder / 'points.npz'}", folder / "shards", shard_size=700,
                                   test_fraction=0.1, block_size=64)


# ---------------------------------------------------------------- sources

def test_ring_source_has_eight_tight_modes_on_the_unit_circle():
    data = load_source("ring", seed=3)
    assert data.x.shape == (100_000, 2) and data.x.dtype == np.float32 and data.y.dtype == np.int64
    assert data.kind == "points" and data.modes.shape == (8, 2) and data.mode_std == 0.01
    np.testing.assert_allclose(np.linalg.norm(data.modes, axis=1), 1.0)
    offsets = data.x - data.modes[data.y]
    assert abs(offsets.std() - 0.01) < 0.0005
    assert set(np.unique(data.y)) == set(range(8))
    np.testing.assert_array_equal(load_source("ring", seed=3).x, data.x)
    assert not np.array_equal(load_source("ring", seed=4).x, data.x)


def test_grid_source_has_25_modes():
    data = load_source("grid", seed=0, num_samples=20_000)
    assert data.x.shape == (20_000, 2) and data.modes.shape == (25, 2)
    expected = {(a, b) for a in (-4, -2, 0, 2, 4) for b in (-4, -2, 0, 2, 4)}
    assert {tuple(m) for m in data.modes.tolist()} == expected
    assert abs((data.x - data.modes[data.y]).std() - 0.05) < 0.002


def test_digits_source_is_scaled_images():
    data = load_source("digits")
    assert data.x.shape == (1797, 1, 8, 8) and data.x.dtype == np.float32 and data.kind == "images"
    assert data.x.min() == 0.0 and data.x.max() == 1.0 and set(np.unique(data.y)) == set(range(10))


def test_npz_source_round_trip_and_errors(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (10, 6, 6), dtype=np.uint8)
    np.savez(tmp_path / "ok.npz", x=images, y=np.arange(10))
    data = load_source(f"npz:{tmp_path / 'ok.npz'}")
    assert data.kind == "images" and data.x.shape == (10, 1, 6, 6)
    np.testing.assert_allclose(data.x[:, 0], images / 255.0, atol=1e-6)
    np.testing.assert_array_equal(data.y, np.arange(10))
    np.savez(tmp_path / "nox.npz", z=np.zeros(3))
    np.savez(tmp_path / "bad_y.npz", x=np.zeros((4, 2)), y=np.zeros(3))
    cases = [("npz:/nonexistent/a.npz", "does not exist"), (f"npz:{tmp_path / 'nox.npz'}", "no array 'x'"),
             (f"npz:{tmp_path / 'bad_y.npz'}", "len(y)=3 but len(x)=4"), ("mnist", "valid sources: ring")]
    for spec, expected in cases:
        with pytest.raises(UserError, match=re.escape(expected)):
            load_source(spec)


def test_an_npz_with_a_test_mask_keeps_its_own_split(tmp_path):
    """Catches an npz's `test` rows ignored (a random split instead: a user's held-out set leaks into
    training) and a malformed mask accepted: `data prepare` holds out exactly the marked rows, with their labels."""
    from gendist.data import load_manifest
    from gendist.data.shards import prepare_dataset
    from gendist.engine.data_setup import iterate_in_order, split_urls

    x = np.arange(20, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    test = np.zeros(20, bool)
    test[[3, 7, 11]] = True
    np.savez(tmp_path / "split.npz", x=x, y=np.arange(20) % 4, test=test)
    prepare_dataset(f"npz:{tmp_path / 'split.npz'}", tmp_path / "out")
    manifest = load_manifest(tmp_path / "out")
    held_out = np.concatenate([b["x"][:, 0].numpy() for b in iterate_in_order(split_urls(tmp_path / "out", manifest, "test"), manifest)])
    assert sorted(held_out.tolist()) == [3.0, 7.0, 11.0] and manifest["num_classes"] == 4
    np.savez(tmp_path / "bad.npz", x=x, test=np.ones(20, bool))
    with pytest.raises(UserError, match="both splits need at least one row"):
        load_source(f"npz:{tmp_path / 'bad.npz'}")
    np.savez(tmp_path / "bad2.npz", x=x, test=np.full(20, 2))
    with pytest.raises(UserError, match="array test must be 20 booleans"):
        load_source(f"npz:{tmp_path / 'bad2.npz'}")


def write_image_folder(root: Path, mode: str = "L") -> None:
    """Two classes of tiny images; one has a different size (gets resized), one is a JPEG."""
    rng = np.random.default_rng(0)
    for class_name, count in (("cats", 3), ("dogs", 2)):
        (root / class_name).mkdir(parents=True)
        for i in range(count):
            shape = (5, 4) if mode == "L" else (5, 4, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / class_name / f"{i}.png")
    Image.fromarray(np.zeros((10, 8), dtype=np.uint8), "L").save(root / "dogs" / "big.png")
    Image.fromarray(np.full((5, 4), 200, dtype=np.uint8), "L").save(root / "dogs" / "photo.jpg", quality=95)


def test_folder_source_classes_modes_and_sizes(tmp_path):
    write_image_folder(tmp_path / "gray")
    data = load_source(f"folder:{tmp_path / 'gray'}")
    assert data.kind == "images" and data.image_mode == "L" and data.x.shape == (7, 1, 5, 4)
    assert data.y.tolist() == [0, 0, 0, 1, 1, 1, 1]  # cats, then dogs (sorted file names)
    assert 0.0 <= data.x.min() and data.x.max() <= 1.0
    assert [ext for ext, _ in data.encoded].count("jpg") == 1
    write_image_folder(tmp_path / "rgb", mode="RGB")
    assert load_source(f"folder:{tmp_path / 'rgb'}").x.shape == (7, 3, 5, 4)
    with pytest.raises(UserError, match="does not exist"):
        load_source(f"folder:{tmp_path / 'missing'}")


def test_folder_shards_store_encoded_images_one_per_member(tmp_path):
    write_image_folder(tmp_path / "images")
    manifest = prepare_dataset(f"folder:{tmp_path / 'images'}", tmp_path / "shards", test_fraction=0.3)
    assert manifest["image_mode"] == "L" and manifest["block_size"] == 1
    names = tarfile.open(tmp_path / "shards" / "train-000000.tar").getnames()
    assert len([n for n in names if n.endswith((".png", ".jpg"))]) == manifest["splits"]["train"]["num_samples"]
    source = load_source(f"folder:{tmp_path / 'images'}")
    loader = ShardLoader(shard_urls(tmp_path / "shards", manifest), manifest, batch_size=5, seed=0)
    batch = next(iter(loader))
    assert batch["x"].shape == (5, 1, 5, 4) and batch["x"].dtype == torch.float32 and batch["y"].dtype == torch.int64
    # decoded pixels equal the source's pixels, whichever source row each sample came from
    source_rows = {row.tobytes(): label for row, label in zip(source.x, source.y)}
    for x, y in zip(batch["x"].numpy(), batch["y"].tolist()):
        assert source_rows[x.tobytes()] == y


# ---------------------------------------------------------------- prepare

def test_prepare_manifest_counts_hashes_packing_and_split(ring):
    folder, manifest = ring
    assert manifest["format"] == "gendist-shards/1" and manifest["kind"] == "points"
    assert manifest["sample_shape"] == [2] and manifest["has_labels"] and len(manifest["modes"]) == 8
    assert load_manifest(folder) == manifest
    train, test = manifest["splits"]["train"], manifest["splits"]["test"]
    assert (train["num_samples"], test["num_samples"]) == (90_000, 10_000)
    members, disk_bytes = 0, 0
    for split in (train, test):
        assert sum(shard["num_samples"] for shard in split["shards"]) == split["num_samples"]
        for shard in split["shards"]:
            path = folder / shard["name"]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]
            assert path.stat().st_size == shard["bytes"]
            members += len(tarfile.open(path).getnames())
            disk_bytes += shard["bytes"]
    assert members <= 3 * 110  # ~100 blocks of 1,024 samples x (x, y, idx): not 100k members
    payload = 100_000 * (2 * 4 + 8 + 8)  # x float32 (2,), y int64, idx int64
    assert disk_bytes < 1.5 * payload
    train_x = next(iter(ShardLoader(shard_urls(folder, manifest), manifest, 90_000, seed=0)))["x"].numpy()
    test_x = next(iter(ShardLoader(shard_urls(folder, manifest, "test"), manifest, 10_000, seed=0)))["x"].numpy()
    assert not {row.tobytes() for row in train_x} & {row.tobytes() for row in test_x}


def test_prepare_is_deterministic_and_rerun_replaces_old_shards(tmp_path):
    first = prepare_dataset("grid", tmp_path, shard_size=20_000)
    assert len(first["splits"]["train"]["shards"]) == 5
    second = prepare_dataset("grid", tmp_path, shard_size=50_000)
    assert len(second["splits"]["train"]["shards"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "test-000000.tar", "train-000000.tar",
                                                          "train-000001.tar"]
    third = prepare_dataset("grid", tmp_path, shard_size=50_000)
    assert third == second  # same seed: byte-identical shards (same sha256)


def test_killed_writer_leaves_no_truncated_shard(tmp_path):
    script = ("import sys, time\nfrom pathlib import Path\nfrom gendist.data.shards import ShardWriter\n"
              "writer = ShardWriter(Path(sys.argv[1]) / 'train-000000.tar')\n"
              "for i in range(1000):\n"
              "    writer.write({'__key__': f'b{i:06d}', 'x.npy': bytes(50_000)})\n"
              "    writer.file.flush()\n"
              "    print('wrote', i, flush=True)\n"
              "    time.sleep(0.05)\n"
              "writer.close()\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                               env=env, cwd=ROOT)
    for _ in range(3):  # a few blocks are on disk: the kill lands mid-shard
        assert process.stdout.readline().startswith("wrote")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    process.stdout.close()
    temp_files = list(tmp_path.glob("train-000000.tar.tmp-*"))
    assert len(temp_files) == 1 and temp_files[0].stat().st_size > 100_000
    assert not list(tmp_path.glob("*.tar"))
    np.savez(tmp_path / "small.npz", x=np.zeros((20, 2)))
    prepare_dataset(f"npz:{tmp_path / 'small.npz'}", tmp_path)  # a later prepare removes the dead writer's file
    assert not list(tmp_path.glob("*.tmp-*"))
    for path in tmp_path.glob("*.tar"):
        tarfile.open(path).getnames()  # every final-named shard is complete


# ---------------------------------------------------------------- loader

def test_loader_is_deterministic_per_seed_and_epoch(points):
    folder, manifest = points
    urls = shard_urls(folder / "shards", manifest)
    make = lambda seed: ShardLoader(urls, manifest, batch_size=100, seed=seed, shuffle_buffer=256)
    loader = make(0)
    per_epoch = loader.num_batches(0)
    assert per_epoch == 27
    two_epochs = collect_idx(loader, 2 * per_epoch)
    assert collect_idx(make(0), 2 * per_epoch) == two_epochs
    first, second = two_epochs[:per_epoch], two_epochs[per_epoch:]
    assert sorted(sum(first, [])) == list(range(2700)) and sorted(sum(second, [])) == list(range(2700))
    assert first != second and collect_idx(make(1), per_epoch) != first
    batch = next(iter(make(0)))
    assert batch["x"].dtype.is_floating_point and batch["x"].shape == (100, 2) and batch["y"].shape == (100,)


@pytest.mark.parametrize("world_size", [2, 3, 5])
def test_shard_split_ranks_are_disjoint_with_equal_batch_counts(points, world_size):
    # 4 uneven shards: 2 and 3 ranks split by shard, 5 ranks split by block
    folder, manifest = points
    urls = shard_urls(folder / "shards", manifest)
    seen, counts = [], []
    for rank in range(world_size):
        loader = ShardLoader(urls, manifest, batch_size=32, seed=0, rank=rank, world_size=world_size)
        counts.append(loader.num_batches(1))
        loader.set_epoch(1)
        seen.append({i for batch in collect_idx(loader, counts[-1]) for i in batch})
        assert loader.epoch == 2  # exactly one epoch was consumed
    assert len(set(counts)) == 1 and counts[0] > 0
    assert sum(len(s) for s in seen) == len(set().union(*seen))


def test_global_split_equals_one_process_with_the_global_batch(points):
    folder, manifest = points
    urls = shard_urls(folder / "shards", manifest)
    single = collect_idx(ShardLoader(urls, manifest, batch_size=64, seed=5, split_mode="global"), 60)
    ranks = [collect_idx(ShardLoader(urls, manifest, batch_size=32, seed=5, rank=rank, world_size=2,
                                     split_mode="global"), 60) for rank in range(2)]
    assert [a + b for a, b in zip(*ranks)] == single


@pytest.mark.parametrize("num_workers", [0, 2])
def test_global_split_with_accumulation_equals_the_global_batch_across_epochs(points, num_workers):
    """Micro-step m of rank r gets rows (m * world + r) * batch of the optimizer step's global batch, and epochs
    and shuffle-buffer flushes are cut at the global batch: 2,700 samples leave 2,680 rows per epoch at 40 but
    2,700 at 20 (the old stream of batch_size * world_size rows), and a 100-row shuffle buffer emits whole
    batches per flush, so a stream of 20-row batches would also drift from one of 40 within an epoch."""
    folder, manifest = points
    urls = shard_urls(folder / "shards", manifest)
    steps, common = 150, dict(seed=5, split_mode="global", shuffle_buffer=100, num_workers=num_workers)
    single = collect_idx(ShardLoader(urls, manifest, batch_size=40, **common), steps)
    for world_size, accum in ((1, 2), (2, 2), (1, 4)):
        size = 40 // (world_size * accum)
        ranks = [collect_idx(ShardLoader(urls, manifest, batch_size=size, rank=rank, world_size=world_size,
                                         micro_batches=accum, **common), steps * accum) for rank in range(world_size)]
        merged = [sum((ranks[rank][step * accum + micro] for micro in range(accum) for rank in range(world_size)), [])
                  for step in range(steps)]
        assert merged == single, (world_size, accum)


@pytest.mark.parametrize("split_mode", ["shard", "global", "owner"])
def test_memory_cache_yields_the_same_batches_and_decodes_each_shard_once(points, split_mode, monkeypatch):
    from gendist.data import loader as loader_module

    folder, manifest = points
    urls = shard_urls(folder / "shards", manifest)
    make = lambda cache: ShardLoader(urls, manifest, batch_size=50, seed=3, rank=1, world_size=2,
                                     split_mode=split_mode, shuffle_buffer=256, memory_cache_bytes=cache)
    plain = make(0)
    epochs = 3 * plain.num_batches(0)
    expected = [{k: v.tolist() for k, v in batch.items()} for batch, _ in zip(plain, range(epochs))]
    reads = []
    real_read_blocks = loader_module.read_blocks
    monkeypatch.setattr(loader_module, "read_blocks", lambda tasks, *rest: reads.extend(t.url for t in tasks)
                        or real_read_blocks(tasks, *rest))
    cached = make(1 << 30)
    assert [{k: v.tolist() for k, v in batch.items()} for batch, _ in zip(cached, range(epochs))] == expected
    assert len(reads) == len(set(reads)) and cached.cache.used > 0  # every shard decoded once, then from memory
    # a budget smaller than one shard caches nothing and changes nothing
    reads.clear()
    tiny = make(64)
    assert [{k: v.tolist() for k, v in batch.items()} for batch, _ in zip(tiny, range(epochs))] == expected
    assert tiny.cache.used == 0 and len(reads) > len(set(reads))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_is_exact_within_and_across_epochs(points, num_workers):
    folder, manifest = points
    urls = shard_urls(folder / "shards", manifest)
    make = lambda: ShardLoader(urls, manifest, batch_size=200, seed=2, num_workers=num_workers, shuffle_buffer=512)
    assert make().num_batches() == 13
    # 7 + 5 stays in epoch 0; 12 + 5 crosses into epoch 1; 13 resumes at the start of epoch 1
    for taken, position in ((7, (0, 7)), (12, (0, 12)), (13, (1, 0))):
        loader = make()
        batches = iter(loader)
        for _ in range(taken):
            next(batches)
        state = loader.state_dict()
        assert (state["epoch"], state["batches_in_epoch"]) == position
        expected = [next(batches)["idx"].tolist() for _ in range(5)]
        resumed = make()
        resumed.load_state_dict(json.loads(json.dumps(state)))  # survives a JSON checkpoint
        assert collect_idx(resumed, 5) == expected


def test_workers_are_deterministic_and_cover_the_data(points):
    folder, manifest = points
    urls = shard_urls(folder / "shards", manifest)
    make = lambda: ShardLoader(urls, manifest, batch_size=100, seed=0, num_workers=2)
    first = collect_idx(make(), make().num_batches())
    assert collect_idx(make(), len(first)) == first
    flat = sum(first, [])
    assert len(set(flat)) == len(flat) > 2000


def test_corrupt_shard_raises_with_its_name_or_is_skipped(points, tmp_path):
    folder, manifest = points
    shutil.copytree(folder / "shards", tmp_path / "copy")
    urls = shard_urls(tmp_path / "copy", manifest)
    broken = Path(urls[1])
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    for num_workers in (0, 2):  # a worker's error arrives as the same one-line UserError
        loader = ShardLoader(urls, manifest, batch_size=100, seed=0, num_workers=num_workers)
        with pytest.raises(UserError, match=f"shard .*{broken.name}"):
            collect_idx(loader, loader.num_batches())
    with pytest.raises(UserError, match=broken.name):  # without a manifest, the scan finds it
        ShardLoader(urls, None, batch_size=100, seed=0)
    skipping = ShardLoader(urls, manifest, batch_size=100, seed=0, on_error="skip")
    batches = collect_idx(skipping, skipping.num_batches())
    assert skipping.skipped >= 1 and len(batches) >= 20
    assert ShardLoader(urls, None, batch_size=100, seed=0, on_error="skip").skipped == 1


def test_resolve_shards_and_manifest_errors(ring, tmp_path):
    folder, manifest = ring
    names = [shard["name"] for shard in manifest["splits"]["train"]["shards"]]
    expected = [str(folder / name) for name in names]
    assert resolve_shards(str(folder)) == expected
    assert resolve_shards(str(folder / "train-*.tar")) == expected
    assert resolve_shards(str(folder / f"train-{{000000..{len(names) - 1:06d}}}.tar")) == expected
    with pytest.raises(UserError, match="no shard matches"):
        resolve_shards(str(tmp_path / "nothing-*.tar"))
    with pytest.raises(UserError, match="does not exist"):
        resolve_shards(str(folder / "train-{000000..000099}.tar"))
    with pytest.raises(UserError, match="no manifest"):
        load_manifest(tmp_path)
    loader = ShardLoader(resolve_shards(str(folder / "train-*.tar")), None, batch_size=500, seed=0)
    assert loader.num_batches() == 180  # counts from a scan equal the manifest's
    with pytest.raises(UserError, match="lower train.batch_size"):
        ShardLoader(expected, manifest, batch_size=100_000, seed=0)


def test_packed_ring_reads_fast(ring):
    folder, manifest = ring
    samples_per_second = measure_throughput(shard_urls(folder, manifest), manifest, batch_size=256)
    print(f"packed ring read throughput: {samples_per_second:,.0f} samples/s")
    assert samples_per_second > 100_000  # single-sample tar members manage ~6,000/s


def test_standard_member_groups_decode_with_ids_from_keys_and_labels_from_cls_or_json():
    import io as _io

    from gendist.data.reading import decode_group, sample_id

    def npy(array):
        buffer = _io.BytesIO()
        np.save(buffer, array)
        return buffer.getvalue()

    block = decode_group({"__key__": "000123", "npy": npy(np.arange(6, dtype=np.float32).reshape(2, 3)),
                          "json": b'{"label": 4}'}, None)
    assert block.x.shape == (1, 1, 2, 3) and block.y.tolist() == [4] and block.idx.tolist() == [123]
    points = decode_group({"__key__": "a/b", "npy": npy(np.array([0.5, 1.5])), "cls": b"7"}, None)
    assert points.x.shape == (1, 2) and points.y.tolist() == [7]
    assert points.idx.tolist() == [sample_id({"__key__": "a/b"})] and 0 <= points.idx[0] < 2 ** 63
    assert sample_id({"__key__": "a/b"}) != sample_id({"__key__": "a/c"})
    with pytest.raises(ValueError, match="no sample"):
        decode_group({"__key__": "x", "txt": b"hello"}, None)


def test_npy_members_decode_like_numpy_with_cached_headers_and_refuse_objects_and_short_data():
    from gendist.data.reading import load_npy

    arrays = [np.arange(12, dtype=np.float32).reshape(3, 4), np.asfortranarray(np.arange(6.0).reshape(2, 3)),
              np.arange(5, dtype=np.int64), np.zeros((0, 2), np.uint8), np.array(3.5)]
    for array in arrays * 2:  # the second pass reads cached headers
        buffer = io.BytesIO()
        np.save(buffer, array)
        loaded = load_npy({"x.npy": buffer.getvalue()}, "x.npy")
        assert loaded.dtype == array.dtype and loaded.shape == array.shape and np.array_equal(loaded, array)
        if array.size:  # a member cut short is an error (read_shard names the shard and member)
            with pytest.raises(ValueError):
                load_npy({"x.npy": buffer.getvalue()[:-1]}, "x.npy")
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="Python objects"):
        load_npy({"x.npy": buffer.getvalue()}, "x.npy")
