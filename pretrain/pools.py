"""Candidate pools: where each anchor's negatives come from, and how they are scored.

A method hands the sampler one pool per loss term. The sampler chooses *columns* of the pool
(the method's usual negatives, or draws from the similarity ring); the pool turns columns into
logits (with gradient to the anchor), embeddings (for MoCHi) and dataset ids (for the
false-negative monitor).

- ``DensePool``: every anchor-candidate similarity exists anyway (MoCo's queue, SimCLR's
  batch), computed once with gradient; ranking reads it detached.
- ``BankPool``: IR/CMC's memory bank, possibly ImageNet-sized. Its usual negatives are K draws
  per anchor; ranking the whole bank is done in row chunks under a memory budget, so the B x N
  similarity matrix never exists at once (peak: ``rows * N * 4`` bytes for one chunk's
  similarities plus ``rows * stop * 12`` for its top-``stop``, ``rows`` chosen to fit; on the
  CPU add each ranking thread's index scratch, ``max(1 MiB, N * 8)`` bytes: see
  ``pretrain/ranking.py``).
"""

from dataclasses import dataclass

import torch

from pretrain.ranking import rank_slice


@dataclass
class RingDraws:
    """Draws from each anchor's ring: negative ``k`` of row ``b`` is pool column
    ``members[b, positions[b, k]]``. Kept apart so that a dense pool gathers the ring's logits
    once (B x R) and then the draws, instead of composing B x K columns first."""

    members: torch.Tensor
    positions: torch.Tensor

    def columns(self):
        return self.members.gather(1, self.positions)


class DensePool:
    """Candidates whose logits against every anchor are already computed.

    ``similarity``: (B, P) anchor . candidate (with gradient). ``negative_index``: (B, M) columns
    that are each anchor's negatives (SimCLR: everyone but itself and its pair), or None when all
    P columns are. ``embeddings``: (P, d) candidates; ``ids``: (P,) dataset ids (-1: unknown).
    """

    # the uniform arm uses every candidate once, and so does the authors' ring over such a pool
    # (their MoCoRing and SimCLRRing: all of the ring, no redraw)
    draws_negatives = False

    def __init__(self, similarity, embeddings, ids, negative_index=None):
        self.similarity = similarity
        self.embeddings = embeddings
        self.ids = ids
        self.negative_index = negative_index

    @property
    def num_anchors(self):
        return self.similarity.shape[0]

    @property
    def size(self):
        """Candidates per anchor that may be negatives."""
        if self.negative_index is None:
            return self.similarity.shape[1]
        return self.negative_index.shape[1]

    @property
    def usual_count(self):
        """How many negatives per anchor the uniform arm has: all candidates."""
        return self.size

    def usual_columns(self, generator=None):
        """The uniform arm's negatives: all candidates (None = every column, in order)."""
        return self.negative_index

    def negative_similarity(self):
        """(B, size) detached similarities of the candidates that may be negatives."""
        similarity = self.similarity.detach()
        if self.negative_index is None:
            return similarity
        return similarity.gather(1, self.negative_index)

    def ring_members(self, start, stop, max_bytes, by_column=True):
        """(B, stop - start) pool columns of the ranks ``[start, stop)`` (in column order when
        ``by_column``)."""
        positions = rank_slice(self.negative_similarity(), start, stop, by_column)
        if self.negative_index is None:
            return positions
        return self.negative_index.gather(1, positions)

    def logits(self, columns):
        if columns is None:
            return self.similarity
        if isinstance(columns, RingDraws):
            return self.similarity.gather(1, columns.members).gather(1, columns.positions)
        return self.similarity.gather(1, columns)

    def candidate_embeddings(self, columns):
        return self.embeddings[columns]

    def candidate_ids(self, columns):
        if columns is None:
            return self.ids.expand(self.num_anchors, -1)
        if isinstance(columns, RingDraws):
            return self.ids[columns.members].gather(1, columns.positions)
        return self.ids[columns]


class BankPool:
    """A memory bank (N, d) without gradient; anchor ``i``'s own entry ``own[i]`` is never a
    negative. The usual negatives are ``draw_count`` entries drawn uniformly with replacement
    from the other N - 1 (IR's and CMC's estimator); ``drawn`` fixes them (CMC's two terms use
    the same images, as the original)."""

    # the uniform arm draws from the bank, and so does the authors' ring over it (their NCERing:
    # k - 1 draws from the ring, uniformly with replacement)
    draws_negatives = True

    def __init__(self, anchor, memory, own, draw_count, drawn=None):
        self.anchor = anchor
        self.memory = memory
        self.own = own
        self.usual_count = draw_count
        self.drawn = drawn

    @property
    def num_anchors(self):
        return self.anchor.shape[0]

    @property
    def size(self):
        return self.memory.shape[0] - 1

    def usual_columns(self, generator=None):
        if self.drawn is not None:
            return self.drawn
        drawn = torch.randint(
            self.size,
            (self.num_anchors, self.usual_count),
            device=self.memory.device,
            generator=generator,
        )
        return drawn + (drawn >= self.own.unsqueeze(1)).long()  # skip the anchor's own entry

    def ring_members(self, start, stop, max_bytes, by_column=True):
        """(B, stop - start) bank rows of the ranks ``[start, stop)`` of each anchor's N - 1
        others (in row order when ``by_column``), ranked chunk by chunk within ``max_bytes``."""
        bytes_per_row = self.memory.shape[0] * 4 + stop * 12
        rows = max(1, int(max_bytes // bytes_per_row))
        anchor = self.anchor.detach()
        members = []
        for first in range(0, self.num_anchors, rows):
            chunk = slice(first, first + rows)
            similarity = anchor[chunk].float() @ self.memory.float().T
            similarity.scatter_(1, self.own[chunk].unsqueeze(1), float("-inf"))
            members.append(rank_slice(similarity, start, stop, by_column))
            del similarity
        return torch.cat(members)

    def logits(self, columns):
        if isinstance(columns, RingDraws):
            columns = columns.columns()
        return torch.einsum("bd,bkd->bk", self.anchor, self.memory[columns])

    def candidate_embeddings(self, columns):
        return self.memory[columns]

    def candidate_ids(self, columns):
        # a bank row is the dataset index of its image
        return columns.columns() if isinstance(columns, RingDraws) else columns
