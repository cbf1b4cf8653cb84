"""The false-negative monitor: how many of the negatives a strategy uses share the anchor's class.

With ten classes, the most similar candidates are largely the anchor's own class (measured on
Fashion-MNIST raw pixels: 43% same-class in the ring vs 10% uniform), which is what DCL/HCL's
``tau_plus`` corrects for. This module reads labels *after* each step, from the dataset ids the
method reports in ``stats["monitor"]``; labels never reach the method, the sampler or the loss.
Weighting strategies (HCL) also get the share of their normalised weight on same-class negatives.
"""

import torch

from pretrain.distributed import all_reduce_sum


class FalseNegativeMonitor:
    """Accumulates same-class counts on the device (no host sync per step); read per epoch.

    ``labels``: (N,) class of each training image by dataset index, -1 where unknown (STL-10's
    unlabelled split); None disables the monitor.
    """

    def __init__(self, labels):
        self.labels = labels
        self.reset()

    def reset(self):
        self.totals = {}

    def _add(self, name, value):
        self.totals[name] = self.totals.get(name, 0.0) + value

    @torch.no_grad()
    def update(self, records):
        if self.labels is None:
            return
        for record in records:
            anchor = self.labels[record["anchor_ids"]].unsqueeze(1)
            ids = record["ids"]()
            negative = torch.where(ids >= 0, self.labels[ids.clamp(min=0)], -1)
            known = (negative >= 0) & (anchor >= 0)
            same = (negative == anchor) & known
            self._add("same", same.sum())
            self._add("known", known.sum())
            if record.get("weights") is not None:
                weights = record["weights"]()
                self._add("weight_same", (weights * same).sum())
                self._add("weight_known", (weights * known).sum())

    def epoch_stats(self):
        """``false_negative_share`` (and ``false_negative_weight_share``) since the last call.

        The totals are summed over ranks on every rank, whatever each saw: a rank without a
        labelled pair (STL-10's unlabelled split) still joins the collective, so none waits.
        """
        names = ("same", "known", "weight_same", "weight_known")
        sums = dict(zip(names, all_reduce_sum([self.totals.get(n, 0.0) for n in names])))
        self.reset()
        stats = {}
        for name, (part, whole) in {
            "false_negative_share": ("same", "known"),
            "false_negative_weight_share": ("weight_same", "weight_known"),
        }.items():
            if sums[whole] > 0:
                stats[name] = sums[part] / sums[whole]
        return stats
