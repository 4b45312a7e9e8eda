"""pipeline/stats.py against hand-computed values and against scipy: intervals over seeds, paired tests, Holm."""

from __future__ import annotations

import itertools
import math

import pytest
from scipy import stats as scipy_stats

from pipeline import stats

T_975_DF1 = 12.706204736174698  # Student t quantile 0.975 with 1 degree of freedom: tan(0.475 pi)
T_975_DF2 = 4.302652729749464


def test_t_quantiles_are_the_textbook_ones():
    assert math.tan(0.475 * math.pi) == pytest.approx(T_975_DF1, rel=1e-12)
    assert scipy_stats.t.ppf(0.975, 2) == pytest.approx(T_975_DF2, rel=1e-12)


def test_one_value_has_no_spread_and_no_interval():
    summary = stats.summarise([86.5])
    assert (summary.n, summary.mean, summary.std, summary.ci_low, summary.ci_high) == (1, 86.5, None, None, None)


def test_two_values_by_hand():
    summary = stats.summarise([87.3, 86.9])
    std = math.sqrt(((87.3 - 87.1) ** 2 + (86.9 - 87.1) ** 2) / 1)  # n - 1 = 1
    half = T_975_DF1 * std / math.sqrt(2)
    assert summary.n == 2 and summary.mean == pytest.approx(87.1)
    assert summary.std == pytest.approx(std) == pytest.approx(0.28284271)
    assert (summary.ci_low, summary.ci_high) == pytest.approx((87.1 - half, 87.1 + half))
    assert (round(summary.ci_low, 2), round(summary.ci_high, 2)) == (84.56, 89.64)


def test_three_values_by_hand_and_against_scipy():
    values = [85.0, 86.0, 88.0]  # mean 86.33, deviations -1.33, -0.33, 1.67: sum of squares 4.6667
    summary = stats.summarise(values)
    std = math.sqrt(4.666666666666667 / 2)
    assert summary.std == pytest.approx(std)
    assert summary.ci_high - summary.mean == pytest.approx(T_975_DF2 * std / math.sqrt(3))
    low, high = scipy_stats.t.interval(0.95, 2, loc=summary.mean, scale=scipy_stats.sem(values))
    assert (summary.ci_low, summary.ci_high) == pytest.approx((low, high), rel=1e-12)


def test_equal_values_have_a_zero_width_interval():
    summary = stats.summarise([88.0, 88.0, 88.0])
    assert summary.std == 0 and summary.ci_low == summary.ci_high == 88.0


def test_n_equals_2_paired_t_by_hand():
    """With 1 degree of freedom, t is Cauchy: the two-sided p-value of t is 1 - 2 atan(|t|) / pi."""
    baseline, nnrelief = [87.0, 85.0], [87.3, 86.9]  # differences -0.3 and -1.9
    result = stats.paired(baseline, nnrelief)
    differences = [-0.3, -1.9]
    mean = sum(differences) / 2
    std = math.sqrt(sum((d - mean) ** 2 for d in differences))
    t = mean / (std / math.sqrt(2))
    assert result.n == 2 and result.difference.mean == pytest.approx(-1.1)
    assert result.t_test_p == pytest.approx(1 - 2 * math.atan(abs(t)) / math.pi, rel=1e-9)
    assert round(result.t_test_p, 4) == 0.4003
    assert result.difference.ci_high - result.difference.mean == pytest.approx(T_975_DF1 * std / math.sqrt(2))
    assert result.wilcoxon_p is None  # fewer than 6 pairs


def test_paired_t_and_wilcoxon_match_scipy_from_six_pairs():
    a = [85.1, 86.4, 84.9, 86.0, 85.5, 86.8, 85.2]
    b = [85.9, 86.1, 86.0, 86.9, 86.6, 87.0, 86.4]
    result = stats.paired(a, b)
    assert result.t_test_p == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue, rel=1e-12)
    assert result.wilcoxon_p == pytest.approx(scipy_stats.wilcoxon([x - y for x, y in zip(a, b)]).pvalue, rel=1e-12)


