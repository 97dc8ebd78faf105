"""Statistics for judging results: accuracy intervals and paired accuracy tests, speed-up intervals and
the test that compares speed-ups between runs.

Accuracy is measured on a finite test split (360 images in the quick profile: one image is 0.28
points), so every top-1 figure needs its uncertainty, and comparing two models on the *same* images
should use the pairing: :func:`mcnemar_exact` looks only at the images on which they disagree.

Per-image correctness travels as a string of ``'0'``/``'1'`` characters, one per test image in
test-split order (compact in JSON, diffable by eye); :func:`accuracy` is its mean.

Timing: a speed-up is the median of per-round paired ratios (base time / case time, both timed in
the same shuffled round), with a distribution-free confidence interval for that median (order
statistics of the binomial, no resampling, so the same rounds always give the same interval). Two
runs are compared on the log of those ratios: the difference of the two medians with a standard
error from a two-stage bootstrap over each run's blocks of rounds (rounds in a block share a memory
placement, which changes speed for a whole process), a Welch-style test.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def z_value(confidence: float = 0.95) -> float:
    """The two-sided normal quantile for ``confidence`` (1.96 for 95 %); the standard library's, so
    modules that need it at import time do not import scipy."""
    return statistics.NormalDist().inv_cdf(0.5 + confidence / 2)


def chunk_size(n: int, chunks: int) -> int:
    """Items per chunk when ``n`` items are cut into ``chunks`` contiguous, equal chunks (the last shorter)."""
    return max(1, -(-n // max(1, chunks)))


def check_correct(correct: str) -> str:
    """``correct`` unchanged if it is a non-empty string of '0'/'1', else a ValueError saying why."""
    if not isinstance(correct, str) or not correct:
        raise ValueError(f"per-image correctness must be a non-empty string of 0/1, got {correct!r:.40}")
    if correct.strip("01"):
        bad = next(ch for ch in correct if ch not in "01")
        raise ValueError(f"per-image correctness may only hold '0' and '1', found {bad!r}")
    return correct


def accuracy(correct: str) -> float:
    """Top-1 as the mean of a per-image correctness string (exactly: count / length)."""
    return check_correct(correct).count("1") / len(correct)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (no continuity correction).

    Unlike the normal ("Wald") interval it stays inside [0, 1] and is not degenerate at 0 % or 100 %,
    which is where pruned accuracies on a small test split live (358/360 → 97.99–99.85 %).
    """
    if isinstance(successes, bool) or isinstance(n, bool) or int(successes) != successes or int(n) != n:
        raise ValueError(f"successes and n must be integers, got {successes!r} and {n!r}")
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes} of {n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    z = z_value(confidence)
    p, z2 = successes / n, z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # At p = 0 or 1 one bound is exactly 0 or 1; floating point could miss it by an ulp.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def correct_interval(correct: str | None, confidence: float = 0.95) -> tuple[float, float] | None:
    """The Wilson interval of a per-image correctness string's top-1; None when there is none."""
    return None if not correct else wilson_interval(correct.count("1"), len(correct), confidence)


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test on paired per-image correctness (baseline vs candidate).

    ``b`` = images the baseline got right and the candidate wrong (right→wrong), ``c`` = wrong→right.
    ``p_value`` is two-sided: how surprising so lopsided a split of the b + c disagreements would be
    if neither model were better (each disagreement a fair coin).
    """

    b: int
    c: int
    n: int  # images compared
    p_value: float

    @property
    def discordant(self) -> int:
        return self.b + self.c

    @property
    def difference(self) -> float:
        """Candidate top-1 minus baseline top-1 (the concordant images cancel)."""
        return (self.c - self.b) / self.n


def mcnemar_exact(baseline_correct: str, candidate_correct: str) -> McNemar:
    """Exact (binomial) McNemar test of two models scored on the same images in the same order."""
    check_correct(baseline_correct)
    check_correct(candidate_correct)
    if len(baseline_correct) != len(candidate_correct):
        raise ValueError(f"cannot pair {len(baseline_correct)} and {len(candidate_correct)} images: "
                         f"the two runs were not evaluated on the same test set")
    b = sum(1 for x, y in zip(baseline_correct, candidate_correct) if x == "1" and y == "0")
    c = sum(1 for x, y in zip(baseline_correct, candidate_correct) if x == "0" and y == "1")
    from scipy.stats import binomtest

    # No disagreement is no evidence of a difference; binomtest refuses n = 0.
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)
    return McNemar(b, c, len(baseline_correct), min(1.0, p))


# ---------------------------------------------------------------- timing

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


def block_ids(n: int, blocks: int) -> np.ndarray:
    """Which block each of ``n`` rounds belongs to: ``blocks`` contiguous, equal chunks (the last shorter)."""
    return np.arange(n) // chunk_size(n, blocks)


def median_and_se(values: Sequence[float], blocks: int = 1, reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """The median of ``values`` and its standard error from a two-stage bootstrap: resample the blocks,
    then the rounds inside each drawn block. Blocks that disagree (a placement that is faster for a
    whole block) widen it, as they should; with one block it is the ordinary bootstrap."""
    x = np.asarray(values, dtype=np.float64)
    ids = block_ids(x.size, blocks)
    groups = [x[ids == b] for b in np.unique(ids)]
    sizes = np.array([g.size for g in groups])
    padded = np.full((len(groups), sizes.max()), np.nan)
    for i, g in enumerate(groups):
        padded[i, :g.size] = g
    # all replicates at once: drawn blocks (reps, G), then rounds within each drawn block; the last block
    # may be shorter, so positions beyond a drawn block's size are masked out of its median
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, len(groups), (reps, len(groups)))
    size = sizes[drawn][..., None]
    within = np.minimum((rng.random((reps, len(groups), sizes.max())) * size).astype(np.int64), size - 1)
    sample = np.where(np.arange(sizes.max()) < size, padded[drawn[..., None], within], np.nan)
    medians = np.nanmedian(sample.reshape(reps, -1), axis=1)
    return float(np.median(x)), float(medians.std(ddof=1))


def paired_speedup(base_times: Sequence[float], case_times: Sequence[float], blocks: int = 1,
                   confidence: float = 0.95, run_spread: float = 0.0) -> tuple[float, tuple[float, float]]:
    """(median of base_i / case_i, its CI): each round's ratio is one speed-up sample.

    The CI is the wider of the distribution-free order-statistic interval (rounds as independent)
    and the two-stage bootstrap over blocks (rounds within a block share a memory placement), on the
    log scale: the interval that admits more of what was seen to vary. ``run_spread`` (a standard
    deviation on the log scale) then widens it for what varies *between* runs, which no run can see
    from inside: see :func:`widen`.
    """
    logs = log_ratios(base_times, case_times)
    low, high = median_ci(logs, confidence)
    if blocks > 1 and logs.size > blocks:
        centre, se = median_and_se(logs, blocks)
        z = z_value(confidence)
        low, high = min(low, centre - z * se), max(high, centre + z * se)
    point = float(np.median(np.exp(logs)))  # the median ratio (for even n: the mean of the middle two)
    low, high = widen(math.log(point), low, high, run_spread, confidence)
    return point, (min(point, float(np.exp(low))), max(point, float(np.exp(high))))


def widen(centre: float, low: float, high: float, run_spread: float, confidence: float = 0.95) -> tuple[float, float]:
    """A log-scale interval around ``centre`` with a between-run term added in quadrature to each side.

    A run's rounds share the host's state, so a host that is slower for the narrow pruned models for a
    minute or more (seen here: whole runs 6-15 % lower, in every runtime) shifts every round of the
    run alike. Modelled as a run effect with standard deviation ``run_spread``, independent of the
    within-run error: each half-width h becomes sqrt(h² + (z·run_spread)²), keeping the asymmetry.
    """
    if run_spread <= 0:
        return low, high
    extra = z_value(confidence) * run_spread
    return (centre - math.hypot(centre - min(low, centre), extra),
            centre + math.hypot(max(high, centre) - centre, extra))


@dataclass(frozen=True)
class Change:
    """How a paired estimate moved between two runs: log-scale difference, its CI, and the p-value."""

    shift: float
    low: float
    high: float
    p_value: float


def change_test(before: Sequence[float], after: Sequence[float], blocks_before: int = 1, blocks_after: int = 1,
                confidence: float = 0.95, run_spread: float = 0.0) -> Change:
    """Welch-style test of two runs' medians (of per-round log-ratios or log-times): each run's standard
    error from the two-stage bootstrap over its blocks, so that what varies between memory placements,
    and hence between processes, counts as noise rather than as a change. Each run also carries its own
    run effect with standard deviation ``run_spread`` (see :func:`widen`), so the difference of two runs
    carries two of them."""
    from scipy.stats import norm

    mb, sb = median_and_se(before, blocks_before)
    ma, sa = median_and_se(after, blocks_after)
    shift, se = ma - mb, math.hypot(sb, sa, run_spread, run_spread)
    z = z_value(confidence)
    p = 1.0 if se == 0 and shift == 0 else (0.0 if se == 0 else float(2 * norm.sf(abs(shift) / se)))
    return Change(shift, shift - z * se, shift + z * se, p)


def ratio_of_medians(num_times: Sequence[float], den_times: Sequence[float], num_blocks: int = 1,
                     den_blocks: int = 1, confidence: float = 0.95) -> tuple[float, tuple[float, float]]:
    """median(num) / median(den) for times from two *different* timing windows (two cases, two
    devices), with a 95 % CI on the log scale from each median's two-stage bootstrap standard error,
    as in :func:`change_test`. Unpaired, so wider than a paired speed-up's: nothing cancels what the
    machine did in between."""
    num, den = np.asarray(num_times, dtype=np.float64), np.asarray(den_times, dtype=np.float64)
    ratio = float(np.median(num) / np.median(den))
    se = math.hypot(median_and_se(np.log(num), num_blocks)[1], median_and_se(np.log(den), den_blocks)[1])
    half = z_value(confidence) * se
    return ratio, (ratio * math.exp(-half), ratio * math.exp(half))


def log_ratios(base_times: Sequence[float], case_times: Sequence[float]) -> np.ndarray:
    return np.log(np.asarray(base_times, dtype=np.float64) / np.asarray(case_times, dtype=np.float64))
