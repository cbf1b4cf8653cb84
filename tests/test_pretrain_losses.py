"""Each method's loss against a brute-force loop over anchors, and ring [0, 1) == uniform."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pretrain.losses import info_nce
from pretrain.methods import METHODS
from pretrain.methods.base import sampled_contrast
from pretrain.samplers import NegativeSampler
from pretrain.trainer import as_config

pytestmark = pytest.mark.usefixtures("single_thread")

UNIFORM = NegativeSampler("uniform")
FULL_RING = NegativeSampler("ring", upper=1.0, lower_ratio=0.0)


def reference_nce(anchor, positive, negatives, temperature):
    """-log softmax of the positive, one anchor at a time, with Python sums."""
    total = 0.0
    for i in range(anchor.shape[0]):
        pos = math.exp(float(anchor[i] @ positive[i]) / temperature)
        neg = sum(math.exp(float(anchor[i] @ n) / temperature) for n in negatives[i])
        total += -math.log(pos / (pos + neg))
    return total / anchor.shape[0]


def unit(*shape):
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


def test_ring_loss_matches_loop_over_the_ranked_negatives():
    torch.manual_seed(0)
    anchor, positive, negatives = unit(6, 8), unit(6, 8), unit(6, 40, 8)
    sampler = NegativeSampler("ring", upper=0.5, lower_ratio=0.2)  # ranks 4..19 of 40
    loss, kept = sampled_contrast(anchor, positive, negatives, sampler, 0.2)
    ring = []
    for i in range(6):
        order = sorted(range(40), key=lambda k: -float(anchor[i] @ negatives[i][k]))
        ring.append(negatives[i][order[4:20]])
    assert kept == 16
    assert loss.item() == pytest.approx(reference_nce(anchor, positive, ring, 0.2), abs=1e-5)


def test_info_nce_is_stable_for_large_logits():
    loss = info_nce(torch.tensor([1000.0]), torch.tensor([[999.0, -1e4]]))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(math.log1p(math.exp(-1)), abs=1e-4)


def identity_method(name, tiny_config, num_samples=20, dim=8):
    """The method with parameter-free encoders, so its embeddings are the normalised inputs."""
    cfg = as_config(
        {**tiny_config, "method": name, "model": {**tiny_config["model"], "embedding_dim": dim}}
    )
    method = METHODS[name](cfg, num_samples).double()
    for attr in ("encoder", "query", "key", "l", "ab"):
        if hasattr(method, attr):
            setattr(method, attr, nn.Flatten())
    for attr in ("head", "head_q", "head_k", "head_l", "head_ab"):
        if hasattr(method, attr):
            setattr(method, attr, nn.Identity())
    return method


def test_moco_loss_matches_loop(tiny_config):
    torch.manual_seed(1)
    method = identity_method("moco", tiny_config)
    query, key = torch.randn(6, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    queue = method.queue.clone()
    loss, _ = method([query, key], torch.arange(6), UNIFORM)
    q, k = F.normalize(query, dim=1), F.normalize(key, dim=1)
    expected = reference_nce(q, k, [queue] * 6, method.temperature)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    torch.testing.assert_close(method.queue[:6], k)  # the keys were enqueued


def test_ir_loss_matches_loop(tiny_config):
    torch.manual_seed(2)
    method = identity_method("ir", tiny_config)
    drawn = torch.randint(20, (5, 32))
    method.bank.draw = lambda rows, count: drawn
    bank = method.bank.memory.clone()
    images, indices = torch.randn(5, 8, dtype=torch.float64), torch.tensor([3, 7, 0, 19, 11])
    loss, _ = method([images], indices, UNIFORM)
    z = F.normalize(images, dim=1)
    expected = reference_nce(z, bank[indices], [bank[row] for row in drawn], method.temperature)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    updated = F.normalize(0.5 * bank[indices] + 0.5 * z, dim=1)
    torch.testing.assert_close(method.bank.memory[indices], updated)


def test_cmc_loss_matches_loop(tiny_config):
    torch.manual_seed(3)
    method = identity_method("cmc", tiny_config, dim=2)
    method.head_ab = nn.Linear(4, 2).double()  # ab has twice L's values: map them to dim 2
    drawn = torch.randint(20, (4, 32))
    method.bank_l.draw = lambda rows, count: drawn
    bank_l, bank_ab = method.bank_l.memory.clone(), method.bank_ab.memory.clone()
    lab, indices = torch.randn(4, 3, 1, 2, dtype=torch.float64), torch.tensor([1, 5, 9, 2])
    loss, _ = method([lab], indices, UNIFORM)
    z_l = F.normalize(lab[:, :1].flatten(1), dim=1)
    with torch.no_grad():
        z_ab = F.normalize(method.head_ab(lab[:, 1:].flatten(1)), dim=1)
    t = method.temperature
    expected = reference_nce(z_l, bank_ab[indices], [bank_ab[r] for r in drawn], t)
    expected += reference_nce(z_ab, bank_l[indices], [bank_l[r] for r in drawn], t)
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_simclr_loss_matches_loop(tiny_config):
    torch.manual_seed(4)
    method = identity_method("simclr", tiny_config)
    first, second = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    loss, stats = method([first, second], torch.arange(5), UNIFORM)
    z = F.normalize(torch.cat([first, second]), dim=1)
    positives, negatives = [], []
    for i in range(10):
        partner = (i + 5) % 10
        positives.append(z[partner])
        negatives.append([z[j] for j in range(10) if j not in (i, partner)])
    expected = reference_nce(z, torch.stack(positives), negatives, method.temperature)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert stats["negatives"] == 8  # 2B - 2


@pytest.mark.parametrize("name", sorted(METHODS))
def test_full_ring_equals_uniform(name, tiny_config):
    torch.manual_seed(5)
    method = identity_method(name, tiny_config, dim=2 if name == "cmc" else 8)
    if name == "cmc":
        method.head_ab = nn.Linear(4, 2).double()
    shape = (6, 3, 1, 2) if name == "cmc" else (6, 8)
    views = [torch.randn(*shape, dtype=torch.float64) for _ in range(method.num_views)]
    indices = torch.arange(6)
    state = {k: v.clone() for k, v in method.state_dict().items()}
    torch.manual_seed(6)
    uniform, _ = method(views, indices, UNIFORM)
    method.load_state_dict(state)
    torch.manual_seed(6)
    ring, _ = method(views, indices, FULL_RING)
    assert ring.item() == uniform.item()
