"""InfoNCE over a positive and a set of negatives, via ``logsumexp``.

Every method reduces to: per anchor, one positive logit and a row of negative logits (all of the
candidates, or the columns a sampler kept); the positive is always in the partition.
"""

import torch
import torch.nn.functional as F


def info_nce(positive, negatives):
    """Mean of ``-log(exp(p) / (exp(p) + sum exp(n)))`` over anchors.

    ``positive``: (B,) logits, already divided by the temperature; ``negatives``: (B, K).
    """
    logits = torch.cat([positive.unsqueeze(1), negatives], dim=1)
    return (torch.logsumexp(logits, dim=1) - positive).mean()


def pair_partner(num_anchors):
    """For 2B stacked embeddings (view 1 then view 2), the index of each one's other view."""
    half = num_anchors // 2
    return torch.cat([torch.arange(half, num_anchors), torch.arange(0, half)])


def in_batch_negative_index(num_anchors, device=None):
    """(2B, 2B-2) column indices of each anchor's negatives: everyone but itself and its pair."""
    partner = pair_partner(num_anchors)
    columns = torch.arange(num_anchors).expand(num_anchors, num_anchors)
    rows = torch.arange(num_anchors).unsqueeze(1)
    is_negative = (columns != rows) & (columns != partner.unsqueeze(1))
    return columns[is_negative].view(num_anchors, num_anchors - 2).to(device)


def normalized(x):
    return F.normalize(x, dim=1)
