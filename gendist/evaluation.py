"""Evaluation across ranks: sample-based metrics that fit the data, not likelihood alone.

Evaluation owns the orchestration; recipes only expose `sample(nets, count, generator, inputs)` (translation
recipes `translate(nets, x, direction)`) and, optionally, per-sample scores on held-out data
`scores(nets, x, generator) -> {name: (B,)}` (the VAE's ELBO and importance-weighted likelihood, BiGAN's
reconstruction error). The work is cut into chunks of CHUNK samples: generated chunk c is a fixed function of
(seed, c) and held-out chunk c is the c-th CHUNK samples in file order, scored with noise seeded by (seed, c),
so whichever rank draws a chunk, and however many ranks there are, the chunk is the same. Chunk c runs on
rank c mod world size; every rank makes the same number of calls (a rank short of chunks repeats one and
drops it), because a forward through a sharded network (FSDP, ZeRO-3) is a collective. Results (features,
per-sample scores) are gathered once; rank 0 computes the statistics and every rank returns them. Nothing
gathers a network's weights: ranks call the networks as the strategy holds them (StyleGAN2-ADA's
metric_utils does the same: each rank takes its subset, features are gathered).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from gendist.data.info import DataInfo
from gendist.distributed import broadcast_object, gather_object, info, is_distributed

CHUNK = 500  # samples per generated or held-out chunk (the unit of work a rank takes)
MAX_REFERENCE_SAMPLES = 2500  # held-out samples the two-sample statistics compare against
MAX_TEST_SAMPLES = 10_000  # held-out samples scored (likelihoods, reconstructions, translations)
STREAM_SAMPLES, STREAM_SCORES, STREAM_SCORES_B = 1, 2, 3


def chunk_generator(seed: int, stream: int, chunk: int) -> torch.Generator:
    """The CPU generator of one chunk: a function of (seed, stream, chunk) alone."""
    return torch.Generator().manual_seed((seed * 1_000_003 + stream * 7_919 + chunk) % (2 ** 63))


def _rank_and_world() -> tuple[int, int]:
    if not is_distributed():
        return 0, 1
    dist_info = info()
    return dist_info.rank, dist_info.world_size


def _to_numpy(value):
    if isinstance(value, dict):
        return {key: _to_numpy(item) for key, item in value.items()}
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy()
    return value


def map_chunks(count: int, work: Callable[[int], object]) -> list:
    """[work(0), ..., work(count - 1)] on every rank, each computed by rank c mod world size (tensors come
    back as float32 numpy arrays). Every rank calls `work` ceil(count / world) times: sharded forwards are
    collectives, so a rank without a chunk in the last round recomputes chunk 0 and drops the result."""
    rank, world = _rank_and_world()
    mine: dict[int, object] = {}
    with torch.no_grad():
        for round_index in range(math.ceil(count / world)):
            chunk = round_index * world + rank
            if chunk < count:
                mine[chunk] = _to_numpy(work(chunk))
            elif count:
                work(0)
    merged: dict[int, object] = {}
    for part in gather_object(mine):
        merged.update(part)
    return [merged[chunk] for chunk in range(count)]


def chunk_sizes(total: int) -> list[int]:
    return [min(CHUNK, total - start) for start in range(0, total, CHUNK)]


def held_out(test_batches: Sequence[torch.Tensor], limit: int) -> np.ndarray:
    """The first `limit` held-out samples as float32 (N, D)."""
    rows = [x.detach().float().cpu().reshape(x.shape[0], -1).numpy() for x in test_batches]
    return np.concatenate(rows)[:limit] if rows else np.zeros((0, 0), np.float32)


DEFAULT_METRICS = ("mmd", "kid", "fd", "pr", "modes")


def sample_metrics(generated: np.ndarray, reference: np.ndarray, info: DataInfo, seed: int,
                   which: Sequence[str] = DEFAULT_METRICS) -> dict[str, float]:
    """Of `which`: mode coverage for mixtures (modes); MMD² (mmd), the classifier two-sample test (c2st), KID
    (kid), Fréchet distance (fd) and precision/recall (pr) against held-out data.
    generated (N, D), reference (M, D): flattened samples."""
    from gendist.metrics import (classifier_two_sample_test, frechet_distance, kernel_inception_distance, mmd2,
                                 mode_coverage, precision_recall)

    generated = generated.reshape(len(generated), -1)
    metrics: dict[str, float] = {}
    if "modes" in which and info.modes is not None and info.mode_std is not None:
        coverage = mode_coverage(generated, np.asarray(info.modes), info.mode_std)
        metrics.update(modes_covered=int(coverage["modes_covered"]), num_modes=int(coverage["num_modes"]),
                       hq_fraction=float(coverage["hq_fraction"]),
                       kl_mode_histogram=float(coverage["kl_mode_histogram"]))
    if len(reference) >= 2:
        count = min(len(reference), len(generated))
        if "mmd" in which:
            metrics["mmd2"] = float(mmd2(generated[:count], reference[:count]))
        if "c2st" in which and count >= 4:
            test = classifier_two_sample_test(generated[:count], reference[:count], seed=seed)
            metrics.update(c2st_accuracy=float(test["accuracy"]), c2st_p_value=float(test["p_value"]))
        if "fd" in which:
            metrics["frechet_distance"] = float(frechet_distance(generated, reference))
        if "kid" in which:
            metrics["kid"] = float(kernel_inception_distance(generated, reference, seed=seed)["kid"])
        if "pr" in which:
            pr = precision_recall(reference, generated[:count])
            metrics.update(precision=float(pr["precision"]), recall=float(pr["recall"]))
    return metrics


def _mean_scores(chunks: list[dict[str, np.ndarray]], prefix: str = "") -> dict[str, float]:
    if not chunks:
        return {}
    return {prefix + key: float(np.concatenate([chunk[key] for chunk in chunks]).astype(np.float64).mean())
            for key in chunks[0]}


def _memorization_gap(held_out: list[dict[str, np.ndarray]], train: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """train/<score>, gap/<score> = train mean - held-out mean, and gap_se/<score>, the standard error of that
    difference of two independent means, sqrt(var_train / n_train + var_held_out / n_held_out) (sample
    variances): a gap within about two of its standard errors is noise, not memorization (with 180 held-out
    digits it is about 0.1 of D's output)."""
    def values(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {key: np.concatenate([chunk[key] for chunk in chunks]).astype(np.float64)
                for key in chunks[0] if chunks[0][key].ndim == 1}

    held, trained = values(held_out), values(train)
    out: dict[str, float] = {}
    for key, rows in trained.items():
        out[f"train/{key}"] = float(rows.mean())
        out[f"gap/{key}"] = float(rows.mean() - held[key].mean())
        if len(rows) > 1 and len(held[key]) > 1:
            out[f"gap_se/{key}"] = float(math.sqrt(rows.var(ddof=1) / len(rows)
                                                   + held[key].var(ddof=1) / len(held[key])))
    return out


def _reduce_scores(recipe, chunks: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Means of the per-sample scores (one value per sample); scores with several values per sample are
    summarized by the recipe (`reduce_scores`, e.g. a VAE's active units from its posterior means)."""
    if not chunks:
        return {}
    scalar = [key for key in chunks[0] if chunks[0][key].ndim == 1]
    metrics = _mean_scores([{key: chunk[key] for key in scalar} for chunk in chunks])
    rest = {key: np.concatenate([chunk[key] for chunk in chunks]) for key in chunks[0] if key not in scalar}
    if rest:
        metrics.update(recipe.reduce_scores(rest))
    return metrics


def _device_of(nets) -> torch.device:
    """Where the networks run (the featurizer runs there too, on each rank's own chunks)."""
    for net in (nets or {}).values():
        for parameter in net.parameters():
            return parameter.device
    return torch.device("cpu")


def class_metrics(requested: np.ndarray, predicted: np.ndarray | None, generated: np.ndarray,
                  reference: np.ndarray, reference_labels: np.ndarray | None, num_classes: int,
                  min_per_class: int = 10) -> dict[str, float]:
    """A conditional model's metrics: `class_accuracy` (the classifier's prediction is the requested class;
    `class_accuracy_min` its worst class) when a classifier over the same classes gives `predicted`, and
    `intra_class_fd` (the Fréchet distance of each class's samples to that class's held-out data, averaged
    over the classes with at least `min_per_class` of both) when held-out labels are known."""
    from gendist.metrics import frechet_distance

    metrics: dict[str, float] = {}
    if predicted is not None:
        per_class = [float((predicted[requested == k] == k).mean()) for k in range(num_classes) if (requested == k).any()]
        metrics.update(class_accuracy=float((predicted == requested).mean()), class_accuracy_min=min(per_class))
    if reference_labels is not None and len(reference_labels) == len(reference):
        distances = [frechet_distance(generated[requested == k], reference[reference_labels == k])
                     for k in range(num_classes)
                     if (requested == k).sum() >= min_per_class and (reference_labels == k).sum() >= min_per_class]
        if distances:
            metrics["intra_class_fd"] = float(np.mean(distances))
    return metrics


def _reference_labels(test_y: list, count: int) -> np.ndarray | None:
    """The labels of the first `count` held-out samples (the reference), or None when unlabelled."""
    if not test_y or any(y is None for y in test_y):
        return None
    return np.concatenate([y.numpy() for y in test_y])[:count]


def _first_rows(batches, count: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(x, y) batches cut to CHUNK rows each, the first `count` rows in all."""
    xs, ys, seen = [], [], 0
    for x, y in batches:
        xs.append(x)
        ys.append(y)
        seen += len(x)
        if seen >= count:
            break
    if not xs:
        return []
    x = torch.cat(xs)[:count]
    y = torch.cat(ys)[:count] if all(item is not None for item in ys) else None
    return [(x[start:start + CHUNK], None if y is None else y[start:start + CHUNK]) for start in range(0, len(x), CHUNK)]


def evaluate(recipe, nets, test_data: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor | None]]], seed: int,
             num_samples: int,
             test_data_b: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor | None]]] | None = None,
             features: str = "pixels", artifacts: dict | None = None, which: Sequence[str] = DEFAULT_METRICS,
             train_data: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor | None]]] | None = None,
             noise_floor: bool = False) -> dict[str, float]:
    """A recipe's evaluation on held-out data, shared over ranks. A collective: every rank calls it with
    networks it can run (its own full copy, or the strategy's sharded units) and gets the same metrics.
    `test_data()` yields the held-out batches of CHUNK samples in file order as (x, y) pairs, y None where
    unlabelled (`test_data_b()`: B's, for two-domain data); one pass over the shards gives both.
    `features`: pixels or classifier:DIR (each rank featurizes its own chunks; the classifier's predictions
    add modes_covered, num_modes and kl_mode_histogram). `which`: the metric groups (eval.metrics; per-sample
    scores are always reported). `artifacts`, when given, receives for pictures the
    first chunk's samples (`samples`), their predicted classes (`labels`) and the mode histogram (`mode_counts`).
    A conditional recipe (`recipe.num_classes` > 0) samples every class equally (chunk by chunk) and adds
    `class_metrics`, which read the held-out labels.
    `train_data()`, when given, yields real training (x, y) batches, read once for two uses. With `noise_floor`
    the first `num_samples` rows are scored like generated samples (their labels as the requested classes), as
    floor/<metric>: what the metric reads for real data at this sample count, its noise floor. A recipe whose
    per-sample scores are cheap (`train_scores`) also scores as many training rows as held-out ones, as
    train/<score>, gap/<score> = train/<score> - <score> and gap_se/<score>, its standard error: a model that
    memorizes its training set scores it differently from held-out data (a GAN's discriminator output,
    BiGAN's reconstruction error)."""
    pairs = list(test_data())
    test, test_y = [x for x, _ in pairs], [y for _, y in pairs]
    if getattr(recipe, "input_grid", "") == "translations":
        return _evaluate_translation(recipe, nets, test, [x for x, _ in test_data_b()] if test_data_b else [], seed,
                                     which)
    from gendist.features import build_featurizer

    featurizer = build_featurizer(features, recipe.info.sample_shape, device=_device_of(nets))
    sizes = chunk_sizes(num_samples)
    classes = getattr(recipe, "num_classes", 0)

    def generate(chunk: int) -> dict:
        generator = chunk_generator(seed, STREAM_SAMPLES, chunk)
        if classes:
            from gendist.nets.conditional import balanced_labels

            requested = balanced_labels(sizes[chunk], classes)
            x = recipe.sample(nets, sizes[chunk], generator, labels=requested).float().cpu().numpy()
        else:
            x = recipe.sample(nets, sizes[chunk], generator).float().cpu().numpy()
        out = {"features": featurizer.features(x), "labels": featurizer.labels(x)}
        if classes:
            out["requested"] = requested.numpy()
        if chunk == 0:
            out["x"] = x
        return out

    generated = map_chunks(len(sizes), generate)
    score_train = bool(getattr(recipe, "train_scores", False) and hasattr(recipe, "scores") and test)
    wanted = max(num_samples if noise_floor else 0, sum(len(x) for x in test) if score_train else 0)
    train = _first_rows(train_data(), wanted) if train_data is not None and wanted else []
    floor_chunks = []
    if noise_floor and train:
        real = _first_rows(train, num_samples)
        floor_chunks = map_chunks(len(real), lambda chunk: {
            "features": featurizer.features(real[chunk][0].float().cpu().numpy()),
            "labels": featurizer.labels(real[chunk][0].float().cpu().numpy()),
            **({"requested": real[chunk][1].numpy()} if classes and real[chunk][1] is not None else {})})
    scores: list[dict[str, np.ndarray]] = []
    if classes and hasattr(recipe, "scores") and any(y is None for y in test_y):
        raise ValueError("a conditional recipe's held-out scores need the held-out labels (test_data's y)")
    if hasattr(recipe, "scores") and test:
        scores = map_chunks(len(test), lambda chunk: recipe.scores(
            nets, test[chunk], chunk_generator(seed, STREAM_SCORES, chunk), *((test_y[chunk],) if classes else ())))
    train_scores: list[dict[str, np.ndarray]] = []
    if score_train and train:
        if classes and any(y is None for _, y in train):
            raise ValueError("a conditional recipe's training scores need the training labels (train_data's y)")
        train_scores = map_chunks(len(train), lambda chunk: recipe.scores(  # the held-out chunks' noise streams
            nets, train[chunk][0], chunk_generator(seed, STREAM_SCORES, chunk),
            *((train[chunk][1],) if classes else ())))
    reference_chunks = []  # held-out data in the feature space, featurized by the ranks like the samples
    if featurizer.num_modes is not None:
        needed = math.ceil(MAX_REFERENCE_SAMPLES / CHUNK)
        reference_chunks = map_chunks(min(needed, len(test)), lambda chunk: featurizer.features(
            test[chunk].float().cpu().numpy()))
    metrics: dict[str, float] | None = None
    rank, _ = _rank_and_world()
    if rank == 0:
        if reference_chunks:
            reference = np.concatenate(reference_chunks)[:MAX_REFERENCE_SAMPLES]
        else:
            reference = held_out(test, MAX_REFERENCE_SAMPLES)
        reference_labels = _reference_labels(test_y, len(reference)) if classes else None

        def scored(chunks: list[dict]) -> dict[str, float]:
            """The sample metrics of featurized chunks (generated, or real for the floor), with the class
            metrics of a conditional recipe when every chunk says which class each row stands for."""
            features = np.concatenate([chunk["features"] for chunk in chunks])
            out = sample_metrics(features, reference, recipe.info, seed, which)
            if classes and all("requested" in chunk for chunk in chunks):
                predicted = None
                if featurizer.num_modes == classes:  # a classifier of these very classes
                    predicted = np.concatenate([chunk["labels"] for chunk in chunks])
                out.update(class_metrics(np.concatenate([chunk["requested"] for chunk in chunks]), predicted,
                                         features.reshape(len(features), -1), reference, reference_labels, classes))
            return out

        metrics = {**_reduce_scores(recipe, scores), **scored(generated)}
        if train_scores:
            metrics.update(_memorization_gap(scores, train_scores))
        if floor_chunks:
            metrics.update({f"floor/{key}": value for key, value in scored(floor_chunks).items()})
        if featurizer.num_modes is not None and "modes" in which:
            from gendist.metrics.modes import kl_to_uniform

            counts = np.bincount(np.concatenate([chunk["labels"] for chunk in generated]),
                                 minlength=featurizer.num_modes)
            metrics.update(modes_covered=int(np.count_nonzero(counts)), num_modes=featurizer.num_modes,
                           kl_mode_histogram=kl_to_uniform(counts))
            if artifacts is not None:
                artifacts.update(labels=generated[0]["labels"], mode_counts=counts)
        if artifacts is not None:
            artifacts["samples"] = generated[0]["x"]
    return broadcast_object(metrics)


def _evaluate_translation(recipe, nets, test_a: list[torch.Tensor], test_b: list[torch.Tensor],
                          seed: int, which: Sequence[str] = DEFAULT_METRICS) -> dict[str, float]:
    """Cycle L1 on held-out images of both domains, and two-sample metrics of A -> B translations against
    held-out B (and B -> A against held-out A)."""
    if not test_a or not test_b:
        return {}

    def translate_and_back(batches: list[torch.Tensor], there: str, back: str):
        def work(chunk: int) -> dict[str, torch.Tensor]:
            x = batches[chunk]
            fake = recipe.translate(nets, x, there)
            cycle = recipe.translate(nets, fake, back)
            return {"fake": fake, "cycle_l1": (cycle.float() - x.to(cycle.device).float()).abs().flatten(1).mean(1)}
        return map_chunks(len(batches), work)

    a2b = translate_and_back(test_a, "a2b", "b2a")
    b2a = translate_and_back(test_b, "b2a", "a2b")
    metrics: dict[str, float] | None = None
    rank, _ = _rank_and_world()
    if rank == 0:
        metrics = {"test_cycle_l1_a": _mean_scores(a2b)["cycle_l1"], "test_cycle_l1_b": _mean_scores(b2a)["cycle_l1"]}
        for prefix, chunks, reference, domain in (("a2b_", a2b, test_b, recipe.info_b), ("b2a_", b2a, test_a, recipe.info)):
            fakes = np.concatenate([chunk["fake"].reshape(len(chunk["fake"]), -1) for chunk in chunks])
            for key, value in sample_metrics(fakes, held_out(reference, MAX_REFERENCE_SAMPLES), domain, seed,
                                             which).items():
                metrics[prefix + key] = value
    return broadcast_object(metrics)


# ------------------------------------------------------------------------- two sample sets, no run needed

TWO_SAMPLE_METRICS = ("mmd", "c2st", "kid", "fd", "pr", "modes")
MAX_TEST_POINTS = 2000  # per side, for the MMD permutation test and the classifier test (cost ~ n^2)


def compare_sets(real: np.ndarray, fake: np.ndarray, metrics: Sequence[str], featurizer, seed: int = 0,
                 num_permutations: int = 200) -> dict[str, float]:
    """Two-sample statistics between `real` and `fake` (N, ...) in the featurizer's space (README lists the
    keys). `modes` needs a featurizer that predicts labels (a classifier)."""
    from gendist.metrics import (classifier_two_sample_test, frechet_distance, kernel_inception_distance,
                                 mmd_permutation_test, precision_recall)
    from gendist.metrics.modes import kl_to_uniform

    out: dict[str, float] = {"num_real": len(real), "num_fake": len(fake)}
    real_features, fake_features = featurizer.features(real), featurizer.features(fake)
    rng = np.random.default_rng(seed)

    def subset(features: np.ndarray) -> np.ndarray:
        return features if len(features) <= MAX_TEST_POINTS else features[rng.choice(len(features), MAX_TEST_POINTS, replace=False)]

    if "mmd" in metrics:
        test = mmd_permutation_test(subset(fake_features), subset(real_features), num_permutations, seed)
        out.update(mmd2=test["mmd2"], mmd_p_value=test["p_value"])
    if "c2st" in metrics:
        test = classifier_two_sample_test(subset(fake_features), subset(real_features), seed)
        out.update(c2st_accuracy=test["accuracy"], c2st_p_value=test["p_value"])
    if "kid" in metrics:
        out.update(kernel_inception_distance(fake_features, real_features, seed=seed))
    if "fd" in metrics:
        out["frechet_distance"] = frechet_distance(fake_features, real_features)
    if "pr" in metrics:
        out.update(precision_recall(subset(real_features), subset(fake_features)))
    if "modes" in metrics:
        for prefix, samples in (("", fake), ("real_", real)):
            labels = featurizer.labels(samples)
            counts = np.bincount(labels, minlength=featurizer.num_modes)
            out.update({f"{prefix}modes_covered": int(np.count_nonzero(counts)),
                        f"{prefix}kl_mode_histogram": kl_to_uniform(counts)})
        out["num_modes"] = featurizer.num_modes
    return {key: (float(value) if isinstance(value, (float, np.floating)) else value) for key, value in out.items()}
