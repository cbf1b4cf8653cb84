"""Negative samplers: ``uniform`` (the method's usual negatives) and ``ring`` (Wu et al. 2021).

A sampler sees each anchor's similarities to its K candidate negatives and returns the mask of
those that enter the loss (``None`` = all of them). Ring keeps, per anchor, the candidates whose
similarity rank fraction ``r / K`` (rank 0 = most similar) lies in ``[lower, upper)``.

Tie rule: the ring is cut by *value*. With ``s_(r)`` the r-th largest similarity, the kept set
is every candidate with ``s_(stop-1) <= s <= s_(start)``, so candidates tied with a boundary
value are all kept (the ring may then hold more than ``stop - start`` entries, never fewer).
Only a top-k of ``stop`` values per row is computed, never a full sort of the B x K matrix.
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


def ring_mask(similarity, lower, upper):
    """(B, K) bool mask of the ring of each row of ``similarity`` (see the module's tie rule)."""
    start, stop = ring_rank_range(similarity.shape[1], lower, upper)
    top = similarity.topk(stop, dim=1).values  # sorted, largest first
    highest_kept = top[:, start : start + 1]
    lowest_kept = top[:, stop - 1 : stop]
    return (similarity <= highest_kept) & (similarity >= lowest_kept)


def subsample_mask(keep, count, generator=None):
    """Keep at most ``count`` entries per row of ``keep``, chosen uniformly among the kept."""
    if count >= keep.shape[1]:
        return keep
    scores = torch.rand(keep.shape, generator=generator, device=keep.device)
    scores = scores.masked_fill(~keep, -1.0)
    chosen = scores.topk(count, dim=1).indices
    picked = torch.zeros_like(keep).scatter_(1, chosen, True)
    return picked & keep


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
        """Mask of the kept negatives for (B, K) anchor-candidate similarities, or None (all)."""
        if not self.is_ring:
            return None
        similarity = similarity.detach()
        if self.lower <= 0.0 and self.upper >= 1.0:
            keep = torch.ones_like(similarity, dtype=torch.bool)
        else:
            keep = ring_mask(similarity, self.lower, self.upper)
        if self.num_negatives is not None:
            keep = subsample_mask(keep, self.num_negatives)
        return keep

    def stats(self):
        return {"ring_upper": self.upper, "ring_lower": self.lower} if self.is_ring else {}
