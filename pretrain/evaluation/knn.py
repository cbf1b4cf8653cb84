"""Weighted kNN classification on frozen features (the monitor of Wu et al. 2018).

Each of the k nearest training features (cosine similarity) votes for its label with weight
``exp(similarity / temperature)``; the class with the largest total wins.
"""

import torch
import torch.nn.functional as F


def knn_predict(
    train_features,
    train_labels,
    query_features,
    num_classes,
    k=200,
    temperature=0.07,
    chunk_size=1024,
):
    """Predicted labels (Q,) for ``query_features`` (Q, d) from a labelled bank (N, d)."""
    train_features = F.normalize(train_features.float(), dim=1)
    query_features = F.normalize(query_features.float(), dim=1)
    k = min(k, train_features.shape[0])
    predictions = []
    for chunk in query_features.split(chunk_size):
        similarity = chunk @ train_features.T
        top_similarity, top_index = similarity.topk(k, dim=1)
        weights = (top_similarity / temperature).exp()
        votes = torch.zeros(chunk.shape[0], num_classes, dtype=weights.dtype)
        votes.scatter_add_(1, train_labels[top_index], weights)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long)


def knn_accuracy(
    train_features, train_labels, query_features, query_labels, num_classes, k=200, temperature=0.07
):
    """Top-1 accuracy in [0, 1] of weighted kNN."""
    predicted = knn_predict(
        train_features, train_labels, query_features, num_classes, k, temperature
    )
    return (predicted == query_labels).float().mean().item()


@torch.no_grad()
def extract_features(embed, loader, device="cpu"):
    """``(features, labels)`` of every batch of ``loader`` (``(images, labels, ...)`` tuples).

    ``embed`` maps an image batch to features; call it on a module in eval mode so BatchNorm
    uses running statistics (the caller restores training mode).
    """
    features, labels = [], []
    for batch in loader:
        images, targets = batch[0], batch[1]
        features.append(embed(images.to(device, non_blocking=True)).float().cpu())
        labels.append(targets)
    if not features:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(features), torch.cat(labels).long()
