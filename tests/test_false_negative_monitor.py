"""The false-negative monitor: exact shares on a known case, and labels never reach training."""

import copy

import pytest
import torch

import pretrain.trainer as trainer
from pretrain.monitor import FalseNegativeMonitor

pytestmark = pytest.mark.usefixtures("single_thread")


def test_shares_count_same_class_negatives_and_weights():
    labels = torch.tensor([0, 0, 1, 1, -1])
    monitor = FalseNegativeMonitor(labels)
    record = {
        "anchor_ids": torch.tensor([0, 2]),
        "ids": lambda: torch.tensor([[1, 2, 4, -1], [3, 3, 0, 1]]),  # 4: unlabelled, -1: empty
        "weights": lambda: torch.tensor([[0.5, 0.3, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]]),
    }
    monitor.update([record])
    stats = monitor.epoch_stats()
    assert stats["false_negative_share"] == pytest.approx(3 / 6)  # known: 2 + 4, same: 1 + 2
    assert stats["false_negative_weight_share"] == pytest.approx((0.5 + 0.5) / (0.8 + 1.0))
    assert monitor.epoch_stats() == {}  # reset after reading


def shuffled_labels(load_source):
    def load(data_cfg):
        source = load_source(data_cfg)
        generator = torch.Generator().manual_seed(0)
        order = torch.randperm(len(source.train.labels), generator=generator)
        source.train.labels = source.train.labels[order]
        return source

    return load


@pytest.mark.parametrize("method", ["moco", "ir"])
def test_training_never_sees_the_labels(method, tiny_config, tmp_path, monkeypatch):
    """Permuting the training labels changes the monitor, never a weight or the loss."""
    tiny_config.update(method=method, sampler={"name": "hcl", "within_ring": True, "upper": 0.5})
    tiny_config["optim"]["epochs"] = 1
    tiny_config["train"]["log_every_steps"] = 1  # the monitor reads every step
    plain = copy.deepcopy(tiny_config)
    plain["output_dir"] = str(tmp_path / "plain")
    first = trainer.train(plain)
    monkeypatch.setattr(trainer, "load_source", shuffled_labels(trainer.load_source))
    permuted = copy.deepcopy(tiny_config)
    permuted["output_dir"] = str(tmp_path / "permuted")
    second = trainer.train(permuted)
    assert first["loss"] == second["loss"]
    assert first["false_negative_share"] != second["false_negative_share"]
    assert 0.0 <= first["false_negative_weight_share"] <= 1.0
    weights = [
        torch.load(f"{run}/checkpoints/last.pth", weights_only=False)["model"]
        for run in (plain["output_dir"], permuted["output_dir"])
    ]
    for name, tensor in weights[0].items():
        if name != "queue_ids":
            assert torch.equal(tensor, weights[1][name]), name
