"""Ring selection (ranks, ties, draws, chunked bank ranking), schedules, and bad sampler input."""

import math
from pathlib import Path

import pytest
import torch

from pretrain.errors import PretrainError
from pretrain.pools import BankPool, DensePool
from pretrain.samplers import NegativeSampler, draw_positions, ring_rank_range
from pretrain.schedules import lr_factor, ring_upper_at
from pretrain.trainer import load_pretrain_config, train

from ring_reference import ring_by_argsort  # isort: skip


def test_rank_range_is_exact_despite_float_error():
    assert ring_rank_range(30, 0.01, 0.1) == (1, 3)  # 0.1 * 30 = 3.0000000000000004
    assert ring_rank_range(100, 0.01, 0.1) == (1, 10)
    assert ring_rank_range(10, 0.02, 0.01) == (1, 1)  # empty: check_pool names the fix


def test_whole_pool_shortcut_only_where_the_ring_is_the_uniform_arm():
    dense = DensePool(torch.randn(3, 9), torch.randn(9, 4), torch.arange(9))
    bank = BankPool(torch.randn(3, 4), torch.randn(10, 4), torch.tensor([0, 1, 2]), draw_count=5)
    whole = {"upper": 1.0, "lower_ratio": 0.0}
    assert NegativeSampler("ring", **whole).covers_whole_pool(dense)  # once: all of the queue
    assert NegativeSampler("ring", **whole).covers_whole_pool(bank)  # K draws: uniform's
    assert NegativeSampler("ring", **whole).choose(dense) is None
    assert not NegativeSampler("ring", num_negatives="equal", **whole).covers_whole_pool(dense)
    assert not NegativeSampler("ring", num_negatives="ring", **whole).covers_whole_pool(bank)
    assert not NegativeSampler("ring", replacement=False, **whole).covers_whole_pool(bank)
    assert not NegativeSampler("ring", upper=1.0, lower_ratio=0.1).covers_whole_pool(dense)
    assert NegativeSampler("uniform").choose(dense) is None


@pytest.mark.parametrize("count", [None, "equal", "ring", 7])
def test_the_ring_count_follows_the_authors_per_pool(count):
    """null: a bank's ring is drawn from (NCERing), a queue's used once (MoCoRing)."""
    dense = DensePool(torch.randn(3, 50), torch.randn(50, 4), torch.arange(50))
    bank = BankPool(torch.randn(3, 4), torch.randn(51, 4), torch.tensor([0, 1, 2]), draw_count=30)
    sampler = NegativeSampler("ring", upper=0.5, num_negatives=count)
    expected = {
        None: (None, 30),
        "equal": (50, 30),
        "ring": (None, None),
        7: (7, 7),
    }[count]
    assert (sampler.ring_draws(dense), sampler.ring_draws(bank)) == expected


def test_ring_draws_come_from_inside_the_ring_with_replacement():
    torch.manual_seed(1)
    similarity = torch.randn(5, 200)
    ring = ring_by_argsort(similarity, 10, 100)  # ranks [0.05, 0.5) of 200
    pool = DensePool(similarity, torch.randn(200, 4), torch.arange(200))
    equal = NegativeSampler("ring", upper=0.5, lower_ratio=0.1, num_negatives="equal")
    drawn = equal.choose(pool)
    assert drawn.members.tolist() == ring  # listed by column
    assert drawn.columns().shape == (5, 200)  # as many as the uniform arm
    for row_drawn, row_ring in zip(drawn.columns().tolist(), ring):
        assert set(row_drawn) <= set(row_ring) and len(set(row_drawn)) < 200
    for count in (None, "ring"):  # the authors' MoCoRing: every member once
        once = NegativeSampler("ring", upper=0.5, lower_ratio=0.1, num_negatives=count)
        assert [sorted(row) for row in once.choose(pool).tolist()] == ring
    distinct = draw_positions(5, 90, 90, replacement=False)
    assert all(sorted(row) == list(range(90)) for row in distinct.tolist())


