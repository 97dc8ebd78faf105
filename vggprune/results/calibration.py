"""Are the speed-up intervals honest on this machine? Coverage of each run's CI across same-code runs.

A 95 % interval is calibrated if it holds the quantity it estimates about 95 % of the time. Between
runs the quantity is unknown, so the check uses the median over runs of the same code as a
stand-in: for every case, each run's ``measured_speedup_ci`` either contains the median of the runs'
``measured_speedup`` or not, and the coverage is the fraction that does. Run ``make bench`` (or
``pytest bench/``) several times with nothing else running, then ``vggprune calibration run*.json``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from tabulate import tabulate

from vggprune.errors import UserError
from vggprune.results.record import CaseRecord, Run


@dataclass(frozen=True)
class CaseCoverage:
    case_id: str
    median: float
    speedups: list[float]
    cis: list[tuple[float, float]]
    spreads: list[float]  # each run's run_spread, already inside its CI

    @property
    def hits(self) -> int:
        return sum(lo <= self.median <= hi for lo, hi in self.cis)

    def hits_with(self, run_spread: float, z: float) -> int:
        """How many runs' intervals would hold the median with ``run_spread`` in place of their own."""
        from vggprune.stats import widen

        target, hits = math.log(self.median), 0
        for s, (lo, hi), own in zip(self.speedups, self.cis, self.spreads):
            centre, own2 = math.log(s), (z * own) ** 2
            # each side back to its within-run half-width, then widened as the harness widens it
            below = math.sqrt(max(0.0, (centre - math.log(lo)) ** 2 - own2))
            above = math.sqrt(max(0.0, (math.log(hi) - centre) ** 2 - own2))
            low, high = widen(centre, centre - below, centre + above, run_spread)
            hits += low <= target <= high
        return hits


def _selected(record: CaseRecord, scopes: Sequence[str], batch_size: int) -> bool:
    """A case timed itself (one that shares another's timing, ``timed_with``, would count that timing twice)."""
    return (record.scope in scopes and record.batch_size == batch_size and record.timed_with is None
            and record.measured_speedup is not None and record.measured_speedup_ci is not None)


def coverage(runs: Sequence[Run], scopes: Sequence[str] = ("conv", "all"),
             batch_size: int | None = None) -> list[CaseCoverage]:
    """Per case present in every run: its speed-ups, CIs and the runs' median (default: largest batch)."""
    if len(runs) < 3:
        raise UserError(f"calibration needs at least 3 runs of the same code (5 or more is better), got {len(runs)}")
    if batch_size is None:
        batch_size = max(c.batch_size for c in runs[0].cases)
    per_run = [{c.key(): c for c in run.cases if _selected(c, scopes, batch_size)} for run in runs]
    keys = [k for k in per_run[0] if all(k in cases for cases in per_run[1:])]
    if not keys:
        raise UserError(f"no timed {'/'.join(scopes)} case at batch size {batch_size} is in every run")
    out = []
    for key in keys:
        records = [cases[key] for cases in per_run]
        speedups = [r.measured_speedup for r in records]
        out.append(CaseCoverage(records[0].case_id, statistics.median(speedups), speedups,
                                [tuple(r.measured_speedup_ci) for r in records],
                                [r.run_spread or 0.0 for r in records]))
    return out


def render(cases: Sequence[CaseCoverage]) -> str:
    rows = [[c.case_id, f"{c.median:.3f}", f"{c.hits}/{len(c.cis)}",
             "  ".join(f"{s:.2f} ({lo:.2f}–{hi:.2f})" for s, (lo, hi) in zip(c.speedups, c.cis))]
            for c in cases]
    hits, total = counts(cases)
    table = tabulate(rows, headers=["case", "median over runs", "CIs holding it", "each run: × (95 % CI)"],
                     tablefmt="github")
    spread, own = needed_spread(cases), sorted({s for c in cases for s in c.spreads})
    need = (f"more than {MAX_SPREAD}" if spread is None else f"{spread:.3f}")
    return (f"{table}\n\ncoverage: {hits}/{total} = {hits / total:.1%} of (case, run) pairs (target ≥ 90 %)\n"
            f"run spread for {TARGET:.0%} coverage: {need} (these intervals allowed "
            f"{', '.join(f'{s:g}' for s in own)}; set it with --run-spread)\n")


TARGET = 0.95  # what a 95 % interval should reach
MAX_SPREAD = 0.5  # beyond ±100 % at 95 % an interval says nothing


def needed_spread(cases: Sequence[CaseCoverage], target: float = TARGET, step: float = 0.001) -> float | None:
    """The smallest run spread (log-scale SD, to ``step``) whose widened intervals reach ``target``
    coverage; None if even MAX_SPREAD does not."""
    from vggprune.stats import z_value

    z = z_value(0.95)
    total = sum(len(c.cis) for c in cases)
    for i in range(round(MAX_SPREAD / step) + 1):
        if sum(c.hits_with(i * step, z) for c in cases) >= target * total:
            return round(i * step, 6)
    return None


def counts(cases: Sequence[CaseCoverage]) -> tuple[int, int]:
    """(covered, all) (case, run) pairs."""
    return sum(c.hits for c in cases), sum(len(c.cis) for c in cases)


def total_coverage(cases: Sequence[CaseCoverage]) -> float:
    hits, total = counts(cases)
    return hits / total
