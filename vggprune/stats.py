"""The statistics behind every published interval and verdict; scipy and numpy only, no torch.

Timing: a speed-up is the median of per-round paired ratios (base time / case time, both timed in
the same shuffled round), with a distribution-free confidence interval for that median (order
statistics of the binomial, no resampling, so the same rounds always give the same interval). Two
runs are compared on the log of those ratios with the Mann–Whitney U test and the Hodges–Lehmann
shift with its companion (Moses) confidence interval: rank-based, robust to the long right tail
that timing always has, and valid for the 10–30 rounds a case gets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def median_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free CI for the median: the order statistics x(k), x(n+1-k) that cover it with at
    least ``confidence`` (binomial(n, 1/2)); ``[min, max]`` when n is too small to reach it."""
    from scipy.stats import binom

    x = np.sort(np.asarray(values, dtype=np.float64))
    n = x.size
    if n == 0:
        raise ValueError("median_ci needs at least one value")
    alpha = 1 - confidence
    # largest k with P(Bin(n, .5) <= k - 1) <= alpha / 2, i.e. coverage 1 - 2 * cdf(k - 1) >= confidence
    k = int(binom.ppf(alpha / 2, n, 0.5))
    if k >= 1 and binom.cdf(k - 1, n, 0.5) > alpha / 2:
        k -= 1
    if k < 1:
        return float(x[0]), float(x[-1])
    return float(x[k - 1]), float(x[n - k])


def paired_speedup(base_times: Sequence[float], case_times: Sequence[float],
                   confidence: float = 0.95) -> tuple[float, tuple[float, float]]:
    """(median of base_i / case_i, its CI): each round's ratio is one speed-up sample."""
    ratios = np.asarray(base_times, dtype=np.float64) / np.asarray(case_times, dtype=np.float64)
    return float(np.median(ratios)), median_ci(ratios, confidence)


def log_ratios(base_times: Sequence[float], case_times: Sequence[float]) -> np.ndarray:
    return np.log(np.asarray(base_times, dtype=np.float64) / np.asarray(case_times, dtype=np.float64))


@dataclass(frozen=True)
class ShiftTest:
    """How much ``after`` is shifted from ``before`` (Hodges–Lehmann), its CI, and the U test's p-value."""

    shift: float
    low: float
    high: float
    p_value: float
    n_before: int
    n_after: int


def shift_test(before: Sequence[float], after: Sequence[float], confidence: float = 0.95) -> ShiftTest:
    """Two-sided Mann–Whitney U test of ``after`` vs ``before`` with the Hodges–Lehmann shift estimate
    (median of all pairwise differences after_j - before_i) and its distribution-free CI (Moses): the
    k-th smallest and largest differences, k from the U statistic's critical value."""
    from scipy.stats import mannwhitneyu, norm

    a, b = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        raise ValueError("shift_test needs at least 2 values on each side")
    diffs = np.sort((b[None, :] - a[:, None]).ravel())
    n, m = a.size, b.size
    z = norm.ppf(1 - (1 - confidence) / 2)
    k = int(math.floor(n * m / 2 - z * math.sqrt(n * m * (n + m + 1) / 12)))
    k = max(k, 0)
    low, high = float(diffs[k]), float(diffs[n * m - 1 - k])
    p = float(mannwhitneyu(b, a, alternative="two-sided").pvalue)
    return ShiftTest(float(np.median(diffs)), low, high, p, n, m)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (top-1 = successes / n test images)."""
    from scipy.stats import norm

    if n <= 0:
        raise ValueError("wilson_interval needs n > 0")
    z = norm.ppf(1 - (1 - confidence) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class McNemar:
    """Paired correctness of the same images: b went right→wrong, c wrong→right; exact two-sided p."""

    b: int
    c: int
    p_value: float


def mcnemar_exact(baseline_correct: str, candidate_correct: str) -> McNemar:
    from scipy.stats import binomtest

    if len(baseline_correct) != len(candidate_correct):
        raise ValueError("McNemar's test needs the same images on both sides")
    b = sum(1 for x, y in zip(baseline_correct, candidate_correct) if x == "1" and y == "0")
    c = sum(1 for x, y in zip(baseline_correct, candidate_correct) if x == "0" and y == "1")
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return McNemar(b, c, p)
