"""Ring membership by rank on both routes (torch's topk, used on GPUs, and numpy's
argpartition, used on the CPU), against a full argsort; the CPU route's blocks and threads."""

import threading

import pytest
import torch

import pretrain.ranking as ranking
from pretrain.ranking import ROUTES, rank_slice
from pretrain.samplers import ring_rank_range

from ring_reference import ring_by_argsort  # isort: skip


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


def by_route(route, similarity, start, stop):
    """Sorted member lists of one route."""
    return ROUTES[route](similarity, start, stop).sort(dim=1).values.tolist()


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("lower, upper", [(0.01, 0.1), (0.0, 0.5), (0.2, 0.3), (0.05, 1.0)])
def test_ring_keeps_exactly_the_rank_fractions(route, lower, upper):
    torch.manual_seed(0)
    similarity = torch.randn(7, 40)
    rank_fraction = ranks_of(similarity).double() / 40
    expected = (rank_fraction >= lower) & (rank_fraction < upper)
    columns = ROUTES[route](similarity, *ring_rank_range(40, lower, upper))
    assert columns.shape[1] == expected[0].sum()  # no column twice
    assert torch.equal(kept_mask(columns, 40), expected)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "size, start, stop",
    [(600, 12, 120), (600, 0, 600), (600, 599, 600), (600, 0, 1), (1, 0, 1), (6554, 65, 655)],
)
def test_both_routes_give_the_argsort_members(route, size, start, stop):
    torch.manual_seed(size + start)
    similarity = torch.randn(5, size)
    assert by_route(route, similarity, start, stop) == ring_by_argsort(similarity, start, stop)


@pytest.mark.parametrize("route", ROUTES)
def test_ties_at_a_boundary_keep_the_values_of_the_sorted_ranks(route):
    # ranks 1..3 asked for; the value 3 sits at ranks 2, 3 and 4: two of the three enter
    similarity = torch.tensor([[5.0, 4.0, 3.0, 3.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0]])
    kept = similarity.gather(1, ROUTES[route](similarity, 1, 4))
    assert sorted(kept[0].tolist()) == [3.0, 3.0, 4.0]
    # the top value tied twice: rank 1 is the second 9
    tied_top = torch.tensor([[9.0, 9.0, 1.0, 0.0]])
    kept = tied_top.gather(1, ROUTES[route](tied_top, 1, 3))
    assert sorted(kept[0].tolist()) == [1.0, 9.0]


def test_the_ring_used_once_is_the_same_members_unordered():
    torch.manual_seed(3)
    similarity = torch.randn(4, 600)
    unordered = rank_slice(similarity, 12, 120, by_column=False)
    assert [sorted(row) for row in unordered.tolist()] == ring_by_argsort(similarity, 12, 120)
    assert rank_slice(similarity, 12, 120).tolist() == ring_by_argsort(similarity, 12, 120)


def test_the_cpu_ranks_by_partition_other_devices_by_topk(monkeypatch):
    called = []

    def recording(route, function):
        def spy(*args):
            called.append(route)
            return function(*args)

        return spy

    for route, function in dict(ROUTES).items():
        monkeypatch.setitem(ROUTES, route, recording(route, function))
    rank_slice(torch.randn(3, 50), 5, 20)
    members = rank_slice(torch.empty(3, 50, device="meta"), 5, 20)  # no data: a stand-in GPU
    assert called == ["partition", "topk"] and members.shape == (3, 15)


@pytest.fixture
def blocks_seen(monkeypatch):
    """(thread name, rows) of every block the CPU route ranks."""
    seen = []
    original = ranking._partition_block

    def recording(scores, start, stop):
        seen.append((threading.current_thread().name, scores.shape[0]))
        return original(scores, start, stop)

    monkeypatch.setattr(ranking, "_partition_block", recording)
    return seen


@pytest.fixture
def torch_threads():
    """Set torch's intra-op thread count for one test."""
    previous = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(previous)


