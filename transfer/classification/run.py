"""One classification run: a frozen encoder, a dataset and a protocol, for one seed.

``check_task`` is what submission checks before anything is queued (layout, split rule,
enough images per class); ``run_classification`` repeats it, embeds the dataset (or reads its
cached features), applies the protocol and writes ``results.json`` beside the run::

    {"<protocol>": {"top1": .., "headline": ["top1"], ...}, "run": {checkpoint, dataset, ...}}

Few-shot groups also hold ``ci95`` and ``samples`` (the per-episode accuracies), which the
leaderboard pools over seeds.
"""

import time
from pathlib import Path

import numpy as np
import torch

from pretrain.atomic_write import write_json_atomic
from transfer.classification import domains, encoders
from transfer.classification.errors import ClassificationError
from transfer.classification.features import cached_features
from transfer.classification.fewshot import check_episodes_possible, evaluate_fewshot
from transfer.classification.image_folder import SPLITS, scan
from transfer.classification.knn import evaluate_knn
from transfer.classification.linear import evaluate_linear
from transfer.classification.splits import TEST, TRAIN, VAL, assign_splits

RESULTS_FILE = "results.json"
RANDOM_INIT, RAW_PIXELS = "random", "pixels"


def dataset_folder(dataset):
    """The dataset's listing; an offline domain missing from this node's cache is rebuilt."""
    if dataset.get("builtin") and not Path(dataset["root"]).is_dir():
        domains.build(dataset["builtin"])
    return scan(dataset["root"])


def splits_for(folder, dataset, protocol, seed):
    """Each image's split; the kNN bank merges train and val, so it needs no held-out val."""
    if protocol["name"] == "knn" and folder.has_split_folders:
        return folder.folder_splits.copy()
    return assign_splits(folder, dataset["split"], protocol.get("val_fraction", 0.2), seed)


def fewshot_pool(folder, dataset, protocol, seed):
    """Boolean mask of the images episodes are drawn from (``split: all`` pools every split,
    as Ericsson et al. do)."""
    if protocol["split"] == "all":
        return np.ones(len(folder.labels), dtype=bool)
    return splits_for(folder, dataset, protocol, seed) == SPLITS.index(protocol["split"])


def check_task(task, seed=0):
    """The dataset's listing, after every check that needs no decoding."""
    dataset, protocol = task["dataset"], task["protocol"]
    folder = dataset_folder(dataset)
    if protocol["name"] == "fewshot":
        pool = fewshot_pool(folder, dataset, protocol, seed)
        counts = {name: n for name, n in folder.counts(pool).items() if n > 0}
        where = f"{dataset['name']} ({protocol['split']} images)"
        check_episodes_possible(
            counts, protocol["ways"], protocol["shots"], protocol["queries"], where
        )
    else:
        splits_for(folder, dataset, protocol, seed)
    return folder


def frozen_encoder(run):
    kind = run["kind"]
    if kind == RANDOM_INIT:
        return encoders.random_init(encoders.reference_of(run["like"]), run["seed"])
    if kind == RAW_PIXELS:
        return encoders.raw_pixels(encoders.reference_of(run["like"]))
    return encoders.from_checkpoint(run["entry"])


def apply_protocol(features, labels, folder, task, seed, device="cpu"):
    dataset, protocol = task["dataset"], task["protocol"]
    features, labels = features.numpy(), labels.numpy()
    if protocol["name"] == "fewshot":
        pool = fewshot_pool(folder, dataset, protocol, seed)
        on_device = torch.as_tensor(features[pool], device=device)
        return evaluate_fewshot(on_device, labels[pool], protocol, seed)
    splits = splits_for(folder, dataset, protocol, seed)
    part = {s: (features[splits == s], labels[splits == s]) for s in (TRAIN, VAL, TEST)}
    if protocol["name"] == "knn":
        bank = splits != TEST
        return evaluate_knn(
            (features[bank], labels[bank]), part[TEST], len(folder.classes), protocol
        )
    return evaluate_linear(part[TRAIN], part[VAL], part[TEST], protocol, device)


def run_classification(task, run, log=print):
    """Evaluate ``run``'s encoder on ``task`` for ``run["seed"]``; write and return results."""
    started = time.perf_counter()
    folder = check_task(task, run["seed"])
    encoder = frozen_encoder(run)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    log(
        f"{run['checkpoint']}: {encoder.description}, {task['dataset']['name']}, seed {run['seed']}"
    )
    features, labels, cache = cached_features(encoder, folder, run["feature_cache"], device, log)
    if not np.array_equal(labels.numpy(), folder.labels):
        raise ClassificationError(
            f"cached features {cache['file']} do not match {folder.root}'s listing; delete the file"
        )
    group = apply_protocol(features, labels, folder, task, run["seed"], device)
    results = {
        task["protocol"]["name"]: group,
        "run": {
            "checkpoint": run["checkpoint"],
            "encoder": encoder.description,
            "dataset": task["dataset"],
            "protocol": task["protocol"],
            "seed": run["seed"],
            "classes": len(folder.classes),
            "features": cache,
            "seconds": time.perf_counter() - started,
        },
    }
    output_dir = Path(run["output_dir"])
    write_json_atomic(output_dir / RESULTS_FILE, results)
    headline = group["headline"][0]
    log(f"{task['protocol']['name']} {headline}: {group[headline]:.2f}")
    return results
