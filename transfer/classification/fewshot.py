"""N-way K-shot episodes with a prototype classifier, as Ericsson et al. (``few_shot.py``,
after ProtoNet): an episode draws ``ways`` classes uniformly without replacement and, per class,
``shots + queries`` distinct images (the first ``shots`` support, the rest queries); each class's
prototype is the mean of its support features, and a query is given the class of the nearest
prototype in squared Euclidean distance on the frozen features as they are. The score is the
mean accuracy over episodes with the 95% interval 1.96 * std / sqrt(episodes) (std over
episodes, ddof 0), their formula.

Episodes depend only on the labels and the seed, never on the features, so every checkpoint of
a sweep is scored on the same episodes and differences can be paired episode by episode.
"""

import math

import numpy as np
import torch

from transfer.classification.errors import ClassificationError

Z_95 = 1.96


def check_episodes_possible(counts, ways, shots, queries, where):
    """``counts``: images per class name in the pool episodes are drawn from."""
    needed = shots + queries
    for name, count in counts.items():
        if count < needed:
            raise ClassificationError(
                f"class '{name}' of {where} has {count} images, fewer than shots + queries = "
                f"{shots} + {queries} = {needed}; lower shots or queries, or remove the class"
            )
    if len(counts) < ways:
        raise ClassificationError(
            f"{where} has {len(counts)} classes, fewer than ways = {ways}; lower ways"
        )


def sample_episodes(labels, ways, shots, queries, episodes, seed):
    """``(support [E, ways, shots], query [E, ways, queries])`` indices into ``labels``; row w
    of an episode is its w-th drawn class."""
    labels = np.asarray(labels)
    members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    generator = np.random.default_rng(seed)
    drawn = np.empty((episodes, ways, shots + queries), dtype=np.int64)
    for episode in range(episodes):
        for way, chosen in enumerate(generator.choice(len(members), ways, replace=False)):
            drawn[episode, way] = generator.choice(members[chosen], shots + queries, replace=False)
    return drawn[:, :, :shots], drawn[:, :, shots:]


def prototype_accuracies(features, support, query):
    """Per-episode query accuracy (%) of the nearest-prototype classifier."""
    features = torch.as_tensor(features, dtype=torch.float32)
    support, query = (torch.as_tensor(i, device=features.device) for i in (support, query))
    prototypes = features[support].mean(dim=2)  # [E, ways, d]
    episodes, ways, queries = query.shape
    queried = features[query].reshape(episodes, ways * queries, -1)
    distances = torch.cdist(queried, prototypes).pow(2)  # [E, ways * queries, ways]
    predicted = distances.argmin(dim=2)
    truth = torch.arange(ways, device=features.device).repeat_interleave(queries)
    return (100.0 * (predicted == truth).float().mean(dim=1)).tolist()


def episode_interval(accuracies):
    """``(mean, half-width)`` of the 95% interval over episodes: 1.96 * std / sqrt(n)."""
    values = np.asarray(accuracies, dtype=np.float64)
    return float(values.mean()), Z_95 * float(values.std()) / math.sqrt(len(values))


def evaluate_fewshot(features, labels, settings, seed):
    support, query = sample_episodes(
        labels, settings["ways"], settings["shots"], settings["queries"], settings["episodes"], seed
    )
    accuracies = prototype_accuracies(features, support, query)
    mean, half_width = episode_interval(accuracies)
    return {
        "top1": mean,
        "ci95": half_width,
        "headline": ["top1"],
        "samples": {"top1": accuracies},
        **{key: settings[key] for key in ("ways", "shots", "queries", "episodes", "split")},
    }