def test_bank_ranking_in_chunks_equals_one_dense_ranking():
    """The memory bound changes nothing: chunks of one row give the dense answer."""
    torch.manual_seed(2)
    anchor, bank = torch.randn(6, 8), torch.nn.functional.normalize(torch.randn(300, 8), dim=1)
    own = torch.tensor([0, 5, 299, 17, 17, 100])
    pool = BankPool(anchor, bank, own, draw_count=16)
    dense = (anchor @ bank.T).scatter(1, own.unsqueeze(1), float("-inf"))
    expected = ring_by_argsort(dense, 3, 30)
    assert pool.ring_members(3, 30, max_bytes=1).tolist() == expected  # one row a chunk
    assert pool.ring_members(3, 30, max_bytes=2**30).tolist() == expected
    assert not (pool.ring_members(0, 299, 2**30) == own.unsqueeze(1)).any()  # never its own


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
        ["sampler.schedule=linear", "sampler.anneal_fraction=0.5", "optim.epochs=4"],
    )
    sampler = NegativeSampler.from_config(cfg.sampler, cfg.optim.epochs)
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


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "hard"}, "unknown sampler 'hard'"),
        ({"name": "ring", "upper": 0.0}, "sampler.upper"),
        ({"name": "ring", "upper": 1.5}, "sampler.upper"),
        ({"name": "ring", "lower_ratio": 1.0}, "sampler.lower_ratio"),
        ({"name": "mochi", "within_ring": True}, "sampler.within_ring is not defined"),
        ({"name": "ring", "within_ring": True}, "sampler.within_ring is not defined"),
        ({"name": "dcl", "tau_plus": 1.0}, "sampler.tau_plus"),
        ({"name": "hcl", "beta": -0.5}, "sampler.beta"),
        ({"name": "mochi", "mochi_hardest": 4, "mochi_pairs": 8}, "sampler.mochi_pairs"),
        ({"name": "ring", "num_negatives": 0}, "sampler.num_negatives"),
        ({"name": "ring", "num_negatives": "all"}, "'equal' .*'ring'"),
        ({"name": "ring", "num_negatives": True}, "sampler.num_negatives"),
        ({"name": "ring", "schedule": "exp"}, "unknown sampler.schedule 'exp'"),
    ],
)
def test_bad_sampler_settings_name_the_key(kwargs, message):
    with pytest.raises(PretrainError, match=message):
        NegativeSampler(**kwargs)


def test_pools_too_small_for_the_strategy_name_the_fix():
    with pytest.raises(PretrainError, match="keeps no candidate; raise sampler.upper"):
        NegativeSampler("ring", upper=0.01).check_pool(30, "queue entries")
    with pytest.raises(PretrainError, match="mochi_hardest=1024 exceeds the 254 negatives"):
        NegativeSampler("mochi").check_pool(254, "in-batch negatives")
    with pytest.raises(PretrainError, match="mochi_hardest=1024 exceeds the 512 negatives"):
        NegativeSampler("mochi").check_pool(59999, "other bank entries", usual_count=512)
    pool = DensePool(torch.randn(2, 50), torch.randn(50, 4), torch.arange(50))
    sampler = NegativeSampler("ring", upper=0.2, num_negatives=40, replacement=False)
    assert sampler.ring_draws(pool) == 40
    with pytest.raises(PretrainError, match="without replacement from a ring of 9"):
        sampler.choose(pool)


@pytest.mark.parametrize(
    "method, sampler, message",
    [
        ("simclr", {"name": "mochi"}, "mochi_hardest=1024 exceeds the 30 negatives"),
        ("moco", {"name": "ring", "upper": 0.01}, "of 64 queue entries keeps no candidate"),
        ("ir", {"name": "ring", "upper": 0.01}, "of 63 other bank entries keeps no candidate"),
    ],
)
def test_the_trainer_refuses_a_pool_too_small_before_writing(method, sampler, message, tiny_config):
    tiny_config.update(method=method, sampler=sampler)
    with pytest.raises(PretrainError, match=message):
        train(tiny_config)
    assert not Path(tiny_config["output_dir"]).exists()  # nothing written, nothing lost


LEAVES = sorted(Path("configs/pretrain").glob("*_*_*.yaml"))


@pytest.mark.parametrize("leaf", LEAVES, ids=lambda path: path.stem)
def test_every_shipped_strategy_fits_its_methods_pool(leaf):
    """Each leaf's sampler passes the trainer's pool check (e.g. MoCHi's N <= 2B-2 for SimCLR)."""
    cfg = load_pretrain_config(leaf)
    sampler = NegativeSampler.from_config(cfg.sampler, cfg.optim.epochs)
    if cfg.method == "simclr":
        pool = 2 * cfg.optim.batch_size - 2
        sampler.check_pool(pool, "in-batch negatives")
    elif cfg.method == "moco":
        sampler.check_pool(cfg.moco.queue_size, "queue entries")
    else:
        sampler.check_pool(50_000, "other bank entries", cfg[cfg.method].num_negatives)


def test_the_samplers_keyword_defaults_are_the_config_schemas():
    """A sampler built in code behaves as one built from a config that sets nothing."""
    from pretrain.defaults import DEFAULTS

    built = NegativeSampler()
    schema = NegativeSampler.from_config(DEFAULTS["sampler"], total_epochs=1.0)
    for sampler in (built, schema):
        assert sampler.name == "uniform" and sampler.stats() == {}
        assert sampler.anneal_epochs == 0.5 and sampler.rank_chunk_bytes == 256 * 2**20
        assert (sampler.tau_plus, sampler.beta, sampler.mochi) == (0.1, 1.0, (1024, 1024, 256))
        assert (sampler.target_upper, sampler.lower_ratio, sampler.num_negatives) == (
            0.1,
            0.1,
            None,
        )


def test_draws_without_replacement_follow_their_generator():
    drawn = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)  # must not matter: the sampler's generator decides
        generator = torch.Generator().manual_seed(5)
        drawn.append(draw_positions(3, 20, 6, replacement=False, generator=generator))
    assert torch.equal(drawn[0], drawn[1])


