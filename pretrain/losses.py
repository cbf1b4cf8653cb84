"""Contrastive losses as pure functions of logits, and MoCHi's synthetic negatives.

Every method reduces to: per anchor, one positive logit ``p`` and a row of negative logits
``n_1..n_M`` (already divided by the temperature ``t``). The estimators differ in how the
negatives enter the partition; all keep the positive in it. Work is in log space so that
large logits (``t = 0.07`` gives |logit| up to ~14) never overflow.
"""

import math

import torch
import torch.nn.functional as F


def info_nce(positive, negatives):
    """InfoNCE (van den Oord et al. 2018): mean of ``log(e^p + sum_j e^{n_j}) - p``.

    ``positive``: (B,) logits; ``negatives``: (B, M).
    """
    logits = torch.cat([positive.unsqueeze(1), negatives], dim=1)
    return (torch.logsumexp(logits, dim=1) - positive).mean()


def debiased_nce(positive, negatives, tau_plus, temperature):
    """DCL (Chuang et al., NeurIPS 2020, eq. 6 with the clamp of their code and paper, sec. 4).

    With class prior ``tau_plus`` (the chance that a drawn "negative" shares the anchor's
    class), the negative term ``M * Ng`` with
    ``Ng = max((mean_j e^{n_j} - tau_plus e^p) / (1 - tau_plus), e^{-1/t})``
    replaces ``sum_j e^{n_j}``; the loss is ``log(e^p + M Ng) - p``. ``tau_plus = 0`` gives
    InfoNCE (each ``e^{n_j} >= e^{-1/t}`` for unit vectors, so the clamp is inactive).
    """
    log_sum = torch.logsumexp(negatives, dim=1)
    return _debiased(positive, log_sum, negatives.shape[1], tau_plus, temperature)


def hard_debiased_nce(positive, negatives, tau_plus, beta, temperature):
    """HCL (Robinson et al., ICLR 2021, eq. 4 and its estimator with importance weights).

    Negatives are reweighted towards the hard ones by ``w_j = e^{beta n_j} / mean_k e^{beta n_k}``
    (the von Mises-Fisher tilt ``q_beta`` of the paper), then debiased as DCL:
    ``M Ng = max((sum_j w_j e^{n_j} - tau_plus M e^p) / (1 - tau_plus), M e^{-1/t})``.
    ``n_j = s_j / t`` is the logit, so beta multiplies s/t, as in the official code (weights
    ``exp(beta * s / t)``): the tilt on the cosine is beta / t, and a given beta means a
    different tilt at each temperature (the paper's CIFAR setting, beta 1 at t 0.5, is a
    cosine tilt of 2; beta 1 at t 0.2 is 5). As in the paper's estimator the weights are a
    function of the embeddings (gradients flow through them). ``beta = 0`` gives DCL;
    ``beta = tau_plus = 0`` gives InfoNCE.
    """
    count = negatives.shape[1]
    log_sum = (
        torch.logsumexp((1.0 + beta) * negatives, dim=1)
        - torch.logsumexp(beta * negatives, dim=1)
        + math.log(count)
    )
    return _debiased(positive, log_sum, count, tau_plus, temperature)


def _debiased(positive, log_negative_sum, count, tau_plus, temperature):
    """``log(e^p + M Ng) - p`` from ``log sum_j (weighted) e^{n_j}`` (DCL and HCL share this)."""
    floor = math.log(count) - 1.0 / temperature
    if tau_plus > 0.0:
        # log(S - tau M e^p) = log S + log1p(-r), r = tau M e^p / S; S - tau M e^p <= 0 (r >= 1)
        # goes straight to the floor, and the kept branch never sees r = 1 (its gradient is inf)
        ratio = torch.exp(positive + math.log(tau_plus * count) - log_negative_sum)
        debiased = log_negative_sum + torch.log1p(-ratio.clamp(max=1.0 - 1e-7))
        debiased = debiased - math.log1p(-tau_plus)
        log_negative_sum = torch.where(ratio < 1.0, debiased, torch.full_like(debiased, floor))
    log_negative_sum = log_negative_sum.clamp(min=floor)
    return (torch.logaddexp(positive, log_negative_sum) - positive).mean()


def hardness_weights(negatives, beta):
    """HCL's normalised importance weights ``softmax(beta n)`` per anchor (for the monitor)."""
    return torch.softmax(beta * negatives.detach(), dim=1)


def mochi_negatives(query, hardest, num_pairs, num_query, generator=None):
    """MoCHi (Kalantidis et al., NeurIPS 2020, sec. 4): synthetic hard negatives per query.

    ``query``: (B, d) unit queries; ``hardest``: (B, N, d) each query's N hardest negatives.
    Returns (B, num_pairs + num_query, d) unit vectors:
    ``h = normalize(a n_i + (1 - a) n_j)`` with ``a ~ U(0, 1)`` and ``i, j`` drawn from the N
    hardest (eq. 2), then ``h' = normalize(b q + (1 - b) n_j)`` with ``b ~ U(0, 0.5)`` (eq. 3,
    ``b < 0.5`` so the query's own contribution stays below the negative's). Everything is
    detached: no gradient flows through the synthetic points, only through ``q`` in ``q . h``.
    """
    query, hardest = query.detach(), hardest.detach()
    rows, count, dim = hardest.shape
    device = hardest.device

    def pick(num):
        index = torch.randint(count, (rows, num), device=device, generator=generator)
        return hardest.gather(1, index.unsqueeze(2).expand(rows, num, dim))

    def uniform(num, high):
        return high * torch.rand(rows, num, 1, device=device, generator=generator)

    first, second, alpha = pick(num_pairs), pick(num_pairs), uniform(num_pairs, 1.0)
    pairs = alpha * first + (1.0 - alpha) * second
    partner, beta = pick(num_query), uniform(num_query, 0.5)
    with_query = beta * query.unsqueeze(1) + (1.0 - beta) * partner
    return F.normalize(torch.cat([pairs, with_query.to(pairs.dtype)], dim=1), dim=2)


def pair_partner(anchors, num_anchors):
    """For 2B stacked embeddings (view 1 then view 2), the index of each anchor's other view."""
    return (anchors + num_anchors // 2) % num_anchors


def in_batch_negative_index(anchors, num_anchors):
    """(len(anchors), 2B-2) column indices of each anchor's negatives: every column but itself
    and its pair, in order. Computed on ``anchors``' device from the row numbers alone: column
    ``k`` of the result skips one place past the lower of the two and one more past the higher,
    with no (2B)^2 mask built on the host and copied over every step."""
    partner = pair_partner(anchors, num_anchors)
    low = torch.minimum(anchors, partner).unsqueeze(1)
    high = torch.maximum(anchors, partner).unsqueeze(1)
    k = torch.arange(num_anchors - 2, device=anchors.device).unsqueeze(0)
    return k + (k >= low).long() + (k >= high - 1).long()