def test_blocks_fit_the_index_scratch_budget(monkeypatch, blocks_seen):
    """rows per block = BLOCK_BYTES // (8 P): argpartition's int64 indices stay within it."""
    torch.manual_seed(7)
    similarity = torch.randn(9, 300)
    monkeypatch.setattr(ranking, "BLOCK_BYTES", 2 * 8 * 300)  # exactly two rows
    assert by_route("partition", similarity, 3, 30) == ring_by_argsort(similarity, 3, 30)
    assert [rows for _, rows in blocks_seen] == [2, 2, 2, 2, 1]
    blocks_seen.clear()
    monkeypatch.setattr(ranking, "BLOCK_BYTES", 1)  # not even one row: one row a block
    assert by_route("partition", similarity, 3, 30) == ring_by_argsort(similarity, 3, 30)
    assert [rows for _, rows in blocks_seen] == [1] * 9


def test_blocks_over_threads_give_the_single_block_answer(monkeypatch, blocks_seen, torch_threads):
    """One row a block on at most torch's two threads: the one-block, one-thread members."""
    torch.manual_seed(4)
    similarity = torch.randn(9, 300)
    monkeypatch.setattr(ranking, "BLOCK_BYTES", 8 * 300)
    monkeypatch.setattr(ranking, "ENTRIES_PER_WORKER", 300)
    torch_threads(2)
    assert by_route("partition", similarity, 3, 30) == ring_by_argsort(similarity, 3, 30)
    threads = {name for name, _ in blocks_seen}
    assert len(blocks_seen) == 9 and 1 <= len(threads) <= 2
    assert all(name.startswith("ring-rank") for name in threads)
    alive = [thread.name for thread in threading.enumerate()]
    assert not [name for name in alive if name.startswith("ring-rank")]  # gone with the call


@pytest.mark.parametrize(
    "threads, entries_per_worker",
    [(2, 1500), (1, 1)],  # 2,700 entries: under two workers' worth; one torch thread
)
def test_little_work_or_one_thread_stays_on_the_calling_thread(
    monkeypatch, blocks_seen, torch_threads, threads, entries_per_worker
):
    """Under 2 x ENTRIES_PER_WORKER entries a second thread costs more than it saves; and
    never more threads than torch's."""
    monkeypatch.setattr(ranking, "BLOCK_BYTES", 8 * 300)
    monkeypatch.setattr(ranking, "ENTRIES_PER_WORKER", entries_per_worker)
    torch_threads(threads)
    ranking.partition_rank_slice(torch.randn(9, 300), 3, 30)
    assert {name for name, _ in blocks_seen} == {threading.current_thread().name}


def test_a_block_that_fails_raises_in_the_caller(monkeypatch, torch_threads):
    monkeypatch.setattr(ranking, "BLOCK_BYTES", 8 * 300)
    monkeypatch.setattr(ranking, "ENTRIES_PER_WORKER", 300)
    original = ranking._partition_block

    def failing(scores, start, stop):
        if scores[0, 0] == 7.0:
            raise ValueError("block 3 failed")
        return original(scores, start, stop)

    monkeypatch.setattr(ranking, "_partition_block", failing)
    similarity = torch.randn(6, 300)
    similarity[3, 0] = 7.0
    torch_threads(2)
    with pytest.raises(ValueError, match="block 3 failed"):
        ranking.partition_rank_slice(similarity, 3, 30)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_the_cpu_route_ranks_other_float_types_by_their_own_values(dtype):
    """numpy has no bfloat16: the route widens, which keeps every order and tie."""
    torch.manual_seed(5)
    similarity = torch.randn(4, 500).to(dtype)
    members = ROUTES["partition"](similarity, 10, 60)
    assert members.dtype == torch.long
    assert sorted_values(similarity, members) == sorted_values(
        similarity, torch.tensor(ring_by_argsort(similarity.double(), 10, 60))
    )


def sorted_values(similarity, columns):
    """Tied values may swap columns at a boundary; the values they bring may not change."""
    return similarity.gather(1, columns).double().sort(dim=1).values.tolist()


def test_a_strided_similarity_is_ranked_as_its_copy():
    torch.manual_seed(6)
    similarity = torch.randn(300, 7).T  # (7, 300), column-major
    assert not similarity.is_contiguous()
    assert by_route("partition", similarity, 3, 30) == ring_by_argsort(similarity, 3, 30)
