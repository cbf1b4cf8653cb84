"""Ring selection (ranks, ties, subsampling) and the schedules of ring.upper and the lr."""

import math

import pytest
import torch

from pretrain.errors import PretrainError
from pretrain.samplers import NegativeSampler, ring_columns, ring_rank_range, subsample_columns
from pretrain.schedules import lr_factor, ring_upper_at
from pretrain.trainer import load_pretrain_config


def ranks_of(similarity):
    """Rank of each entry in its row, 0 = most similar (distinct values only)."""
    order = similarity.argsort(dim=1, descending=True)
    return torch.empty_like(order).scatter_(
        1, order, torch.arange(similarity.shape[1]).expand_as(order)
    )


def kept_mask(columns, num_candidates):
    return torch.zeros(columns.shape[0], num_candidates, dtype=torch.bool).scatter_(
        1, columns, True
    )


@pytest.mark.parametrize("lower, upper", [(0.01, 0.1), (0.0, 0.5), (0.2, 0.3), (0.05, 1.0)])
def test_ring_keeps_exactly_the_rank_fractions(lower, upper):
    torch.manual_seed(0)
    similarity = torch.randn(7, 40)
    rank_fraction = ranks_of(similarity).double() / 40
    expected = (rank_fraction >= lower) & (rank_fraction < upper)
    columns = ring_columns(similarity, lower, upper)
    assert columns.shape[1] == expected[0].sum()  # no column twice
    assert torch.equal(kept_mask(columns, 40), expected)


def test_rank_range_is_exact_despite_float_error():
    assert ring_rank_range(30, 0.01, 0.1) == (1, 3)  # 0.1 * 30 = 3.0000000000000004
    assert ring_rank_range(100, 0.01, 0.1) == (1, 10)
    assert ring_rank_range(10, 0.0, 0.01) == (0, 1)  # never empty


def test_ties_at_a_boundary_keep_the_values_of_the_sorted_ranks():
    # ranks 1..3 asked for; the value 3 sits at ranks 2, 3 and 4: two of the three enter
    similarity = torch.tensor([[5.0, 4.0, 3.0, 3.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0]])
    kept = similarity.gather(1, ring_columns(similarity, 0.1, 0.4))
    assert sorted(kept[0].tolist()) == [3.0, 3.0, 4.0]
    # the top value tied twice: rank 1 is the second 9
    tied_top = torch.tensor([[9.0, 9.0, 1.0, 0.0]])
    kept = tied_top.gather(1, ring_columns(tied_top, 0.25, 0.75))
    assert sorted(kept[0].tolist()) == [1.0, 9.0]


def test_full_ring_keeps_all_and_uniform_selects_nothing():
    sampler = NegativeSampler("ring", upper=1.0, lower_ratio=0.0)
    assert torch.equal(
        sampler.select(torch.randn(3, 9)).sort(1).values, torch.arange(9).expand(3, 9)
    )
    assert NegativeSampler("uniform").select(torch.randn(3, 9)) is None


def test_num_negatives_draws_from_inside_the_ring():
    torch.manual_seed(1)
    similarity = torch.randn(5, 200)
    ring = ring_columns(similarity, 0.05, 0.5)
    drawn = subsample_columns(ring, 10)
    assert drawn.shape == (5, 10)
    for row_drawn, row_ring in zip(drawn.tolist(), ring.tolist()):
        assert len(set(row_drawn)) == 10 and set(row_drawn) <= set(row_ring)
    sampler = NegativeSampler("ring", upper=0.5, lower_ratio=0.1, num_negatives=10)
    assert sampler.select(similarity).shape == (5, 10)


def test_linear_cosine_step_constant_upper():
    assert [ring_upper_at(e, "linear", 1.0, 0.1, 10) for e in (0, 5, 10, 20)] == pytest.approx(
        [1.0, 0.55, 0.1, 0.1]
    )
    cosine = [ring_upper_at(e, "cosine", 1.0, 0.1, 10) for e in (0, 5, 10, 30)]
    assert cosine == pytest.approx([1.0, 0.55, 0.1, 0.1])
    assert ring_upper_at(2.5, "cosine", 1.0, 0.1, 10) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))
    )
    assert [ring_upper_at(e, "step", 1.0, 0.1, 10) for e in (0, 9.9, 10)] == [1.0, 1.0, 0.1]
    steps = [ring_upper_at(e, "step", 1.0, 0.01, 0, [5, 10]) for e in (0, 5, 10)]
    assert steps == pytest.approx([1.0, 0.1, 0.01])
    assert ring_upper_at(3, "constant", 1.0, 0.2, 10) == 0.2
    with pytest.raises(PretrainError, match="unknown sampler.schedule 'exp'"):
        ring_upper_at(0, "exp", 1.0, 0.1, 10)


def test_schedule_runs_from_a_shipped_config():
    cfg = load_pretrain_config(
        "configs/pretrain/ring_moco_fmnist.yaml",
        ["sampler.schedule=linear", "sampler.anneal_epochs=2"],
    )
    sampler = NegativeSampler.from_config(cfg.sampler)
    uppers = []
    for epoch in (0, 1, 2, 3):
        sampler.set_epoch(epoch)
        uppers.append(sampler.upper)
    assert uppers == pytest.approx([1.0, 0.55, 0.1, 0.1])
    assert sampler.lower == pytest.approx(0.01)


def test_lr_warmup_then_cosine_and_step():
    factors = [lr_factor(s, 10, 2, "cosine") for s in range(11)]
    assert factors[:2] == [0.5, 1.0] and factors[2] == 1.0 and factors[10] == pytest.approx(0.0)
    assert factors[6] == pytest.approx(0.5)
    assert [lr_factor(s, 10, 0, "step", [4, 8], 0.1) for s in (3, 4, 8)] == pytest.approx(
        [1.0, 0.1, 0.01]
    )


def test_bad_sampler_settings():
    with pytest.raises(PretrainError, match="unknown sampler 'hard'"):
        NegativeSampler("hard")
    with pytest.raises(PretrainError, match="sampler.upper"):
        NegativeSampler("ring", upper=0.0)
