"""Accuracy statistics against values computed independently of vggprune.stats (literature, by hand)."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest
from scipy.stats import binomtest

from vggprune.stats import McNemar, accuracy, check_correct, mcnemar_exact, wilson_interval


# Newcombe (1998), "Two-sided confidence intervals for the single proportion: comparison of seven
# methods", Statistics in Medicine 17:857-872, Table II, method 3 (Wilson score, no continuity
# correction), 95 %, to 4 decimals.
@pytest.mark.parametrize(("k", "n", "low", "high"), [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_newcombe_1998(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=5e-5) and hi == pytest.approx(high, abs=5e-5)


def test_wilson_by_hand_at_one_half():
    # k/n = 1/2, z = 1.959964: centre stays 0.5, half-width = z·sqrt(1/(4n) + z²/(4n²)) / (1 + z²/n).
    # n = 4: sqrt(1/16 + 3.841459/64) = sqrt(0.122523) = 0.350033; ×1.959964 / 1.960365 = 0.349961.
    lo, hi = wilson_interval(2, 4)
    assert lo == pytest.approx(0.5 - 0.349961, abs=1e-6) and hi == pytest.approx(0.5 + 0.349961, abs=1e-6)


@pytest.mark.parametrize(("k", "n", "confidence"), [(358, 360, 0.95), (5, 360, 0.95), (17, 40, 0.99),
                                                    (360, 360, 0.95), (3, 7, 0.8)])
def test_wilson_agrees_with_scipy(k, n, confidence):
    ref = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    lo, hi = wilson_interval(k, n, confidence)
    assert lo == pytest.approx(ref.low, abs=1e-12) and hi == pytest.approx(ref.high, abs=1e-12)


def test_wilson_edges_are_exact_and_inside_unit_interval():
    assert wilson_interval(0, 360)[0] == 0.0 and wilson_interval(360, 360)[1] == 1.0
    lo, hi = wilson_interval(360, 360)
    assert 0.98 < lo < 1.0  # 100 % on 360 images is not proof of perfection
    assert wilson_interval(10, 100, 0.99)[0] < wilson_interval(10, 100, 0.95)[0]  # wider when more confident


@pytest.mark.parametrize(("args", "match"), [((5, 0), "n > 0"), ((6, 5), "successes <= n"), ((-1, 5), "0 <="),
                                             ((1.5, 5), "integers"), ((1, 5, 1.0), "confidence")])
def test_wilson_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        wilson_interval(*args)


def _pair(b: int, c: int, both: int = 0, neither: int = 0) -> tuple[str, str]:
    """Baseline/candidate strings with b right→wrong, c wrong→right, and concordant images."""
    base = "1" * b + "0" * c + "1" * both + "0" * neither
    cand = "0" * b + "1" * c + "1" * both + "0" * neither
    return base, cand


@pytest.mark.parametrize(("b", "c", "p"), [
    (2, 0, 2 * 1 / 4),  # "2 flipped images pass": P(X = 0 | 2, ½) doubled = 0.5
    (12, 0, 2 / 2**12),  # "12 flips fail": 0.000488
    (0, 5, 2 / 2**5),  # 0.0625, the smallest p that 5 discordant pairs can give: not significant
    (2, 12, 2 * (comb(14, 0) + comb(14, 1) + comb(14, 2)) / 2**14),  # 212/16384 = 0.01294
    (3, 3, 1.0),  # balanced: the doubled tail exceeds 1 and is capped
    (0, 0, 1.0),  # no disagreement at all
])
def test_mcnemar_exact_by_hand(b, c, p):
    result = mcnemar_exact(*_pair(b, c, both=300, neither=5))
    assert (result.b, result.c, result.n, result.discordant) == (b, c, 305 + b + c, b + c)
    assert result.p_value == pytest.approx(p, rel=1e-12)


def test_mcnemar_only_discordant_pairs_matter_and_direction_is_kept():
    few = mcnemar_exact(*_pair(1, 9, both=10))
    many = mcnemar_exact(*_pair(1, 9, both=10_000, neither=500))
    assert few.p_value == pytest.approx(many.p_value) == pytest.approx(2 * (1 + 10) / 1024)
    flipped = mcnemar_exact(*reversed(_pair(1, 9)))
    assert (flipped.b, flipped.c, flipped.p_value) == (9, 1, few.p_value)
    assert few.difference == pytest.approx(8 / 20) and isinstance(few, McNemar)


def test_mcnemar_interleaved_order():
    # position by position: 1→1, 1→0, 0→1, 1→0, 0→0, 1→0  ⇒ b = 3, c = 1, p = 2·(1 + 4)/16 = 0.625
    result = mcnemar_exact("110101", "101000")
    assert (result.b, result.c, result.p_value) == (3, 1, pytest.approx(0.625))


def test_mcnemar_refuses_unpaired_or_malformed_strings():
    with pytest.raises(ValueError, match="not evaluated on the same test set"):
        mcnemar_exact("0101", "010")
    with pytest.raises(ValueError, match="only hold '0' and '1'"):
        mcnemar_exact("01x1", "0101")
    with pytest.raises(ValueError, match="non-empty"):
        mcnemar_exact("", "")


def test_accuracy_is_the_exact_mean():
    assert accuracy("1101") == 0.75 and accuracy("1" * 358 + "00") == 358 / 360
    assert check_correct("01") == "01"


# ---------------------------------------------------------------- timing

def test_a_constant_shift_is_measured_exactly_and_significant():
    from vggprune.stats import change_test

    rng = np.random.default_rng(3)
    before = rng.normal(0.0, 0.02, 30)
    after = before - 0.3  # every round 26 % slower in speed-up (log scale)
    test = change_test(before, after, 5, 5)
    assert test.shift == pytest.approx(-0.3, abs=1e-12)
    assert test.low < -0.3 < test.high and test.high < -0.2 and test.p_value < 1e-6
    same = change_test(before, before, 5, 5)
    assert same.shift == 0 and same.p_value == 1.0


def test_blocks_that_disagree_widen_the_standard_error():
    from vggprune.stats import median_and_se

    rng = np.random.default_rng(4)
    offsets = np.repeat([0.0, 0.05, 0.10, 0.15, 0.20], 6)  # each block of 6 rounds on its own placement
    values = offsets + rng.normal(0, 0.005, 30)
    _, iid = median_and_se(values, blocks=1)
    _, clustered = median_and_se(values, blocks=5)
    assert clustered > 1.5 * iid


def test_speedup_ci_contains_the_median_and_covers_blocks():
    from vggprune.stats import paired_speedup

    base = np.full(30, 0.010)
    case = 0.005 * np.exp(np.repeat([0.0, 0.04, -0.04, 0.08, -0.08], 6))
    point, (low, high) = paired_speedup(base, case, blocks=5)
    ratios = base / case
    assert point == pytest.approx(np.median(ratios))
    assert low <= point <= high
    # the interval spans at least the middle blocks' speed-ups, not just the median block's rounds
    assert low < 2 * np.exp(-0.04) + 1e-9 and high > 2 * np.exp(0.04) - 1e-9


def test_run_spread_adds_a_between_run_term_to_each_side_in_quadrature():
    from vggprune.stats import paired_speedup

    base = np.full(30, 0.010)
    case = 0.005 * np.exp(np.repeat([0.0, 0.04, -0.04, 0.08, -0.08], 6))
    point, (low, high) = paired_speedup(base, case, blocks=5)
    same, (wlow, whigh) = paired_speedup(base, case, blocks=5, run_spread=0.05)
    assert same == point
    z = 1.959963985  # the normal 97.5th percentile
    for inner, outer in ((np.log(point / low), np.log(point / wlow)), (np.log(high / point), np.log(whigh / point))):
        assert outer == pytest.approx(np.sqrt(inner**2 + (z * 0.05) ** 2), rel=1e-6)
    assert paired_speedup(base, case, blocks=5, run_spread=0.0) == (point, (low, high))


def test_ratio_of_medians_of_two_timing_windows_covers_the_true_ratio():
    from vggprune.stats import ratio_of_medians

    # two cases timed apart, 30 rounds each with 5 % log-normal spread; the true ratio is 20 / 8 = 2.5
    rng = np.random.default_rng(5)
    covered = 0
    for _ in range(40):
        slow, fast = 0.020 * np.exp(rng.normal(0, 0.05, 30)), 0.008 * np.exp(rng.normal(0, 0.05, 30))
        ratio, (low, high) = ratio_of_medians(slow, fast)
        assert ratio == pytest.approx(np.median(slow) / np.median(fast))
        covered += low <= 2.5 <= high
    assert covered >= 34  # a 95 % interval: at least 85 % of 40 (binomial 5th percentile is 36)
