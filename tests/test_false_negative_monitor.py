"""The false-negative monitor: exact shares on a known case, and labels never reach training."""

import copy
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pretrain.trainer as trainer
from pretrain.monitor import FalseNegativeMonitor
from pretrain.pools import BankPool, DensePool
from pretrain.samplers import NegativeSampler

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


def ring_members_by_argsort(similarity, start, stop):
    order = similarity.argsort(dim=1, descending=True, stable=True)
    return order[:, start:stop].sort(dim=1).values


@pytest.mark.parametrize("kind", ["dense", "bank"])
def test_the_share_counts_one_id_per_ring_draw(kind):
    """Through the real pools and the sampler: a ring member drawn three times counts three
    times, as it weighs three times in the loss (not once per distinct member)."""
    torch.manual_seed(14)
    labels = torch.randint(3, (60,))
    anchors = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    candidates = torch.nn.functional.normalize(torch.randn(60, 8), dim=1)
    own = torch.tensor([5, 17, 33, 59])
    similarity = anchors @ candidates.T
    if kind == "dense":
        pool = DensePool(similarity, candidates, torch.arange(60))
    else:
        pool = BankPool(anchors, candidates, own, draw_count=50)
        similarity = similarity.scatter(1, own.unsqueeze(1), float("-inf"))
    sampler = NegativeSampler(
        "ring", upper=0.5, num_negatives=50, generator=torch.Generator().manual_seed(3)
    )
    _, record = sampler.contrast(anchors, torch.ones(4), pool, 0.1)
    monitor = FalseNegativeMonitor(labels)
    monitor.update([{**record, "anchor_ids": own}])
    share = monitor.epoch_stats()["false_negative_share"]
    size = similarity.shape[1] - (kind == "bank")
    members = ring_members_by_argsort(similarity, math.ceil(0.05 * size), math.ceil(0.5 * size))
    positions = torch.randint(members.shape[1], (4, 50), generator=torch.Generator().manual_seed(3))
    drawn = members.gather(1, positions)
    same = labels[drawn] == labels[own].unsqueeze(1)
    assert share == pytest.approx(same.double().mean().item())
    distinct = labels[members] == labels[own].unsqueeze(1)
    assert share != pytest.approx(distinct.double().mean().item())  # the test can tell them apart
    assert record["ids"]().shape == (4, 50) and record["count"] == 50


def test_the_ring_used_once_counts_each_member_once():
    torch.manual_seed(15)
    labels = torch.randint(3, (60,))
    anchors = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    candidates = torch.nn.functional.normalize(torch.randn(60, 8), dim=1)
    pool = DensePool(anchors @ candidates.T, candidates, torch.arange(60))
    _, record = NegativeSampler("ring", upper=0.5).contrast(anchors, torch.ones(4), pool, 0.1)
    monitor = FalseNegativeMonitor(labels)
    anchor_ids = torch.tensor([1, 2, 3, 4])
    monitor.update([{**record, "anchor_ids": anchor_ids}])
    members = ring_members_by_argsort(anchors @ candidates.T, 3, 30)
    same = labels[members] == labels[anchor_ids].unsqueeze(1)
    assert monitor.epoch_stats()["false_negative_share"] == pytest.approx(same.double().mean())
    assert record["count"] == 27


def test_shares_accumulate_over_steps_and_need_a_known_negative():
    labels = torch.tensor([0, 1, -1])
    monitor = FalseNegativeMonitor(labels)
    for ids in ([[0, 2]], [[1, 2]]):  # one known negative per step: same class, then not
        monitor.update(
            [{"anchor_ids": torch.tensor([0]), "ids": lambda ids=ids: torch.tensor(ids)}]
        )
    assert monitor.epoch_stats() == {"false_negative_share": 0.5}
    monitor.update([{"anchor_ids": torch.tensor([0]), "ids": lambda: torch.tensor([[2, -1]])}])
    assert monitor.epoch_stats() == {}  # nothing known: no share rather than 0/0
    monitor.update([{"anchor_ids": torch.tensor([1]), "ids": lambda: torch.tensor([[1, 2]])}])
    assert monitor.epoch_stats() == {"false_negative_share": 1.0}  # one known negative


MONITOR_WORKER = """
import datetime, os
import torch, torch.distributed as dist
from pretrain.monitor import FalseNegativeMonitor

# a short timeout: a rank left alone in a collective fails in seconds instead of hanging
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=20))
rank = dist.get_rank()
# rank 0 holds labelled images, rank 1 only unlabelled ones (STL-10's unlabelled split)
labels = torch.tensor([0, 0, 1, 1]) if rank == 0 else torch.full((4,), -1)
monitor = FalseNegativeMonitor(labels)
negatives = torch.tensor([[1, 2], [3, 3]])
monitor.update([{"anchor_ids": torch.tensor([0, 2]), "ids": lambda: negatives}])
stats = monitor.epoch_stats()
dist.barrier()
os.write(1, f"rank {rank} share {stats.get('false_negative_share')}\\n".encode())
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_a_rank_without_labelled_pairs_still_joins_the_reduction(tmp_path):
    """Two gloo ranks, one unlabelled: both read the pooled share (3 same of 4 known) and
    neither waits alone in a collective (NCCL would hang there)."""
    script = tmp_path / "monitor_worker.py"
    script.write_text(MONITOR_WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", str(script)]
    repo = str(Path(__file__).resolve().parents[1])
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": repo}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(done.stdout.split("\n"))[-2:] == ["rank 0 share 0.75", "rank 1 share 0.75"]
