"""Exact rank slices of similarity rows: which candidates make up each anchor's ring.

``rank_slice(similarity, start, stop)`` gives each row's columns of ranks ``[start, stop)``
(rank 0 = the most similar) without sorting whole rows. Both routes below select the same
members. Ties at a boundary take consecutive ranks in any order on either route; tied values
are equal logits, so the loss is the same.

- **CUDA** (any device but the CPU): torch's ``topk``, one unsorted top-``stop`` per row and
  a bottom-``(stop - start)`` inside it. On a GPU these take a few hundred microseconds.
- **CPU**: numpy's ``argpartition`` (introselect, SIMD-vectorised where numpy has a kernel for the
  CPU: AVX2 and AVX-512 on x86), run in the same two steps. torch's CPU ``topk`` copies every
  (value, index) pair of a row before selecting, about 16 ns an entry against about 6 ns (MoCo's
  256 x 65,536, one thread: 306-336 ms against 95-110 ms; ``benchmarks/ring_selection.py``,
  ``docs/benchmarks.md``). Rows go in blocks, so each worker's int64 index scratch stays within
  ``BLOCK_BYTES``. The blocks are spread over as many threads as torch's intra-op pool has: numpy
  releases the GIL while it selects. Otherwise a many-core CPU, where torch parallelises ``topk``
  over rows, would lose to one core.
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

# argpartition's int64 index array for one block of rows; 1 MiB (two of MoCo's 65,536-entry
# rows) stays in cache: 95-110 ms for MoCo's ring on one thread with 0.5-2 MiB blocks,
# 113-134 ms with 4-32 MiB (docs/benchmarks.md)
BLOCK_BYTES = 2**20
# below ~6 ms of selection a second thread no longer pays for itself (2 threads at 256 x 4,096:
# 6.3 ms against 7.8 ms on one)
ENTRIES_PER_WORKER = 2**20


def rank_slice(similarity, start, stop, by_column=True):
    """(B, stop - start) columns whose rank (0 = most similar) is in ``[start, stop)``.

    ``by_column``: listed by column, so that a draw of positions names the same member on any
    route and whatever the selection's order (the ring used once needs no order: its loss is
    a sum, and skipping the sort saves a B x R sort per step).
    """
    route = "partition" if similarity.device.type == "cpu" else "topk"
    columns = ROUTES[route](similarity.detach(), start, stop)
    return columns.sort(dim=1).values if by_column else columns


def topk_rank_slice(similarity, start, stop):
    """The GPU route: the columns of ranks ``[start, stop)`` in any order."""
    top = similarity.topk(stop, dim=1, sorted=False)
    inner = top.values.topk(stop - start, dim=1, largest=False, sorted=False).indices
    return top.indices.gather(1, inner)


def partition_rank_slice(similarity, start, stop):
    """The CPU route: the columns of ranks ``[start, stop)`` in any order."""
    # numpy has no bfloat16; widening is exact and keeps every order and tie
    if similarity.dtype not in (torch.float32, torch.float64):
        similarity = similarity.float()
    similarity = similarity.contiguous()
    columns = torch.empty(similarity.shape[0], stop - start, dtype=torch.long)
    rows = max(1, BLOCK_BYTES // (8 * similarity.shape[1]))
    blocks = [slice(first, first + rows) for first in range(0, similarity.shape[0], rows)]

    def rank_block(block):
        columns[block] = _partition_block(similarity[block], start, stop)

    _map(rank_block, blocks, similarity.numel())
    return columns


def _partition_block(scores, start, stop):
    """The columns of ranks ``[start, stop)`` of each row of ``scores`` (rows, P), any order."""
    size = scores.shape[1]
    # everything from position size - stop on is at least the stop-th largest: the top-stop
    top = np.argpartition(scores.numpy(), size - stop, axis=1)[:, size - stop :]
    top = torch.from_numpy(np.ascontiguousarray(top))
    if start == 0:
        return top
    # the stop - start smallest of the top-stop are ranks [start, stop); torch's gather is
    # faster than numpy's take_along_axis
    inner = np.argpartition(scores.gather(1, top).numpy(), stop - start, axis=1)
    return top.gather(1, torch.from_numpy(inner[:, : stop - start]))


def _map(function, blocks, entries):
    workers = min(torch.get_num_threads(), len(blocks), max(1, entries // ENTRIES_PER_WORKER))
    if workers <= 1:
        for block in blocks:
            function(block)
        return
    # a pool per call (~0.1 ms against tens of ms of selection): no thread outlives the call,
    # so a DataLoader that forks later forks a process with no extra threads
    with ThreadPoolExecutor(workers, thread_name_prefix="ring-rank") as pool:
        list(pool.map(function, blocks))  # list(): a block's error is raised here


# both are tested on the CPU against a full stable argsort (tests/test_ranking.py)
ROUTES = {"topk": topk_rank_slice, "partition": partition_rank_slice}
