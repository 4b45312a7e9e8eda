"""Statistics over seeds, shared by the tables and the figures: a mean with its Student-t interval, and paired
comparisons of two pruners seed by seed (paired t-test; Wilcoxon signed-rank from 6 pairs), with Holm's correction.

Every function takes plain numbers (one per seed, or one pair per seed), so any group of runs and any pair of
pruners can use them. Tests come from scipy.stats.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats as scipy_stats

CONFIDENCE = 0.95  # of every interval
SIGNIFICANCE = 0.05  # a difference is marked significant when its Holm-adjusted p-value is below this
WILCOXON_MIN_PAIRS = 6  # below this the signed-rank test cannot reach p < 0.05 (two-sided, exact: p >= 2 / 2^n)
DIFFERENCE_DIGITS = 9  # differences are rounded to 1e-9, so that ties in the data stay ties in floating point


@dataclass(frozen=True)
class Summary:
    """``n`` values: their mean, sample standard deviation (n - 1) and a Student-t interval for the mean.

    With one value there is no spread and no interval: ``std``, ``ci_low`` and ``ci_high`` are None.
    """

    n: int
    mean: float
    std: float | None
    ci_low: float | None
    ci_high: float | None
    confidence: float = CONFIDENCE


@dataclass(frozen=True)
class Paired:
    """``a - b`` over pairs with the same seed: the difference's summary and two-sided p-values.

    ``t_test_p`` is None with fewer than 2 pairs or when every difference is the same (the t statistic is then
    undefined or infinite); ``wilcoxon_p`` is None with fewer than ``WILCOXON_MIN_PAIRS`` pairs or when every
    difference is zero.
    """

    difference: Summary
    t_test_p: float | None
    wilcoxon_p: float | None

    @property
    def n(self) -> int:
        return self.difference.n


def summarise(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    """Mean, sample std and the Student-t interval ``mean ± t(1 - (1 - confidence) / 2, n - 1) · std / √n``."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("summarise needs at least one value")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"summarise needs finite values, got {values}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean = statistics.fmean(values)
    if len(values) == 1:
        return Summary(1, mean, None, None, None, confidence)
    std = statistics.stdev(values)
    half = float(scipy_stats.t.ppf((1 + confidence) / 2, len(values) - 1)) * std / math.sqrt(len(values))
    return Summary(len(values), mean, std, mean - half, mean + half, confidence)


def paired(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Paired:
    """Compare ``a`` with ``b`` pair by pair (``a[i]`` and ``b[i]`` share a seed): differences ``a - b``.

    The differences are rounded to ``DIFFERENCE_DIGITS`` decimals first: 86.4 - 86.2 and 85.5 - 85.3 are both 0.2
    (in floating point they differ in the 15th digit, and the signed-rank test would rank them apart).
    """
    if len(a) != len(b):
        raise ValueError(f"paired needs as many values in a as in b, got {len(a)} and {len(b)}")
    differences = [round(float(x) - float(y), DIFFERENCE_DIGITS) for x, y in zip(a, b)]
    summary = summarise(differences, confidence)
    t_test_p = None
    if len(differences) >= 2 and len(set(differences)) > 1:
        t_test_p = float(scipy_stats.ttest_1samp(differences, 0.0).pvalue)  # the paired t-test on a - b
    wilcoxon_p = None
    if len(differences) >= WILCOXON_MIN_PAIRS and any(differences):
        wilcoxon_p = float(scipy_stats.wilcoxon(differences, zero_method="wilcox", method="auto").pvalue)
    return Paired(summary, t_test_p, wilcoxon_p)


def paired_by_seed(a: Mapping[int, float], b: Mapping[int, float], confidence: float = CONFIDENCE) -> Paired | None:
    """``paired`` over the seeds both have (in seed order); None when they share no seed."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    return paired([a[s] for s in seeds], [b[s] for s in seeds], confidence)


def holm(p_values: Mapping[str, float | None]) -> dict[str, float | None]:
    """Holm's step-down adjustment of a family of p-values (None: not tested, left out of the family and kept None).

    Sorted ascending, the i-th of m (1-based) becomes ``min(1, max over j <= i of (m - j + 1) · p_(j))``.
    """
    tested = sorted((p, key) for key, p in p_values.items() if p is not None)
    adjusted: dict[str, float | None] = dict.fromkeys(p_values)
    running = 0.0
    for index, (p, key) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - index) * p))
        adjusted[key] = running
    return adjusted
