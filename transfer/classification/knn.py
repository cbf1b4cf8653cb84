"""Weighted kNN on frozen features (the monitor of Wu et al. 2018 that the pretraining and
tools/linear_eval.py report): the train and val images are the labelled bank, test the queries."""

import numpy as np
import torch

from pretrain.evaluation.knn import knn_predict
from transfer.classification.linear import mean_per_class, top1


def evaluate_knn(bank, test, num_classes, settings):
    """``bank``, ``test``: (features [n, d] array, labels [n]); accuracies in %."""
    predicted = knn_predict(
        torch.as_tensor(bank[0]),
        torch.as_tensor(bank[1]),
        torch.as_tensor(test[0]),
        num_classes,
        k=settings["k"],
        temperature=settings["temperature"],
    ).numpy()
    return {
        "top1": top1(predicted, test[1]),
        "mean_per_class": mean_per_class(predicted, np.asarray(test[1])),
        "headline": ["top1"],
        "k": settings["k"],
        "images": {"bank": len(bank[1]), "test": len(test[1])},
    }
