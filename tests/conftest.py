"""Shared fixtures: a tiny synthetic pretraining config that trains in about a second."""

import pytest
import torch


@pytest.fixture
def tiny_config(tmp_path):
    """A plain dict config (the trainer validates it against the schema) for synthetic data."""
    return {
        "method": "moco",
        "output_dir": str(tmp_path / "run"),
        "device": "cpu",
        "model": {"arch": "resnet18", "width": 0.125, "stem": "cifar", "embedding_dim": 16},
        "moco": {"queue_size": 64, "shuffle_bn_splits": 2},
        "ir": {"num_negatives": 32},
        "cmc": {"num_negatives": 32},
        "data": {
            "name": "synthetic",
            "num_workers": 0,
            "synthetic": {"image_size": 16, "train_count": 64, "test_count": 32},
        },
        "optim": {"batch_size": 16, "epochs": 2, "lr": 0.05},
        "train": {"progress": False, "tensorboard": False},
        "knn": {"every_epochs": 0, "k": 10},
        "checkpoint": {"every_epochs": 1},
    }


@pytest.fixture
def single_thread():
    """One intra-op thread: tiny tensors on a shared 2-core machine run ~5x faster this way."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
