"""Confidence intervals for results over seeds.

Seeds are few (3 by default), so intervals use Student's t distribution, not the normal one:
with n = 3 the 95% t quantile is 4.30, more than twice the normal 1.96. Comparing two
negative samplers uses the *paired* difference (same seed, same data order), which removes the
seed-to-seed variance both samplers share.

A table of such differences is a family of tests: at 95% each, one of twenty null differences
is expected to exclude zero by chance. ``holm_adjusted`` (Holm 1979) controls the family-wise
error rate: a row counts as resolved only when its adjusted p-value is below 1 - confidence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats as scipy_stats

from pretrain.errors import RingNCEError


class StatsError(RingNCEError):
    """Results that cannot be summarised (no values, unpaired seeds)."""


@dataclass(frozen=True)
class MeanCI:
    """Mean of `n` values with the half-width of its confidence interval.

    `half_width` is None when n == 1: one value carries no information about its spread, and
    printing a zero-width interval would claim a certainty the data do not have. `p_value` is
    the two-sided Student-t test of mean = 0 (None when n == 1).
    """

    mean: float
    half_width: float | None
    n: int
    confidence: float
    p_value: float | None = None

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    def excludes_zero(self) -> bool:
        """True when the interval lies entirely on one side of zero (a resolved difference)."""
        return self.half_width is not None and (self.low > 0 or self.high < 0)

    def format(self, scale: float = 100.0, digits: int = 1, signed: bool = False) -> str:
        """`mean ± half` in percent by default (`+` shown when `signed`, for differences);
        `mean (n=1)` when no interval exists."""
        mean = f"{self.mean * scale:{'+' if signed else ''}.{digits}f}"
        if self.half_width is None:
            return f"{mean} (n=1)"
        return f"{mean} ± {self.half_width * scale:.{digits}f}"


def t_quantile(confidence: float, dof: int) -> float:
    """Two-sided Student-t critical value: P(|T| <= q) = confidence for `dof` degrees."""
    if not 0.0 < confidence < 1.0:
        raise StatsError(f"confidence must lie in (0, 1), got {confidence}")
    if dof < 1:
        raise StatsError(f"the t distribution needs at least 1 degree of freedom, got {dof}")
    return float(scipy_stats.t.ppf(0.5 + confidence / 2.0, dof))


def mean_confidence_interval(values: Sequence[float], confidence: float = 0.95) -> MeanCI:
    """Student-t interval for the mean of independent values (e.g. one accuracy per seed)."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise StatsError("no values to summarise: every run of this cell is missing or failed")
    if any(math.isnan(v) for v in values):
        raise StatsError(f"NaN among the values {values}: a run produced no valid metric")
    mean = sum(values) / n
    if n == 1:
        return MeanCI(mean=mean, half_width=None, n=1, confidence=confidence)
    sample_var = sum((v - mean) ** 2 for v in values) / (n - 1)
    standard_error = math.sqrt(sample_var / n)
    half_width = t_quantile(confidence, n - 1) * standard_error
    if standard_error > 0:
        p_value = float(2.0 * scipy_stats.t.sf(abs(mean) / standard_error, n - 1))
    else:  # identical values: certain, unless they are all zero
        p_value = 0.0 if mean != 0 else 1.0
    return MeanCI(mean, half_width, n, confidence, p_value)


def paired_difference_ci(
    treatment: Mapping[int, float], control: Mapping[int, float], confidence: float = 0.95
) -> MeanCI:
    """Interval for mean(treatment - control) over the seeds both have.

    Keys are seeds. A seed present on one side only is an error rather than silently dropped:
    an unpaired seed means a run failed, and the reader must know the comparison is partial.
    """
    missing_control = sorted(set(treatment) - set(control))
    missing_treatment = sorted(set(control) - set(treatment))
    if missing_control or missing_treatment:
        raise StatsError(
            f"unpaired seeds: treatment lacks {missing_treatment}, control lacks "
            f"{missing_control}; rerun the missing seeds or compare the common ones explicitly"
        )
    differences = [treatment[seed] - control[seed] for seed in sorted(treatment)]
    return mean_confidence_interval(differences, confidence)


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the order given.

    Sorted ascending, the i-th smallest of m (i from 0) is multiplied by m - i, capped at 1, and
    made non-decreasing; rejecting every hypothesis whose adjusted value is <= alpha controls
    the probability of any false rejection in the family at alpha.
    """
    if any(not 0.0 <= p <= 1.0 for p in p_values):
        raise StatsError(f"p-values must lie in [0, 1], got {list(p_values)}")
    count = len(p_values)
    adjusted = [1.0] * count
    running = 0.0
    for rank, index in enumerate(sorted(range(count), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (count - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted
