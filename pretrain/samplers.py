"""Negative samplers: ``uniform`` (the method's usual negatives) and ``ring`` (Wu et al. 2021).

A sampler sees each anchor's similarities to its K candidate negatives and returns the columns
of those that enter the loss (``None`` = all of them). Ring keeps, per anchor, the candidates
whose similarity rank ``r`` (0 = most similar) has ``r / K`` in ``[lower, upper)``.

Ranks are those of a full sort, as in the original implementation: every anchor keeps exactly
``stop - start`` candidates; candidates tied at a boundary take consecutive ranks in any order
(tied values are equal, so the loss does not depend on which). The ring costs one unsorted
top-k of ``stop`` per row and a small selection inside it, never a sort of the B x K matrix,
and the loss then runs over the ring alone (a tenth of the row at upper=0.1), not a masked row.
"""

import math

import torch

from pretrain.errors import PretrainError
from pretrain.schedules import ring_upper_at

SAMPLERS = ("uniform", "ring")
# r/K < upper is tested as r < ceil(upper*K); the slack absorbs float error in upper*K
# (0.1 * 30 = 3.0000000000000004 must give 3, not 4).
RANK_SLACK = 1e-9


def ring_rank_range(num_candidates, lower, upper):
    """``(start, stop)``: the ranks ``start <= r < stop`` with ``lower <= r/K < upper``.

    An empty ring is widened to the single rank ``start`` so an anchor never loses all
    negatives.
    """
    start = min(math.ceil(lower * num_candidates - RANK_SLACK), num_candidates - 1)
    stop = min(math.ceil(upper * num_candidates - RANK_SLACK), num_candidates)
    return max(start, 0), max(stop, start + 1)


def ring_columns(similarity, lower, upper):
    """(B, stop - start) column indices of the ranks ``start <= r < stop`` of each row."""
    start, stop = ring_rank_range(similarity.shape[1], lower, upper)
    top = similarity.topk(stop, dim=1, sorted=False)
    # the ring is the top `stop` without its `start` largest: its stop-start smallest
    inner = top.values.topk(stop - start, dim=1, largest=False, sorted=False).indices
    return top.indices.gather(1, inner)


def subsample_columns(columns, count, generator=None):
    """At most ``count`` of each row's ``columns``, chosen uniformly without replacement."""
    if count >= columns.shape[1]:
        return columns
    scores = torch.rand(columns.shape, generator=generator, device=columns.device)
    return columns.gather(1, scores.topk(count, dim=1, sorted=False).indices)


class NegativeSampler:
    """Chooses which candidate negatives enter the loss; ``set_epoch`` advances the schedule."""

    def __init__(
        self,
        name="uniform",
        upper=0.1,
        lower_ratio=0.1,
        num_negatives=None,
        schedule="constant",
        anneal_epochs=0.0,
        start=1.0,
        step_epochs=None,
    ):
        if name not in SAMPLERS:
            raise PretrainError(f"unknown sampler '{name}'; choose one of {', '.join(SAMPLERS)}")
        if not 0.0 < upper <= 1.0 or not 0.0 <= lower_ratio < 1.0:
            raise PretrainError(
                f"ring needs 0 < sampler.upper <= 1 and 0 <= sampler.lower_ratio < 1, "
                f"got upper={upper}, lower_ratio={lower_ratio}"
            )
        if num_negatives is not None and num_negatives < 1:
            raise PretrainError(f"sampler.num_negatives must be >= 1 or null, got {num_negatives}")
        self.name = name
        self.target_upper = upper
        self.lower_ratio = lower_ratio
        self.num_negatives = num_negatives
        self.schedule = schedule
        self.anneal_epochs = anneal_epochs
        self.start = start
        self.step_epochs = step_epochs
        self.upper = ring_upper_at(0.0, schedule, start, upper, anneal_epochs, step_epochs)

    @classmethod
    def from_config(cls, sampler_cfg):
        return cls(**dict(sampler_cfg))

    def set_epoch(self, epoch):
        """Move the ring to ``epoch`` (a float: fractional epochs anneal within an epoch)."""
        self.upper = ring_upper_at(
            epoch,
            self.schedule,
            self.start,
            self.target_upper,
            self.anneal_epochs,
            self.step_epochs,
        )

    @property
    def lower(self):
        return self.lower_ratio * self.upper

    @property
    def is_ring(self):
        return self.name == "ring"

    def select(self, similarity):
        """(B, M) columns of the kept negatives of (B, K) similarities, or None (all K)."""
        if not self.is_ring:
            return None
        similarity = similarity.detach()
        if self.lower <= 0.0 and self.upper >= 1.0:
            columns = torch.arange(similarity.shape[1], device=similarity.device)
            columns = columns.expand_as(similarity)
        else:
            columns = ring_columns(similarity, self.lower, self.upper)
        if self.num_negatives is not None:
            columns = subsample_columns(columns, self.num_negatives)
        return columns

    def stats(self):
        return {"ring_upper": self.upper, "ring_lower": self.lower} if self.is_ring else {}
