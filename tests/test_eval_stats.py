import math
import random

import pytest
from scipy import stats as scipy_stats

from launcher.stats import (
    MeanCI,
    StatsError,
    holm_adjusted,
    mean_confidence_interval,
    paired_difference_ci,
    t_quantile,
)


@pytest.mark.parametrize(
    "dof, printed_table_value",
    [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045)],
)
def test_t_quantile_matches_printed_t_table(dof, printed_table_value):
    assert t_quantile(0.95, dof) == pytest.approx(printed_table_value, abs=5e-4)


def test_t_quantile_99_percent():
    assert t_quantile(0.99, 4) == pytest.approx(4.604, abs=5e-4)


def test_mean_ci_on_hand_computed_numbers():
    # 1..5: mean 3, sample sd sqrt(2.5), se sqrt(0.5), t(0.975, 4) = 2.776445
    ci = mean_confidence_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert ci.mean == pytest.approx(3.0)
    assert ci.half_width == pytest.approx(2.7764451051977987 * math.sqrt(0.5), rel=1e-9)
    assert ci.n == 5


def test_mean_ci_agrees_with_scipy_interval():
    values = [0.812, 0.795, 0.830]
    ci = mean_confidence_interval(values, confidence=0.95)
    low, high = scipy_stats.t.interval(
        0.95, len(values) - 1, loc=sum(values) / 3, scale=scipy_stats.sem(values)
    )
    assert ci.low == pytest.approx(low, rel=1e-12)
    assert ci.high == pytest.approx(high, rel=1e-12)


def test_single_value_has_no_interval():
    ci = mean_confidence_interval([0.8])
    assert ci.half_width is None and ci.low is None
    assert ci.format() == "80.0 (n=1)"
    assert not ci.excludes_zero()


def test_empty_and_nan_values_are_refused():
    with pytest.raises(StatsError, match="no values"):
        mean_confidence_interval([])
    with pytest.raises(StatsError, match="NaN"):
        mean_confidence_interval([0.5, float("nan")])


def test_paired_difference_agrees_with_scipy_ttest_rel():
    ring = {0: 0.81, 1: 0.84, 2: 0.80}
    uniform = {0: 0.80, 1: 0.82, 2: 0.805}
    ci = paired_difference_ci(ring, uniform)
    expected = scipy_stats.ttest_rel(
        [ring[s] for s in (0, 1, 2)], [uniform[s] for s in (0, 1, 2)]
    ).confidence_interval(0.95)
    assert ci.low == pytest.approx(expected.low, rel=1e-9)
    assert ci.high == pytest.approx(expected.high, rel=1e-9)
    assert ci.mean == pytest.approx(0.025 / 3)


def test_paired_difference_pairs_by_seed_not_by_order():
    ring = {2: 0.9, 0: 0.7, 1: 0.8}
    uniform = {0: 0.6, 1: 0.7, 2: 0.8}
    ci = paired_difference_ci(ring, uniform)
    # every pair differs by exactly 0.1: zero spread, the interval collapses onto 0.1
    assert ci.mean == pytest.approx(0.1)
    assert ci.half_width == pytest.approx(0.0, abs=1e-12)
    assert ci.excludes_zero()


def test_unpaired_seeds_are_an_error_naming_them():
    with pytest.raises(StatsError, match=r"control lacks \[2\]"):
        paired_difference_ci({0: 0.1, 1: 0.2, 2: 0.3}, {0: 0.1, 1: 0.2})


def test_format_and_zero_exclusion():
    assert MeanCI(0.8123, 0.0151, 3, 0.95).format() == "81.2 ± 1.5"
    assert MeanCI(0.02, 0.01, 3, 0.95).excludes_zero()
    assert not MeanCI(0.02, 0.03, 3, 0.95).excludes_zero()
    assert MeanCI(-0.02, 0.01, 3, 0.95).excludes_zero()


def test_p_value_agrees_with_scipy_one_sample_t_test():
    differences = [0.012, -0.003, 0.02, 0.007]
    ci = mean_confidence_interval(differences)
    assert ci.p_value == pytest.approx(scipy_stats.ttest_1samp(differences, 0.0).pvalue, rel=1e-9)
    assert mean_confidence_interval([0.5]).p_value is None
    assert mean_confidence_interval([0.25, 0.25, 0.25]).p_value == 0.0  # no spread, not zero
    assert mean_confidence_interval([0.0, 0.0]).p_value == 1.0


def holm_rejections_by_definition(p_values, alpha):
    """Holm (1979), step-down as defined: order p_(1) <= ... <= p_(m); find the first k with
    p_(k) > alpha / (m + 1 - k); reject the hypotheses of p_(1) .. p_(k-1)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: (p_values[i], i))
    rejected = set()
    for k, index in enumerate(order, start=1):
        if p_values[index] > alpha / (m + 1 - k):
            break
        rejected.add(index)
    return rejected


def test_holm_on_a_hand_computed_family():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 -> max(0.06, 0.04)
    adjusted = holm_adjusted([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert {i for i, p in enumerate(adjusted) if p <= 0.05} == {0, 3}
    assert holm_adjusted([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm_adjusted([]) == []


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1])
def test_holm_rejects_what_the_step_down_definition_rejects(alpha):
    generator = random.Random(7)
    for _ in range(300):
        m = generator.randint(1, 20)
        p_values = [
            generator.choice([generator.random() * 0.2, generator.random()]) for _ in range(m)
        ]
        p_values[generator.randrange(m)] = p_values[0]  # a tie now and then
        adjusted = holm_adjusted(p_values)
        got = {i for i, p in enumerate(adjusted) if p <= alpha}
        assert got == holm_rejections_by_definition(p_values, alpha), p_values
        assert all(a >= p for a, p in zip(adjusted, p_values))


def test_holm_refuses_values_that_are_not_probabilities():
    with pytest.raises(StatsError, match=r"p-values must lie in \[0, 1\]"):
        holm_adjusted([0.2, 1.5])
