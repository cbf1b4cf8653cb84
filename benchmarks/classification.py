#!/usr/bin/env python
"""Seconds for 600 few-shot episodes and for the linear protocol's C grid, on cached features.

    python -m benchmarks.classification [--preset full|smoke] [--devices auto|cpu|cuda]
        [--repeats N] [--threads N] [--json OUT.json]

What a classification task does after its features are cached (transfer.classification):
- ``episodes``: draw 600 5-way K-shot episodes with 15 queries (K = 1, 5, 20) and score the
  prototype classifier, on 127 classes x 40 images of d = 128 (the Fashion-MNIST ResNet-18 x0.25
  features) and d = 2048 (a ResNet-50's);
- ``c_grid``: the linear protocol end to end (45 C values by warm-started L-BFGS, selection on
  val, refit on train + val) at the glyphs domain's shape (127 classes; 1,270 train, 508 val,
  762 test images; d = 128), against scikit-learn's ``LogisticRegression(warm_start=True)``
  with the same grid, the estimator Ericsson et al. ran, interleaved in the same run.
Features are synthetic, shaped like pooled ReLU outputs (correlated, off-centre, weakly
separated classes), seeded.
"""

import sys

import numpy as np
import torch

from benchmarks.timing import (
    finish_run,
    interleaved_times,
    machine_facts,
    median,
    parse_preset_args,
    resolve_devices,
)
from pretrain.errors import one_line_errors
from transfer.classification.fewshot import prototype_accuracies, sample_episodes
from transfer.classification.linear import c_grid, evaluate_linear
from transfer.classification.protocols import parse_protocol

SHAPES = {
    "full": {
        "classes": 127,
        "per_class": 40,
        "dims": (128, 2048),
        "episodes": 600,
        "shots": (1, 5, 20),
        "split": (10, 4, 6),
        "c_values": 45,
    },
    "smoke": {
        "classes": 8,
        "per_class": 25,
        "dims": (16,),
        "episodes": 20,
        "shots": (1,),
        "split": (4, 2, 2),
        "c_values": 3,
    },
}
REPEATS = {"full": 2, "smoke": 1}
QUERIES, WAYS = 15, 5


def pooled_relu_features(classes, per_class, dim, seed=0):
    """Features shaped like a ResNet's pooled outputs: weakly separated classes, correlated
    dimensions of decaying scale, non-negative and off-centre (ReLU), so L-BFGS works as hard
    as on real frozen features (Gaussian blobs converge several times faster)."""
    generator = np.random.default_rng(seed)
    means = generator.normal(size=(classes, dim)) * 0.25
    labels = np.repeat(np.arange(classes), per_class)
    latent = means[labels] + generator.normal(size=(len(labels), dim))
    rotation, _ = np.linalg.qr(generator.normal(size=(dim, dim)))
    features = np.maximum((latent / (1.0 + np.arange(dim))) @ rotation.T + 0.3, 0.0)
    return features.astype(np.float32), labels


def episodes_variants(shape, dim, device):
    features, labels = pooled_relu_features(shape["classes"], shape["per_class"], dim)
    on_device = torch.as_tensor(features, device=device)

    def run(shots):
        support, query = sample_episodes(labels, WAYS, shots, QUERIES, shape["episodes"], 0)
        prototype_accuracies(on_device, support, query)

    return {f"episodes_{WAYS}w{k}s_d{dim}": (lambda k=k: run(k)) for k in shape["shots"]}


def split_features(shape):
    train, val, test = shape["split"]
    features, labels = pooled_relu_features(shape["classes"], train + val + test, 128, seed=1)
    position = np.tile(np.arange(train + val + test), shape["classes"])
    parts = (position < train, (position >= train) & (position < train + val))
    parts += (position >= train + val,)
    return [(features[part], labels[part]) for part in parts]


def sklearn_grid(train, val, test, settings):
    """Ericsson et al.'s loop: one warm-started scikit-learn classifier over the grid."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    classifier = LogisticRegression(max_iter=settings["max_iter"], warm_start=True)
    best, best_c = -1.0, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for c in c_grid(settings):
            score = classifier.set_params(C=c).fit(*train).score(*val)
            best, best_c = (score, c) if score > best else (best, best_c)
        classifier.set_params(C=best_c).fit(
            np.concatenate([train[0], val[0]]), np.concatenate([train[1], val[1]])
        )
    return classifier.score(*test)


def c_grid_variants(shape, device):
    train, val, test = split_features(shape)
    settings = parse_protocol({"name": "linear", "c_values": shape["c_values"]})
    variants = {"c_grid_torch_lbfgs": lambda: evaluate_linear(train, val, test, settings, device)}
    try:
        import sklearn  # noqa: F401
    except ModuleNotFoundError:
        return variants
    if device.type == "cpu":
        variants["c_grid_sklearn_lbfgs"] = lambda: sklearn_grid(train, val, test, settings)
    return variants


def measure(shape, device, repeats):
    rows = []
    groups = [episodes_variants(shape, dim, device) for dim in shape["dims"]]
    groups.append(c_grid_variants(shape, device))
    for variants in groups:
        times = interleaved_times(variants, device, repeats)
        reference = median(next(iter(times.values())))
        for name, seconds in times.items():
            rows.append(
                {
                    "device": device.type,
                    "variant": name,
                    "seconds": median(seconds),
                    "over_first_of_group": median(seconds) / reference,
                }
            )
            print(f"{device.type:5s} {name:28s} {median(seconds):8.3f} s", flush=True)
    return rows


@one_line_errors
def main(argv=None):
    args = parse_preset_args(__doc__.splitlines()[0], SHAPES, REPEATS, argv)
    facts_before = machine_facts()
    print(f"machine: {facts_before}", flush=True)
    rows = []
    for device in resolve_devices(args.devices):
        rows += measure(SHAPES[args.preset], device, args.repeats)
    finish_run("classification", args, {"shape": SHAPES[args.preset]}, facts_before, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
