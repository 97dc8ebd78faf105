"""Statistics for judging results: accuracy intervals and paired accuracy tests.

Accuracy is measured on a finite test split (360 images in the quick profile: one image is 0.28
points), so every top-1 figure needs its uncertainty, and comparing two models on the *same* images
should use the pairing: :func:`mcnemar_exact` looks only at the images on which they disagree.

Per-image correctness travels as a string of ``'0'``/``'1'`` characters, one per test image in
test-split order (compact in JSON, diffable by eye); :func:`accuracy` is its mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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
    from scipy.stats import norm  # lazy: train.py imports this module for accuracy() alone

    z = float(norm.ppf(0.5 + confidence / 2))
    p, z2 = successes / n, z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # At p = 0 or 1 one bound is exactly 0 or 1; floating point could miss it by an ulp.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


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