def _exact_signed_rank_p(differences: list[float]) -> float:
    """Slow reference: drop zeros, rank |d| with mid-ranks for ties, and count the 2^n sign flips whose smaller rank
    sum is at most the observed one."""
    nonzero = [d for d in differences if d != 0]
    magnitudes = sorted(abs(d) for d in nonzero)
    rank = {m: sum(i + 1 for i, x in enumerate(magnitudes) if x == m) / magnitudes.count(m) for m in magnitudes}
    ranks = [rank[abs(d)] for d in nonzero]
    observed = min(sum(r for r, d in zip(ranks, nonzero) if d > 0), sum(r for r, d in zip(ranks, nonzero) if d < 0))
    total = sum(ranks)
    extreme = 0
    for signs in itertools.product((0, 1), repeat=len(ranks)):
        positive = sum(r for r, s in zip(ranks, signs) if s)
        extreme += min(positive, total - positive) <= observed + 1e-12
    return extreme / 2 ** len(ranks)


@pytest.mark.parametrize("differences", [
    [1.0, 2.0, 2.0, 3.0, -1.0, 4.0],  # ties in |d| (1, 1 and 2, 2): mid-ranks 1.5 and 3.5
    [0.5, -0.5, 0.5, 1.5, 2.0, -2.5, 3.0],  # three tied at 0.5
    [1.0, 0.0, 3.0, 4.0, -1.0, 5.0, 6.0],  # a zero difference is dropped (Wilcoxon's convention), plus a tie
    [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # all positive: p = 2 / 2^6
])
def test_wilcoxon_with_ties_and_zeros_against_an_exact_enumeration(differences):
    b = [80.0] * len(differences)
    a = [80.0 + d for d in differences]
    result = stats.paired(a, b)
    assert result.wilcoxon_p == pytest.approx(_exact_signed_rank_p([x - y for x, y in zip(a, b)]), rel=1e-9)
    assert result.wilcoxon_p == pytest.approx(scipy_stats.wilcoxon([x - y for x, y in zip(a, b)]).pvalue, rel=1e-12)


def test_ties_in_the_data_stay_ties_in_floating_point():
    """86.1 - 86.0 and 86.4 - 86.2 are 0.1 and 0.2 up to 1e-14 in floating point; ranked as data they tie."""
    a, b = [86.1, 85.3, 86.4, 85.8, 85.9, 86.3], [86.0, 85.5, 86.2, 85.8, 86.1, 85.9]
    exact = [0.1, -0.2, 0.2, 0.0, -0.2, 0.4]
    assert [x - y for x, y in zip(a, b)] != exact  # the trap
    result = stats.paired(a, b)
    assert result.wilcoxon_p == pytest.approx(_exact_signed_rank_p(exact), rel=1e-12)
    assert result.wilcoxon_p == pytest.approx(scipy_stats.wilcoxon(exact).pvalue, rel=1e-12)
    assert result.t_test_p == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue, rel=1e-9)


def test_all_positive_six_pairs_by_hand():
    assert stats.paired([1, 2, 3, 4, 5, 6], [0] * 6).wilcoxon_p == pytest.approx(2 / 64)


def test_differences_without_spread_have_no_t_test():
    assert stats.paired([1.0, 2.0], [0.0, 1.0]).t_test_p is None  # t would be infinite
    same = stats.paired([86.0] * 6, [86.0] * 6)
    assert same.t_test_p is None and same.wilcoxon_p is None and same.difference.mean == 0


def test_paired_by_seed_uses_the_shared_seeds_in_order():
    result = stats.paired_by_seed({0: 85.0, 1: 84.0, 2: 83.0}, {2: 84.0, 0: 86.5, 5: 90.0})
    assert result.n == 2 and result.difference.mean == pytest.approx(((85.0 - 86.5) + (83.0 - 84.0)) / 2)
    assert stats.paired_by_seed({0: 1.0}, {1: 1.0}) is None


def test_holm_by_hand():
    """m = 4: sorted 0.01, 0.02, 0.03, 0.2 -> 4 x 0.01 = 0.04, 3 x 0.02 = 0.06, max(0.06, 2 x 0.03) = 0.06, 0.2."""
    adjusted = stats.holm({"a": 0.03, "b": 0.01, "c": 0.2, "d": 0.02, "e": None})
    assert adjusted == pytest.approx({"a": 0.06, "b": 0.04, "c": 0.2, "d": 0.06, "e": None})
    assert stats.holm({"a": 0.6, "b": 0.7}) == pytest.approx({"a": 1.0, "b": 1.0})  # capped at 1
    assert stats.holm({}) == {}


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least one value"):
        stats.summarise([])
    with pytest.raises(ValueError, match="finite"):
        stats.summarise([1.0, math.nan])
    with pytest.raises(ValueError, match="as many values"):
        stats.paired([1.0, 2.0], [1.0])
