"""Negative strategies (``sampler.name``): which negatives enter the loss and how they count.

- ``uniform``: the method's usual negatives (IR/CMC: K bank draws; MoCo: the queue; SimCLR: the
  2B-2 other views) with InfoNCE.
- ``ring`` (Wu et al., ICLR 2021): rank each anchor's whole pool (bank without its own entry,
  queue, or in-batch negatives) and keep the ranks ``[lower, upper)`` of it (``lower =
  lower_ratio * upper``). How many negatives come from that ring is ``num_negatives``:
  ``null`` (the default) is the authors' estimator, which treats the ring as the method treats
  its usual pool: a bank's ring is drawn from, as many draws (uniform, with replacement) as the
  uniform arm has (their ``NCERing``, IR/CMC); a queue's or a batch's ring is used whole, each
  member once (their ``MoCoRing``, ``SimCLRRing``). ``equal`` draws as many as the uniform arm
  has for every method (the equal-count control: MoCo/SimCLR then see each ring member about
  1 / (upper (1 - lower_ratio)) times); ``ring`` uses the ring once for every method; an integer
  draws that many.
- ``dcl`` (Chuang et al. 2020) and ``hcl`` (Robinson et al. 2021): debiased and hardness-
  weighted estimators over the uniform negatives, or over the ring with ``within_ring: true``
  (taken as ``num_negatives`` says).
- ``mochi`` (Kalantidis et al. 2020): the uniform negatives plus synthetic mixes of the hardest.
  Not combined with the ring: both pick by the same similarity rank, and "mix ranks [lower,
  lower + N)" would be an estimator neither paper defines.
"""

import math

import torch

from pretrain.errors import PretrainError
from pretrain.losses import (
    debiased_nce,
    hard_debiased_nce,
    hardness_weights,
    info_nce,
    mochi_negatives,
)
from pretrain.pools import RingDraws
from pretrain.schedules import RING_SCHEDULES, ring_upper_at

SAMPLERS = ("uniform", "ring", "dcl", "hcl", "mochi")
RING_COMBINABLE = ("dcl", "hcl")
RING_COUNTS = ("equal", "ring")  # besides null (the authors') and an integer
MIB = 2**20
# r/P < upper is tested as r < ceil(upper*P); the slack absorbs float error in upper*P
# (0.1 * 30 = 3.0000000000000004 must give 3, not 4).
RANK_SLACK = 1e-9


def ring_rank_range(pool_size, lower, upper):
    """``(start, stop)``: the ranks ``start <= r < stop`` with ``lower <= r / P < upper``."""
    start = math.ceil(lower * pool_size - RANK_SLACK)
    stop = min(math.ceil(upper * pool_size - RANK_SLACK), pool_size)
    return max(start, 0), stop


def draw_positions(rows, ring_size, count, replacement, generator=None, device=None):
    """(rows, count) positions in ``[0, ring_size)``: uniform, with or without replacement."""
    if replacement:
        return torch.randint(ring_size, (rows, count), device=device, generator=generator)
    scores = torch.rand(rows, ring_size, device=device, generator=generator)
    return scores.topk(count, dim=1, sorted=False).indices