def test_ring_stats_and_the_generator_from_config():
    ring = NegativeSampler("ring", upper=0.2, lower_ratio=0.25)
    assert ring.stats() == {"ring_upper": 0.2, "ring_lower": pytest.approx(0.05)}
    generator = torch.Generator()
    cfg = load_pretrain_config(
        "configs/pretrain/ring_moco_fmnist.yaml", ["sampler.schedule=linear"]
    )
    sampler = NegativeSampler.from_config(cfg.sampler, generator=generator)
    assert sampler.generator is generator
    assert sampler.anneal_epochs == 0.5  # anneal_fraction of the default one epoch
    assert sampler.upper == 1.0  # built at epoch 0: the schedule's start


def test_step_fractions_are_fractions_of_the_epochs():
    sampler = NegativeSampler(
        "ring", upper=0.01, schedule="step", step_fractions=[0.25, 0.5], total_epochs=8
    )
    uppers = []
    for epoch in (0, 1.9, 2, 4):
        sampler.set_epoch(epoch)
        uppers.append(sampler.upper)
    assert uppers == pytest.approx([1.0, 1.0, 0.1, 0.01])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "hard"}, "choose one of uniform, ring, dcl, hcl, mochi$"),
        ({"name": "dcl", "within_ring": True, "upper": 0.1, "lower_ratio": 0.1, "start": 0.0},
         r"sampler.upper and sampler.start must be in \(0, 1\]"),
        ({"name": "ring", "start": 1.5}, r"sampler.start must be in \(0, 1\]"),
        ({"name": "mochi", "within_ring": True}, r"with dcl or hcl \(ring alone"),
        ({"name": "ring", "schedule": "exp"}, "choose one of constant, linear, cosine, step$"),
        ({"name": "mochi", "mochi_hardest": 4, "mochi_query": 8}, "sampler.mochi_query"),
        ({"name": "mochi", "mochi_hardest": 4, "mochi_pairs": 5, "mochi_query": 0},
         "sampler.mochi_pairs"),
    ],
)  # fmt: skip
def test_sampler_errors_say_what_is_allowed(kwargs, message):
    with pytest.raises(PretrainError, match=message):
        NegativeSampler(**kwargs)


def test_sampler_bounds_themselves_are_valid():
    NegativeSampler("ring", num_negatives=1)
    NegativeSampler("mochi", mochi_hardest=4, mochi_pairs=4, mochi_query=4)
    NegativeSampler("ring", upper=1.0, start=1.0)


def test_an_empty_ring_names_the_pool_and_the_fix():
    pool = DensePool(torch.randn(2, 30), torch.randn(30, 4), torch.arange(30))
    sampler = NegativeSampler("ring", upper=0.02, lower_ratio=0.5)  # ranks [0.3, 0.6) of 30
    with pytest.raises(
        PretrainError,
        match=r"^the ring \[0\.01, 0\.02\) of 30 candidates keeps no candidate; raise "
        r"sampler\.upper to at least 0\.0667$",
    ):
        sampler.choose(pool)
    with pytest.raises(
        PretrainError, match=r"of 1 queue entries keeps no candidate; .* at least 1$"
    ):
        NegativeSampler("ring").check_pool(1, "queue entries")
    with pytest.raises(PretrainError, match=r"sampler.mochi_hardest=300 exceeds the 254"):
        NegativeSampler("mochi", mochi_hardest=300, mochi_pairs=10, mochi_query=10).check_pool(
            254, "in-batch negatives"
        )


def test_drawing_the_whole_ring_without_replacement_is_allowed():
    pool = DensePool(torch.randn(2, 50), torch.randn(50, 4), torch.arange(50))
    sampler = NegativeSampler("ring", upper=0.2, num_negatives=9, replacement=False)
    drawn = sampler.choose(pool)  # ranks [1, 10): exactly 9 members, each once
    assert all(sorted(row) == list(range(9)) for row in drawn.positions.tolist())


def test_a_bank_is_ranked_in_chunks_that_fit_the_budget(monkeypatch):
    """rows per chunk = max_bytes // (N * 4 + stop * 12): the documented memory bound."""
    import pretrain.pools as pools

    seen = []
    original = pools.rank_slice

    def spy(similarity, start, stop, by_column=True):
        seen.append(similarity.shape[0])
        return original(similarity, start, stop, by_column)

    monkeypatch.setattr(pools, "rank_slice", spy)
    bank = torch.nn.functional.normalize(torch.randn(300, 8), dim=1)
    pool = BankPool(torch.randn(7, 8), bank, torch.arange(7), draw_count=16)
    per_row = 300 * 4 + 30 * 12
    pool.ring_members(3, 30, max_bytes=3 * per_row)
    assert seen == [3, 3, 1]
    seen.clear()
    pool.ring_members(3, 30, max_bytes=per_row + per_row - 1)  # one row fits: one a chunk
    assert seen == [1] * 7
