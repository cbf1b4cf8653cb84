"""Every method's loss and every negative strategy against plain per-anchor re-derivations.

Uniform: InfoNCE over the method's usual negatives (IR/CMC: K bank draws without the anchor's
own entry; MoCo: the queue; SimCLR: the 2B-2 other views).

Ring (Wu et al. 2021): rank the anchor's whole pool (a stable argsort of Python floats, never
production's selection), slice the ranks [lower, upper). The authors' IR (NCERing) then draws K
members uniformly with replacement (positions into the ring, its members listed by pool column);
their MoCoRing and SimCLRRing use every member once; the equal-count control draws as many as
uniform for every method. InfoNCE with the positive in the normaliser. Draws use a generator
seeded alike on both sides. DCL, HCL and MoCHi are written from their papers' equations one
anchor at a time with Python floats.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pretrain.losses import (
    debiased_nce,
    hard_debiased_nce,
    hardness_weights,
    in_batch_negative_index,
    info_nce,
    mochi_negatives,
    pair_partner,
)
from pretrain.methods import CONTRASTIVE, METHODS
from pretrain.samplers import NegativeSampler
from pretrain.trainer import as_config

pytestmark = pytest.mark.usefixtures("single_thread")
UPPER, LOWER_RATIO, SEED = 0.5, 0.1, 1234


def identity_method(name, tiny_config, dim=8, num_samples=20):
    """The method with parameter-free encoders: its embeddings are the normalised inputs."""
    model = {**tiny_config["model"], "embedding_dim": dim}
    config = as_config({**tiny_config, "method": name, "model": model})
    method = METHODS[name](config, num_samples)
    method = method.double()
    for attr in ("encoder", "query", "key", "l", "ab"):
        if hasattr(method, attr):
            setattr(method, attr, nn.Flatten())
    for attr in ("head", "head_q", "head_k", "head_l", "head_ab"):
        if hasattr(method, attr):
            setattr(method, attr, nn.Identity())
    if name == "cmc":
        method.head_ab = nn.Linear(4, 2).double()  # ab has twice L's values
    return method


def generator():
    return torch.Generator().manual_seed(SEED)


def ring_of(anchor, pool, lower, upper):
    """Pool items of ranks [lower*P, upper*P) of ``pool`` ([(id, vector)]), listed by id."""
    scores = [float(anchor @ vector) for _, vector in pool]
    ranked = [pool[j] for j in sorted(range(len(pool)), key=lambda j: -scores[j])]
    size = len(ranked)
    start, stop = math.ceil(lower * size - 1e-9), math.ceil(upper * size - 1e-9)
    return sorted(ranked[start:stop], key=lambda item: item[0])


def nce_term(anchor, positive, negatives, t):
    pos = math.exp(float(anchor @ positive) / t)
    return -math.log(pos / (pos + sum(math.exp(float(anchor @ n) / t) for n in negatives)))


def reference_ring(anchors, positives, pools, count, t, draws):
    """Mean ring loss with ``count`` draws per anchor; ``draws`` is the seeded generator the
    batched code also used."""
    ring_size = len(ring_of(anchors[0], pools[0], UPPER * LOWER_RATIO, UPPER))
    positions = torch.randint(ring_size, (len(anchors), count), generator=draws)
    total = 0.0
    for i, (anchor, positive, pool) in enumerate(zip(anchors, positives, pools)):
        ring = ring_of(anchor, pool, UPPER * LOWER_RATIO, UPPER)
        total += nce_term(anchor, positive, [ring[p][1] for p in positions[i]], t)
    return total / len(anchors)


def reference_ring_once(anchors, positives, pools, t):
    """Mean loss with every ring member once in the normaliser (MoCoRing, SimCLRRing)."""
    total = 0.0
    for anchor, positive, pool in zip(anchors, positives, pools):
        ring = ring_of(anchor, pool, UPPER * LOWER_RATIO, UPPER)
        total += nce_term(anchor, positive, [vector for _, vector in ring], t)
    return total / len(anchors)


def ring_sampler(name="ring", **kwargs):
    return NegativeSampler(
        name, upper=UPPER, lower_ratio=LOWER_RATIO, generator=generator(), **kwargs
    )


def test_ir_ring_matches_the_per_anchor_estimator(tiny_config):
    torch.manual_seed(0)
    method = identity_method("ir", tiny_config)
    bank = method.bank.memory.clone()
    images, indices = torch.randn(5, 8, dtype=torch.float64), torch.tensor([3, 7, 0, 19, 11])
    loss, stats = method([images], indices, ring_sampler())
    z = F.normalize(images, dim=1)
    pools = [[(j, bank[j]) for j in range(20) if j != own] for own in indices.tolist()]
    expected = reference_ring(z, bank[indices], pools, 32, method.temperature, generator())
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["negatives_per_anchor"] == 32  # ir.num_negatives, as the uniform arm


def test_cmc_ring_matches_the_per_anchor_estimator(tiny_config):
    torch.manual_seed(1)
    method = identity_method("cmc", tiny_config, dim=2)
    bank_l, bank_ab = method.bank_l.memory.clone(), method.bank_ab.memory.clone()
    lab, indices = torch.randn(4, 3, 1, 2, dtype=torch.float64), torch.tensor([1, 5, 9, 2])
    loss, _ = method([lab], indices, ring_sampler())
    z_l = F.normalize(lab[:, :1].flatten(1), dim=1)
    with torch.no_grad():
        z_ab = F.normalize(method.head_ab(lab[:, 1:].flatten(1)), dim=1)
    draws = generator()
    torch.randint(19, (4, 32), generator=draws)  # CMC draws its shared uniform images first
    expected = 0.0
    for z, bank in ((z_l, bank_ab), (z_ab, bank_l)):
        pools = [[(j, bank[j]) for j in range(20) if j != own] for own in indices.tolist()]
        expected += reference_ring(z, bank[indices], pools, 32, method.temperature, draws)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def moco_case(tiny_config, seed):
    torch.manual_seed(seed)
    method = identity_method("moco", tiny_config)
    query, key = torch.randn(6, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    q, k = F.normalize(query, dim=1), F.normalize(key, dim=1)
    return method, [query, key], q, k, [list(enumerate(method.queue.clone()))] * 6


def test_moco_ring_is_every_member_once_as_the_authors(tiny_config):
    method, views, q, k, pools = moco_case(tiny_config, 2)
    loss, stats = method(views, torch.arange(6), ring_sampler())
    expected = reference_ring_once(q, k, pools, method.temperature)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # ranks [ceil(0.05 * 64), ceil(0.5 * 64)) = [4, 32) of the queue
    assert stats["negatives_per_anchor"] == 28


def test_moco_equal_count_ring_matches_the_per_anchor_estimator(tiny_config):
    method, views, q, k, pools = moco_case(tiny_config, 2)
    loss, stats = method(views, torch.arange(6), ring_sampler(num_negatives="equal"))
    expected = reference_ring(q, k, pools, 64, method.temperature, generator())
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["negatives_per_anchor"] == 64  # the queue size, as the uniform arm


def simclr_pools(z, batch):
    positives, pools = [], []
    for i in range(2 * batch):
        partner = (i + batch) % (2 * batch)
        positives.append(z[partner])
        pools.append([(j, z[j]) for j in range(2 * batch) if j not in (i, partner)])
    return torch.stack(positives), pools


def simclr_case(tiny_config, seed, batch=5):
    torch.manual_seed(seed)
    method = identity_method("simclr", tiny_config)
    views = [torch.randn(batch, 8, dtype=torch.float64) for _ in range(2)]
    z = F.normalize(torch.cat(views), dim=1)
    return method, views, z, *simclr_pools(z, batch)


def test_simclr_ring_is_every_member_once_as_the_authors(tiny_config):
    method, views, z, positives, pools = simclr_case(tiny_config, 3, batch=9)
    loss, stats = method(views, torch.arange(9), ring_sampler())
    expected = reference_ring_once(z, positives, pools, method.temperature)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["negatives_per_anchor"] == 7  # ranks [ceil(0.05 * 16), ceil(0.5 * 16)) = [1, 8)


def test_simclr_equal_count_ring_matches_the_per_anchor_estimator(tiny_config):
    method, views, z, positives, pools = simclr_case(tiny_config, 3)
    loss, stats = method(views, torch.arange(5), ring_sampler(num_negatives="equal"))
    expected = reference_ring(z, positives, pools, 8, method.temperature, generator())
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["negatives_per_anchor"] == 8  # 2B - 2


def test_uniform_losses_match_the_loop(tiny_config):
    torch.manual_seed(4)
    sampler = NegativeSampler("uniform", generator=generator())
    ir = identity_method("ir", tiny_config)
    bank = ir.bank.memory.clone()
    images, indices = torch.randn(5, 8, dtype=torch.float64), torch.tensor([3, 7, 0, 19, 11])
    loss, _ = ir([images], indices, sampler)
    drawn = torch.randint(19, (5, 32), generator=generator())
    drawn = drawn + (drawn >= indices.unsqueeze(1)).long()  # never the anchor's own entry
    z = F.normalize(images, dim=1)
    expected = (
        sum(nce_term(z[i], bank[indices[i]], bank[drawn[i]], ir.temperature) for i in range(5)) / 5
    )
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    torch.testing.assert_close(
        ir.bank.memory[indices], F.normalize(0.5 * bank[indices] + 0.5 * z, dim=1)
    )
    moco = identity_method("moco", tiny_config)
    query, key = torch.randn(6, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    queue = moco.queue.clone()
    loss, _ = moco([query, key], torch.arange(6), sampler)
    q, k = F.normalize(query, dim=1), F.normalize(key, dim=1)
    expected = sum(nce_term(q[i], k[i], queue, moco.temperature) for i in range(6)) / 6
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    torch.testing.assert_close(moco.queue[:6], k)  # the keys were enqueued
    assert moco.queue_ids[:6].tolist() == list(range(6))
    simclr = identity_method("simclr", tiny_config)
    first, second = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    loss, stats = simclr([first, second], torch.arange(5), sampler)
    z = F.normalize(torch.cat([first, second]), dim=1)
    positives, pools = simclr_pools(z, 5)
    expected = (
        sum(
            nce_term(z[i], positives[i], [v for _, v in pools[i]], simclr.temperature)
            for i in range(10)
        )
        / 10
    )
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["negatives_per_anchor"] == 8


def test_cmc_uniform_uses_the_same_draws_for_both_views(tiny_config):
    torch.manual_seed(3)
    method = identity_method("cmc", tiny_config, dim=2)
    bank_l, bank_ab = method.bank_l.memory.clone(), method.bank_ab.memory.clone()
    lab, indices = torch.randn(4, 3, 1, 2, dtype=torch.float64), torch.tensor([1, 5, 9, 2])
    loss, _ = method([lab], indices, NegativeSampler("uniform", generator=generator()))
    drawn = torch.randint(19, (4, 32), generator=generator())
    drawn = drawn + (drawn >= indices.unsqueeze(1)).long()
    z_l = F.normalize(lab[:, :1].flatten(1), dim=1)
    with torch.no_grad():
        z_ab = F.normalize(method.head_ab(lab[:, 1:].flatten(1)), dim=1)
    t = method.temperature
    expected = 0.0
    for z, bank in ((z_l, bank_ab), (z_ab, bank_l)):
        expected += sum(nce_term(z[i], bank[indices[i]], bank[drawn[i]], t) for i in range(4)) / 4
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_info_nce_is_stable_for_large_logits():
    loss = info_nce(torch.tensor([1000.0]), torch.tensor([[999.0, -1e4]]))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(math.log1p(math.exp(-1)), abs=1e-4)


def method_views(name, method, rows=6):
    shape = (rows, 3, 1, 2) if name == "cmc" else (rows, 8)
    return [torch.randn(*shape, dtype=torch.float64) for _ in range(method.num_views)]


@pytest.mark.parametrize("name", ["ir", "moco", "simclr"])
def test_full_ring_equals_uniform_through_the_ring_path(name, tiny_config, monkeypatch):
    """Ranks [0, 1) of the whole pool, taken as the authors do (a bank's: K draws; a queue's or
    batch's: once), is the uniform arm. The sampler would skip ranking here; the shortcut is
    switched off so that ranking, ordering and drawing run. (CMC is left out: its uniform arm
    shares one set of draws between its two terms, its ring draws per term.)"""
    torch.manual_seed(5)
    method = identity_method(name, tiny_config)
    views, indices = method_views(name, method), torch.arange(6)
    state = {k: v.clone() for k, v in method.state_dict().items()}
    ring = NegativeSampler("ring", upper=1.0, lower_ratio=0.0)
    monkeypatch.setattr(ring, "covers_whole_pool", lambda pool: False)
    losses = []
    for sampler in (NegativeSampler("uniform"), ring):
        method.load_state_dict(state)
        torch.manual_seed(6)
        losses.append(method(views, indices, sampler)[0].item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-12)


# --- DCL and HCL, per anchor from the equations ---------------------------------------------


def reference_debiased(anchor, positive, negatives, t, tau_plus, beta=0.0):
    """HCL's estimator (beta = 0: DCL's), one anchor, Python floats."""
    count = len(negatives)
    pos = math.exp(float(anchor @ positive) / t)
    exps = [math.exp(float(anchor @ n) / t) for n in negatives]
    tilts = [math.exp(beta * float(anchor @ n) / t) for n in negatives]
    mean_tilt = sum(tilts) / count
    weighted_mean = sum(w / mean_tilt * e for w, e in zip(tilts, exps)) / count
    ng = max((weighted_mean - tau_plus * pos) / (1.0 - tau_plus), math.exp(-1.0 / t))
    return -math.log(pos / (pos + count * ng))


@pytest.mark.parametrize(
    "name, tau_plus, beta",
    [("dcl", 0.1, 0.0), ("dcl", 0.3, 0.0), ("hcl", 0.1, 1.0), ("hcl", 0.2, 0.5)],
)
def test_debiased_losses_match_the_equations(name, tau_plus, beta, tiny_config):
    torch.manual_seed(7)
    method = identity_method("moco", tiny_config)
    query, key = torch.randn(6, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    queue = method.queue.clone()
    sampler = NegativeSampler(name, tau_plus=tau_plus, beta=beta)
    loss, _ = method([query, key], torch.arange(6), sampler)
    q, k = F.normalize(query, dim=1), F.normalize(key, dim=1)
    expected = (
        sum(
            reference_debiased(q[i], k[i], queue, method.temperature, tau_plus, beta)
            for i in range(6)
        )
        / 6
    )
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_debiased_clamp_reaches_its_floor(tiny_config):
    """A large tau_plus and a strong positive make the debiased sum negative: the floor."""
    torch.manual_seed(8)
    method = identity_method("moco", tiny_config)
    key = torch.randn(6, 8, dtype=torch.float64)
    queue = method.queue.clone()
    loss, _ = method([key, key], torch.arange(6), NegativeSampler("dcl", tau_plus=0.9))
    k = F.normalize(key, dim=1)
    expected = (
        sum(reference_debiased(k[i], k[i], queue, method.temperature, 0.9) for i in range(6)) / 6
    )
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert torch.isfinite(loss)


def hcl_of_similarities(positive, negatives, t, tau_plus, beta):
    """HCL's estimator for one anchor from its similarities, Python floats (as the official
    code: the weights e^{beta s/t} / mean are functions of the similarities)."""
    count = len(negatives)
    pos = math.exp(positive / t)
    tilts = [math.exp(beta * s / t) for s in negatives]
    weighted = sum(w * math.exp(s / t) for w, s in zip(tilts, negatives)) / sum(tilts)
    ng = max((weighted - tau_plus * pos) / (1.0 - tau_plus), math.exp(-1.0 / t))
    return -math.log(pos / (pos + count * ng))


def test_hcl_sends_gradient_through_its_importance_weights():
    """autograd's gradient w.r.t. every similarity equals central differences of the float64
    re-derivation: detaching the weights (a cheaper, different estimator) would not."""
    torch.manual_seed(13)
    t, tau_plus, beta, step = 0.5, 0.1, 1.0, 1e-6
    positive = (torch.rand(3, dtype=torch.float64) * 2 - 1).requires_grad_()
    negatives = (torch.rand(3, 6, dtype=torch.float64) * 2 - 1).requires_grad_()
    loss = hard_debiased_nce(positive / t, negatives / t, tau_plus, beta, t)
    grad_positive, grad_negatives = torch.autograd.grad(loss, (positive, negatives))

    def reference(pos, neg):
        return sum(hcl_of_similarities(p, n, t, tau_plus, beta) for p, n in zip(pos, neg)) / 3

    pos, neg = positive.tolist(), negatives.tolist()
    assert loss.item() == pytest.approx(reference(pos, neg), abs=1e-12)
    for i in range(3):
        moved = [[p + sign * step * (k == i) for k, p in enumerate(pos)] for sign in (1, -1)]
        slope = (reference(moved[0], neg) - reference(moved[1], neg)) / (2 * step)
        assert grad_positive[i].item() == pytest.approx(slope, abs=1e-7)
        for j in range(6):
            moved = [[row[:] for row in neg] for _ in (1, -1)]
            moved[0][i][j] += step
            moved[1][i][j] -= step
            slope = (reference(pos, moved[0]) - reference(pos, moved[1])) / (2 * step)
            assert grad_negatives[i, j].item() == pytest.approx(slope, abs=1e-7)


@pytest.mark.parametrize("ratio", [1.5, 40.0])
def test_debiased_floor_past_its_edge_has_finite_gradients(ratio):
    """tau_plus M e^p >= sum e^n (ratio r >= 1): the loss is the floor's, log(e^p + M e^{-1/t})
    - p, even where the debiased estimate with r clamped below 1 would lie above the floor
    (negatives near the anchor, s = 0.9 at t = 0.07), and no NaN reaches the gradient."""
    t, tau_plus, near = 0.07, 0.5, 0.9 / 0.07
    # r = tau_plus * M * e^p / sum e^n = 0.5 * 2 * e^p / (2 e^near): p = log(2r) + near
    positive = torch.tensor([math.log(2 * ratio) + near], dtype=torch.float64, requires_grad=True)
    negatives = torch.full((1, 2), near, dtype=torch.float64, requires_grad=True)
    loss = debiased_nce(positive, negatives, tau_plus, t)
    expected = math.log1p(2 * math.exp(-1 / t - positive.item()))
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    loss.backward()
    assert torch.isfinite(positive.grad).all() and torch.isfinite(negatives.grad).all()


def test_hcl_weights_for_the_monitor_are_the_softmax_of_beta_logits():
    negatives = torch.tensor([[0.0, 1.0, 2.0]])
    expected = torch.tensor([[1.0, math.e**0.5, math.e]]) / (1 + math.e**0.5 + math.e)
    torch.testing.assert_close(hardness_weights(negatives, 0.5), expected)


@pytest.mark.parametrize("count", [None, "equal"])
def test_hcl_within_the_ring_weighs_the_ring(count, tiny_config):
    """Over a queue the ring is used once (the authors' way, null) or drawn from (equal)."""
    method, views, q, k, pools = moco_case(tiny_config, 9)
    sampler = ring_sampler("hcl", within_ring=True, tau_plus=0.1, beta=1.0, num_negatives=count)
    loss, _ = method(views, torch.arange(6), sampler)
    ring_size = len(ring_of(q[0], pools[0], UPPER * LOWER_RATIO, UPPER))
    positions = torch.randint(ring_size, (6, 64), generator=generator())
    expected = 0.0
    for i in range(6):
        ring = ring_of(q[i], pools[i], UPPER * LOWER_RATIO, UPPER)
        negatives = [ring[p][1] for p in positions[i]] if count else [v for _, v in ring]
        expected += reference_debiased(q[i], k[i], negatives, method.temperature, 0.1, 1.0) / 6
    assert loss.item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("name", sorted(CONTRASTIVE))
@pytest.mark.parametrize(
    "strategy",
    [
        {"name": "dcl", "tau_plus": 0.0},
        {"name": "hcl", "tau_plus": 0.0, "beta": 0.0},
        {"name": "mochi", "mochi_hardest": 4, "mochi_pairs": 0, "mochi_query": 0},
    ],
)
def test_limits_give_uniform_infonce(name, strategy, tiny_config):
    torch.manual_seed(10)
    method = identity_method(name, tiny_config, dim=2 if name == "cmc" else 8)
    views, indices = method_views(name, method), torch.arange(6)
    state = {k: v.clone() for k, v in method.state_dict().items()}
    losses = []
    for sampler in (NegativeSampler("uniform"), NegativeSampler(**strategy)):
        method.load_state_dict(state)
        torch.manual_seed(11)
        losses.append(method(views, indices, sampler)[0].item())
    assert losses[1] == pytest.approx(losses[0], abs=1e-9)


# --- MoCHi --------------------------------------------------------------------------------


def reference_mochi(anchors, positives, negative_lists, sizes, t, draws):
    """Mean MoCHi loss, one anchor at a time: its N hardest negatives (listed in the order of
    its negative list), ``pairs`` mixes of two of them and ``with_query`` mixes with the query
    (eqs. 2 and 3), all in the normaliser beside the real negatives. ``draws`` continues the
    generator the batched code used."""
    hardest, pairs, with_query = sizes
    rows = len(anchors)
    first = torch.randint(hardest, (rows, pairs), generator=draws)
    second = torch.randint(hardest, (rows, pairs), generator=draws)
    alpha = torch.rand(rows, pairs, 1, generator=draws)
    partner = torch.randint(hardest, (rows, with_query), generator=draws)
    beta = 0.5 * torch.rand(rows, with_query, 1, generator=draws)
    total = 0.0
    for i, (anchor, positive, negatives) in enumerate(zip(anchors, positives, negative_lists)):
        scores = [float(anchor @ n) for n in negatives]
        order = sorted(range(len(negatives)), key=lambda j: -scores[j])
        hard = [negatives[j] for j in sorted(order[:hardest])]
        mixes = [
            F.normalize(
                alpha[i, m] * hard[first[i, m]] + (1 - alpha[i, m]) * hard[second[i, m]], dim=0
            )
            for m in range(pairs)
        ]
        mixes += [
            F.normalize(beta[i, m] * anchor + (1 - beta[i, m]) * hard[partner[i, m]], dim=0)
            for m in range(with_query)
        ]
        total += nce_term(anchor, positive, list(negatives) + mixes, t)
    return total / rows


def mochi_sampler(sizes):
    hardest, pairs, with_query = sizes
    return NegativeSampler(
        "mochi",
        mochi_hardest=hardest,
        mochi_pairs=pairs,
        mochi_query=with_query,
        generator=generator(),
    )


def test_mochi_matches_the_mixing_equations(tiny_config):
    method, views, q, k, pools = moco_case(tiny_config, 12)
    sizes = (10, 6, 3)
    loss, stats = method(views, torch.arange(6), mochi_sampler(sizes))
    assert stats["negatives_per_anchor"] == 64 + 6 + 3
    queue = [vector for _, vector in pools[0]]
    expected = reference_mochi(q, k, [queue] * 6, sizes, method.temperature, generator())
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_simclr_mochi_mixes_its_own_in_batch_negatives(tiny_config):
    """Hardest positions index the anchor's negative list (no anchor, no positive), not the
    batch."""
    method, views, z, positives, pools = simclr_case(tiny_config, 15, batch=6)
    sizes = (6, 5, 3)
    loss, _ = method(views, torch.arange(6), mochi_sampler(sizes))
    negative_lists = [[vector for _, vector in pool] for pool in pools]
    expected = reference_mochi(z, positives, negative_lists, sizes, method.temperature, generator())
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_ir_mochi_mixes_its_drawn_bank_entries(tiny_config):
    """Hardest positions index the anchor's K drawn entries, not the bank's rows."""
    torch.manual_seed(16)
    tiny_config["ir"]["num_negatives"] = 16
    method = identity_method("ir", tiny_config, num_samples=5000)
    bank = method.bank.memory.clone()
    images, indices = torch.randn(4, 8, dtype=torch.float64), torch.tensor([3, 70, 0, 4999])
    sizes = (8, 6, 2)
    loss, _ = method([images], indices, mochi_sampler(sizes))
    draws = generator()
    drawn = torch.randint(4999, (4, 16), generator=draws)
    drawn = drawn + (drawn >= indices.unsqueeze(1)).long()
    assert all(len(set(row)) == 16 for row in drawn.tolist())  # no entry twice: no tied ranks
    z = F.normalize(images, dim=1)
    negative_lists = [list(bank[row]) for row in drawn]
    expected = reference_mochi(z, bank[indices], negative_lists, sizes, method.temperature, draws)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_mochi_synthetic_negatives_carry_no_gradient():
    """The mixes are constants: gradient reaches the query only through q . h (MoCHi sec. 4)."""
    query = F.normalize(torch.randn(3, 8, dtype=torch.float64), dim=1).requires_grad_()
    hard = F.normalize(torch.randn(3, 5, 8, dtype=torch.float64), dim=2).requires_grad_()
    mixes = mochi_negatives(query, hard, 4, 2, generator())
    assert mixes.shape == (3, 6, 8) and not mixes.requires_grad
    torch.testing.assert_close(mixes.norm(dim=2), torch.ones(3, 6, dtype=torch.float64))
    logits = torch.einsum("bd,bkd->bk", query, mixes)
    (grad,) = torch.autograd.grad(logits.sum(), query)
    torch.testing.assert_close(grad, mixes.sum(dim=1))


@pytest.mark.parametrize("size", [4, 6, 10, 64])
def test_in_batch_negatives_are_every_column_but_the_anchor_and_its_pair(size):
    """The arithmetic index (SimCLR's, built on the device per step) against its definition,
    for all rows and for one rank's rows."""
    rows = torch.arange(size)
    pair = (rows + size // 2) % size
    columns = rows.expand(size, size)
    wanted = columns[(columns != rows[:, None]) & (columns != pair[:, None])].view(size, -1)
    assert torch.equal(pair_partner(rows, size), pair)
    assert torch.equal(in_batch_negative_index(rows, size), wanted)
    mine = torch.cat([rows[: size // 4], rows[size // 2 : size // 2 + size // 4]])
    assert torch.equal(in_batch_negative_index(mine, size), wanted[mine])