class NegativeSampler:
    """One negative strategy, configured by the ``sampler`` section; ``set_epoch`` anneals."""

    def __init__(
        self,
        name="uniform",
        within_ring=False,
        upper=0.1,
        lower_ratio=0.1,
        num_negatives=None,
        replacement=True,
        schedule="constant",
        start=1.0,
        anneal_fraction=0.5,
        step_fractions=None,
        rank_chunk_mb=256,
        tau_plus=0.1,
        beta=1.0,
        mochi_hardest=1024,
        mochi_pairs=1024,
        mochi_query=256,
        total_epochs=1.0,
        generator=None,
    ):
        self.name, self.within_ring = name, within_ring
        self.target_upper, self.lower_ratio = upper, lower_ratio
        self.num_negatives, self.replacement = num_negatives, replacement
        self.schedule, self.start = schedule, start
        self.anneal_epochs = anneal_fraction * total_epochs
        self.step_epochs = [f * total_epochs for f in step_fractions] if step_fractions else None
        self.rank_chunk_bytes = rank_chunk_mb * MIB
        self.tau_plus, self.beta = tau_plus, beta
        self.mochi = (mochi_hardest, mochi_pairs, mochi_query)
        self.generator = generator
        self._check()
        self.set_epoch(0.0)

    @classmethod
    def from_config(cls, sampler_cfg, total_epochs=1.0, generator=None):
        return cls(**dict(sampler_cfg), total_epochs=total_epochs, generator=generator)

    def _check(self):
        if self.name not in SAMPLERS:
            raise PretrainError(
                f"unknown sampler '{self.name}'; choose one of {', '.join(SAMPLERS)}"
            )
        if self.within_ring and self.name not in RING_COMBINABLE:
            raise PretrainError(
                f"sampler.within_ring is not defined for sampler '{self.name}'; it combines the "
                f"ring with {' or '.join(RING_COMBINABLE)} (ring alone: sampler.name=ring)"
            )
        if not 0.0 < self.target_upper <= 1.0 or not 0.0 < self.start <= 1.0:
            raise PretrainError(
                f"sampler.upper and sampler.start must be in (0, 1], got upper="
                f"{self.target_upper}, start={self.start}; the shipped ring uses upper=0.1"
            )
        if not 0.0 <= self.lower_ratio < 1.0:
            raise PretrainError(
                f"sampler.lower_ratio must be in [0, 1), got {self.lower_ratio}; e.g. 0.1"
            )
        if self.schedule not in RING_SCHEDULES:
            raise PretrainError(
                f"unknown sampler.schedule '{self.schedule}'; choose one of "
                f"{', '.join(RING_SCHEDULES)}"
            )
        count = self.num_negatives
        is_count = isinstance(count, int) and not isinstance(count, bool) and count >= 1
        if not (count is None or count in RING_COUNTS or is_count):
            raise PretrainError(
                f"sampler.num_negatives must be null (the authors' estimator), 'equal' (as many "
                f"draws as uniform), 'ring' (each member once) or an integer >= 1, got {count!r}"
            )
        if not 0.0 <= self.tau_plus < 1.0:
            raise PretrainError(f"sampler.tau_plus must be in [0, 1), got {self.tau_plus}")
        if self.beta < 0.0:
            raise PretrainError(f"sampler.beta must be >= 0, got {self.beta}")
        hardest, pairs, query = self.mochi
        if min(self.mochi) < 0 or pairs > hardest or query > hardest:
            raise PretrainError(
                f"sampler.mochi_pairs ({pairs}) and sampler.mochi_query ({query}) must be between "
                f"0 and sampler.mochi_hardest ({hardest})"
            )

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
    def uses_ring(self):
        return self.name == "ring" or self.within_ring

    def check_pool(self, size, what, usual_count=None):
        """One-line error, before training, when a method's pool cannot serve this strategy.

        ``size``: candidates an anchor is ranked against; ``usual_count``: its uniform negatives
        (IR/CMC: K draws; default ``size``).
        """
        usual_count = size if usual_count is None else usual_count
        if self.uses_ring:
            # the narrowest ring of the schedule: its target (annealing starts wider)
            target_lower = self.lower_ratio * self.target_upper
            start, stop = ring_rank_range(size, target_lower, self.target_upper)
            if stop <= start:
                raise PretrainError(
                    f"the ring [{self.lower_ratio * self.target_upper:g}, {self.target_upper:g}) "
                    f"of {size} {what} keeps no candidate; raise sampler.upper to at least "
                    f"{min(1.0, 1.0 / size / (1 - self.lower_ratio)):.3g}"
                )
        if self.name == "mochi" and self.mochi[0] > usual_count:
            raise PretrainError(
                f"sampler.mochi_hardest={self.mochi[0]} exceeds the {usual_count} negatives per "
                f"anchor ({what}); use at most {usual_count}"
            )

    def ring_draws(self, pool):
        """How many negatives each anchor draws from its ring in ``pool``; None: the ring is
        used once, every member, no draws."""
        count = self.num_negatives
        if count is None:  # the authors': as the pool's usual negatives (see the module doc)
            return pool.usual_count if pool.draws_negatives else None
        if count == "ring":
            return None
        return pool.usual_count if count == "equal" else count

    def covers_whole_pool(self, pool):
        """True when the ring is the whole pool taken as the uniform arm takes it (all of it
        once, or as many draws with replacement): uniform's negatives, without ranking."""
        if self.lower > 0.0 or self.upper < 1.0:
            return False
        draws = self.ring_draws(pool)
        if not pool.draws_negatives:
            return draws is None
        return draws == pool.usual_count and self.replacement

    def choose(self, pool):
        """Each anchor's negatives in ``pool``: None (all columns), columns, or ``RingDraws``."""
        if not self.uses_ring or self.covers_whole_pool(pool):
            return pool.usual_columns(self.generator)
        start, stop = ring_rank_range(pool.size, self.lower, self.upper)
        if stop <= start:
            self.check_pool(pool.size, "candidates")
        count = self.ring_draws(pool)
        # draws need the members in a fixed (column) order; the ring used once is a sum
        members = pool.ring_members(start, stop, self.rank_chunk_bytes, count is not None)
        if count is None:
            return members
        if not self.replacement and count > members.shape[1]:
            raise PretrainError(
                f"drawing {count} negatives without replacement from a ring of "
                f"{members.shape[1]}: set sampler.replacement=true or sampler.num_negatives <= "
                f"{members.shape[1]}"
            )
        positions = draw_positions(
            members.shape[0],
            members.shape[1],
            count,
            self.replacement,
            self.generator,
            members.device,
        )
        return RingDraws(members, positions)

    def contrast(self, anchor, positive_similarity, pool, temperature):
        """``(loss, record)`` of one loss term; ``record`` names the negatives (for the monitor).

        ``anchor``: (B, d) unit anchors; ``positive_similarity``: (B,) anchor . positive.
        """
        columns = self.choose(pool)
        positive = positive_similarity / temperature
        negatives = pool.logits(columns) / temperature
        weights = None
        if self.name == "dcl":
            loss = debiased_nce(positive, negatives, self.tau_plus, temperature)
        elif self.name == "hcl":
            loss = hard_debiased_nce(positive, negatives, self.tau_plus, self.beta, temperature)
            weights = lambda: hardness_weights(negatives, self.beta)  # noqa: E731
        elif self.name == "mochi":
            negatives = torch.cat(
                [negatives, self.mixed_logits(anchor, pool, columns, negatives) / temperature],
                dim=1,
            )
            loss = info_nce(positive, negatives)
        else:
            loss = info_nce(positive, negatives)
        # ids and weights only when the monitor asks: composing B x K draws costs as much as the
        # gather, and HCL's weights are a B x K softmax the loss itself does not need
        return loss, {
            "count": negatives.shape[1],
            "ids": lambda: pool.candidate_ids(columns),
            "weights": weights,
        }

    def mixed_logits(self, anchor, pool, columns, negatives):
        """Similarities of the anchors to MoCHi's synthetic negatives (B, s + s')."""
        hardest, pairs, query = self.mochi
        # in negative-list order, so that the draws below name the same points whatever topk's order
        top = negatives.detach().topk(hardest, dim=1, sorted=False).indices.sort(dim=1).values
        hard_columns = top if columns is None else columns.gather(1, top)
        embeddings = pool.candidate_embeddings(hard_columns)
        synthetic = mochi_negatives(anchor, embeddings, pairs, query, self.generator)
        return torch.einsum("bd,bkd->bk", anchor, synthetic.to(anchor.dtype))

    def stats(self):
        return {"ring_upper": self.upper, "ring_lower": self.lower} if self.uses_ring else {}
