"""How much evidence a case gets: loops per round and the number of paired rounds, sized per case.

pyperf calibrates *loops* so each value lasts long enough to measure, and criterion.rs measures for a
time budget; neither pairs rounds, so the pairing stays ours. A case is sized in three steps before its
timed rounds, all on the warm-up copies and all discarded as evidence:

1. warm-up rounds at one forward per round give each side's per-call time;
2. ``loops`` = enough consecutive forwards that a round of the faster side lasts ``ROUND_TARGET_S``
   (both sides use the same loops, and per-batch latency stays round time / loops);
3. a pilot of ``PILOT_ROUNDS`` paired rounds at those loops gives the spread of the per-round log
   speed-up, from which the rounds for a ``PRECISION`` half-width follow, within a floor, a ceiling and
   the profile's time budget.

The rounds are fixed from the pilot alone, never from looks at the rounds that are published, so the
interval built from them has its nominal coverage (no optional stopping).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vggprune.stats import chunk_size, z_value
from vggprune.timing.pairing import BLOCKS, PairedRounds, TimedForward, measure

ROUND_TARGET_S = 0.004  # rounds this long sit well above timer and scheduler jitter (0.2-0.8 ms forwards)
MAX_LOOPS = 1000
PILOT_ROUNDS = 6
PRECISION = 0.03  # wanted half-width of the within-run 95 % speed-up interval, as a fraction
MIN_ROUNDS = 6 * BLOCKS  # what a compare needs to see a 25 % change at batch 64 (10 rounds missed a third)
MAX_ROUNDS = 40 * BLOCKS
# The within-run interval is about z * 1.2533 * sd / sqrt(n) wide on each side: the median's standard
# error is 1.2533 times the mean's for a normal sample.
_Z_MEDIAN = z_value(0.95) * 1.2533


@dataclass(frozen=True)
class Evidence:
    """What a case will be timed with."""

    loops: int  # consecutive forwards per round, on both sides
    rounds: int  # paired rounds
    pilot_sd: float | None  # spread of the pilot's per-round log speed-ups (None when rounds were fixed)


def rounds_for(sd: float, pair_s: float, budget_s: float) -> int:
    """Rounds for a ``PRECISION`` half-width at per-round log spread ``sd``, capped by what ``budget_s``
    of timed pairs (``pair_s`` each) allows, within ``MIN_ROUNDS``..``MAX_ROUNDS``, whole blocks."""
    wanted = math.ceil((_Z_MEDIAN * sd / math.log1p(PRECISION)) ** 2) if sd > 0 else MIN_ROUNDS
    affordable = math.floor(budget_s / pair_s) if pair_s > 0 else MAX_ROUNDS
    n = max(MIN_ROUNDS, min(wanted, affordable, MAX_ROUNDS))
    return chunk_size(n, BLOCKS) * BLOCKS  # whole blocks


def size_evidence(base: TimedForward, case: TimedForward, warmup: int, budget_s: float,
                  fixed_rounds: int | None = None, seed: int = 0,
                  clock: Callable[[], float] = time.perf_counter) -> Evidence:
    """Warm both sides up, set their ``loops``, and choose the rounds (``fixed_rounds`` if given)."""
    base.loops = case.loops = 1
    paired = PairedRounds(base, warmup=0, seed=seed, clock=clock)
    case_s = measure(case, rounds=max(1, warmup), warmup=0, paired=paired, clock=clock)
    base_s = paired.times()
    per_call = (float(np.median(base_s)), float(np.median(case_s)))
    loops = max(1, min(MAX_LOOPS, math.ceil(ROUND_TARGET_S / max(min(per_call), 1e-9))))
    base.loops = case.loops = loops
    if fixed_rounds is not None:
        return Evidence(loops, fixed_rounds, None)
    paired = PairedRounds(base, warmup=0, seed=seed + 1, clock=clock)
    case_s = measure(case, rounds=PILOT_ROUNDS, warmup=0, paired=paired, clock=clock)
    sd = float(np.std(np.log(np.asarray(paired.times()) / np.asarray(case_s)), ddof=1))
    pair_s = loops * (float(np.median(paired.times())) + float(np.median(case_s)))
    return Evidence(loops, rounds_for(sd, pair_s, budget_s), round(sd, 5))
