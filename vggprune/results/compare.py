"""Run-to-run comparison for CI: a baseline run against a candidate run, case by case, from evidence.

Every verdict is made from the raw evidence each run's JSON carries, with a test suited to it and a
tolerance on top (criterion.rs style: a change must be statistically significant *and* its whole
confidence interval must lie beyond the tolerance):

- sizes: params and MACs must match exactly (pruning is exact: any difference is a bug);
- top-1: McNemar's exact test on the per-image correctness of the same test images; when the two runs
  were evaluated on different test sets, their Wilson intervals (must not overlap) instead;
- latency: by default the speed-up against each run's own base, from the per-round log-ratios of the
  paired rounds: a Welch-style test of the two medians, each with its standard error from a two-stage
  bootstrap over the run's blocks of rounds (each block ran on fresh copies of the models, so what
  varies between memory placements, and so between processes, counts as noise) and a run effect of
  SD ``run_spread`` per run (what the host's state shifts between runs, which no run sees from
  inside), which holds across processes and sessions; significance is judged on Benjamini–Hochberg
  adjusted p-values over all the compared cases, since one comparison makes dozens of tests;
  ``absolute`` compares the case's own rounds, and only between runs of one machine.

Runs from different machines (CPU model, GPU, threads) cannot be judged on latency, and trained
weights that differ on a different CPU type explain accuracy differences by themselves: such verdicts
are printed as advisory and do not fail the comparison unless ``gate_across_machines``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tabulate import tabulate

from vggprune.errors import UserError
from vggprune.limits import RUN_SPREAD
from vggprune.results.record import CaseRecord, Run, load_run
from vggprune.results.report import row_order
from vggprune.stats import Change, change_test, log_ratios, mcnemar_exact

REGRESSED, IMPROVED, WITHIN_NOISE, NO_CHANGE, NOT_COMPARED = (
    "regressed", "improved", "within noise", "no change", "not compared")
LATENCY_METRICS = ("speedup", "absolute")


@dataclass(frozen=True)
class Tolerances:
    max_accuracy_drop: float = 0.01  # absolute top-1 fraction: 0.01 = one percentage point
    latency_tolerance: float = 0.05  # a speed-up (or latency) change must exceed 5 % to count
    # between-run SD (log scale) of a speed-up; None: the larger of the two runs' recorded run_spread,
    # or the harness default for files that recorded none (schema 2)
    run_spread: float | None = None
    alpha: float = 0.05
    latency_metric: str = "speedup"
    check_latency: bool = True
    gate_across_machines: bool = False  # judge runs from different machines as if they were one
    fail_on_missing: bool = False  # a baseline case absent from the candidate counts as a regression

    def __post_init__(self) -> None:
        if not 0 <= self.max_accuracy_drop <= 1:
            raise UserError(f"--max-accuracy-drop is a top-1 fraction in [0, 1], got {self.max_accuracy_drop}")
        if not 0 <= self.latency_tolerance < 10:
            raise UserError(f"--latency-tolerance is a fraction (0.05 = 5 %), got {self.latency_tolerance}")
        if self.run_spread is not None and not 0 <= self.run_spread <= 1:
            raise UserError(f"--run-spread is a log-scale standard deviation in [0, 1], got {self.run_spread}")
        if not 0 < self.alpha < 1:
            raise UserError(f"--alpha must be in (0, 1), got {self.alpha}")
        if self.latency_metric not in LATENCY_METRICS:
            raise UserError(f"--latency-metric: unknown value {self.latency_metric!r}; "
                            f"allowed: {', '.join(LATENCY_METRICS)}")


@dataclass
class Verdict:
    """One aspect (sizes, top-1 or latency) of one case: what changed, how sure, and whether it counts."""

    aspect: str
    outcome: str  # regressed, improved, within noise, no change or not compared
    detail: str
    advisory: bool = False  # reported, but does not fail the comparison
    estimate: float | None = None  # top-1: change in points; latency: relative change (−0.2 = 20 % slower)
    low: float | None = None
    high: float | None = None
    p_value: float | None = None
    p_adjusted: float | None = None  # latency: Benjamini–Hochberg over the compared cases, what is judged
    before: float | None = None  # latency: the baseline's median speed-up (×) or p50 (ms), the candidate's after
    after: float | None = None

    @property
    def fails(self) -> bool:
        return self.outcome == REGRESSED and not self.advisory


@dataclass
class CaseComparison:
    baseline: CaseRecord
    candidate: CaseRecord
    verdicts: list[Verdict]

    @property
    def case_id(self) -> str:
        return self.candidate.case_id

    @property
    def fails(self) -> bool:
        return any(v.fails for v in self.verdicts)

    def verdict(self, aspect: str) -> Verdict | None:
        return next((v for v in self.verdicts if v.aspect == aspect), None)


@dataclass
class Comparison:
    """Per common case its verdicts; plus the cases only one side has, and notes about the two runs."""

    matched: list[CaseComparison] = field(default_factory=list)
    only_baseline: list[CaseRecord] = field(default_factory=list)
    only_candidate: list[CaseRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tolerances: Tolerances = field(default_factory=Tolerances)

    @property
    def regressions(self) -> int:
        missing = len(self.only_baseline) if self.tolerances.fail_on_missing else 0
        return sum(1 for m in self.matched if m.fails) + missing

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0


# ---------------------------------------------------------------- machines

def machine_of(record: CaseRecord) -> tuple:
    """What absolute latency and trained weights depend on: the hardware and how it was driven."""
    return (record.device, record.device_name, record.cpu_model, record.threads, record.memory_format)


def _same_machine(b: CaseRecord, c: CaseRecord) -> bool:
    return machine_of(b) == machine_of(c)


# ---------------------------------------------------------------- verdicts

def _sizes(b: CaseRecord, c: CaseRecord) -> Verdict:
    changed = [f"{f} {getattr(b, f):,} → {getattr(c, f):,}" for f in ("params", "macs")
               if getattr(b, f) != getattr(c, f)]
    if changed:
        return Verdict("sizes", REGRESSED, "; ".join(changed) + " (pruning is exact: any change is a bug)")
    return Verdict("sizes", NO_CHANGE, f"params {c.params:,}")


def _classify(significant: bool, low: float, high: float, threshold: float) -> str:
    """criterion.rs: regressed/improved only when significant and the whole CI lies beyond the threshold."""
    if not significant:
        return NO_CHANGE
    if high < -threshold:
        return REGRESSED
    if low > threshold:
        return IMPROVED
    return WITHIN_NOISE


def _accuracy(b: CaseRecord, c: CaseRecord, tol: Tolerances) -> Verdict:
    if b.accuracy is None:
        return Verdict("top-1", NOT_COMPARED, "no top-1 in the baseline")
    if c.accuracy is None:
        return Verdict("top-1", REGRESSED, f"top-1 missing ({c.accuracy_reason or 'no reason recorded'})")
    drop_tol = tol.max_accuracy_drop
    same_set = (b.correct and c.correct and len(b.correct) == len(c.correct)
                and b.test_fingerprint == c.test_fingerprint)
    if same_set:
        test = mcnemar_exact(b.correct, c.correct)
        n = len(b.correct)
        change = (test.c - test.b) / n  # wrong→right minus right→wrong: the candidate's gain
        verdict = _classify(test.p_value < tol.alpha, change, change, drop_tol)
        detail = (f"{100 * b.accuracy:.2f} → {100 * c.accuracy:.2f} % ({100 * change:+.2f} pp; McNemar: "
                  f"{test.b} right→wrong, {test.c} wrong→right of {n}, p={test.p_value:.2g})")
        p = test.p_value
    else:
        # Different test images: only the intervals can be compared (conservative: they must not overlap).
        change = c.accuracy - b.accuracy
        bl, bh = b.accuracy_ci or (b.accuracy, b.accuracy)
        cl, ch = c.accuracy_ci or (c.accuracy, c.accuracy)
        separated = ch < bl or cl > bh
        verdict = _classify(separated, change, change, drop_tol)
        detail = (f"{100 * b.accuracy:.2f} → {100 * c.accuracy:.2f} % ({100 * change:+.2f} pp; different test "
                  f"sets, 95 % intervals {100 * bl:.1f}–{100 * bh:.1f} vs {100 * cl:.1f}–{100 * ch:.1f})")
        p = None
    advisory = (not tol.gate_across_machines and b.cpu_model != c.cpu_model
                and b.weights_sha256 != c.weights_sha256)
    if advisory and verdict in (REGRESSED, IMPROVED):
        detail += "; advisory: trained on a different CPU type, into different weights"
    return Verdict("top-1", verdict, detail, advisory, 100 * change, None, None, p)


def medians(metric: str, before: float, after: float) -> str:
    """The two runs' medians of a latency metric: speed-ups as ``1.95 → 1.56``, p50s as ``4.1 → 5.2 ms``."""
    if metric == "speedup":
        return f"{before:.2f} → {after:.2f}"
    return f"{before:.3g} → {after:.3g} ms"


@dataclass(frozen=True)
class LatencyTest:
    """One case's latency change, tested but not yet judged: judging needs every case's p-value."""

    what: str  # "speed-up 1.95 → 1.56" or "p50 … → … ms"
    before: float  # the medians behind ``what``, in its unit
    after: float
    advisory: str | None  # why a regression here must not fail the comparison, if it must not
    test: Change


def _latency(b: CaseRecord, c: CaseRecord, tol: Tolerances) -> LatencyTest | Verdict:
    """The case's latency change with its test, or a not-compared verdict saying why not."""
    if tol.latency_metric == "speedup":
        if len(b.base_times_s) < 2 or len(c.base_times_s) < 2 or not b.times_s or not c.times_s:
            return Verdict("latency", NOT_COMPARED, "no paired rounds (stats.data and base_times_s) in both runs")
        before, after = log_ratios(b.base_times_s, b.times_s), log_ratios(c.base_times_s, c.times_s)
        figures = math.exp(float(np.median(before))), math.exp(float(np.median(after)))
        what = f"speed-up {medians(tol.latency_metric, *figures)}"
        advisory = None
        if not tol.gate_across_machines and not _same_machine(b, c):
            advisory = "different machines"
        elif c.is_base:  # the base's "speed-up" is its A/A pair: it checks the harness, not a model
            advisory = "the base against its twin (A/A) measures the timing, not a model"
        spread = _run_spread(b, c, tol)
    else:
        if len(b.times_s) < 2 or len(c.times_s) < 2:
            return Verdict("latency", NOT_COMPARED, "no rounds (stats.data) in both runs")
        if not _same_machine(b, c) and not tol.gate_across_machines:
            return Verdict("latency", NOT_COMPARED, "absolute latency is only compared between runs of one machine")
        # Faster = positive, as for speed-ups: compare minus log-times.
        before, after = -np.log(b.times_s), -np.log(c.times_s)
        figures = 1e3 * float(np.median(b.times_s)), 1e3 * float(np.median(c.times_s))
        what = f"p50 {medians(tol.latency_metric, *figures)}"
        advisory, spread = None, 0.0  # run_spread was calibrated on speed-ups, not on absolute times
    return LatencyTest(what, *figures, advisory, change_test(before, after, b.blocks, c.blocks, run_spread=spread))


def _judge_latency(tests: list[LatencyTest | Verdict], tol: Tolerances) -> list[Verdict]:
    """Every case's latency verdict, judged at once. One comparison tests dozens of cases, so a lone
    p of 0.004 turns up by chance every few comparisons: significance is judged on Benjamini–Hochberg
    adjusted p-values (false discovery rate α over the cases), which a real regression, moving several
    cases at once or one case far, still clears."""
    from scipy.stats import false_discovery_control

    tested = [t for t in tests if isinstance(t, LatencyTest)]
    adjusted = iter(false_discovery_control([t.test.p_value for t in tested], method="bh") if tested else [])
    threshold = math.log1p(tol.latency_tolerance)
    verdicts = []
    for t in tests:
        if isinstance(t, Verdict):
            verdicts.append(t)
            continue
        q = float(next(adjusted))
        verdict = _classify(q < tol.alpha, t.test.low, t.test.high, threshold)
        change, low, high = (math.expm1(v) for v in (t.test.shift, t.test.low, t.test.high))
        detail = (f"{t.what} ({100 * change:+.1f} %, 95 % CI {100 * low:+.1f} to {100 * high:+.1f} %, "
                  f"p={t.test.p_value:.2g}, adjusted {q:.2g})")
        if t.advisory and verdict in (REGRESSED, IMPROVED):
            detail += f"; advisory: {t.advisory}"
        verdicts.append(Verdict("latency", verdict, detail, t.advisory is not None, change, low, high,
                                t.test.p_value, q, t.before, t.after))
    return verdicts


def _run_spread(b: CaseRecord, c: CaseRecord, tol: Tolerances) -> float:
    """Each run's speed-up carries its own run effect (vggprune.stats.widen): the SD the test allows for."""
    if tol.run_spread is not None:
        return tol.run_spread
    recorded = [s for s in (b.run_spread, c.run_spread) if s is not None]
    return max(recorded) if recorded else RUN_SPREAD


def compare_runs(baseline: Run, candidate: Run, tol: Tolerances | None = None) -> Comparison:
    """Match cases by identity and judge each pair; no common case at all is bad input, not a pass."""
    tol = tol or Tolerances()
    base_cases = {c.key(): c for c in baseline.cases}
    cand_cases = {c.key(): c for c in candidate.cases}
    common = [k for k in base_cases if k in cand_cases]
    if not common:
        raise UserError(f"{candidate.path} has no case in common with {baseline.path}; "
                        f"are they runs of the same profile and axes?")
    result = Comparison(tolerances=tol)
    by_order = sorted(common, key=lambda k: row_order(cand_cases[k].case.fields()))
    pairs = [(base_cases[k], cand_cases[k]) for k in by_order]
    latency = _judge_latency([_latency(b, c, tol) for b, c in pairs], tol) if tol.check_latency else []
    machines = set()
    for i, (b, c) in enumerate(pairs):
        result.matched.append(CaseComparison(b, c, [_sizes(b, c), _accuracy(b, c, tol), *latency[i:i + 1]]))
        if not _same_machine(b, c):
            machines.add((b.device, f"{b.device_name} ({b.cpu_model}, {b.threads} threads, {b.memory_format})",
                          f"{c.device_name} ({c.cpu_model}, {c.threads} threads, {c.memory_format})"))
    result.only_baseline = [base_cases[k] for k in base_cases if k not in cand_cases]
    result.only_candidate = [cand_cases[k] for k in cand_cases if k not in base_cases]
    for device, before, after in sorted(machines):
        gate = "judged as one machine (--gate-across-machines)" if tol.gate_across_machines else (
            "latency and retrained-accuracy verdicts are advisory")
        result.notes.append(f"{device}: the runs come from different machines: baseline {before}, "
                            f"candidate {after}; {gate}")
    if not tol.check_latency:
        result.notes.append("latency not checked (--no-latency)")
    return result


def compare_files(baseline: str, candidate: str, tol: Tolerances | None = None) -> Comparison:
    """Both files must be valid results JSON; anything else is a :class:`UserError` (exit 2)."""
    return compare_runs(load_run(baseline), load_run(candidate), tol)


# ---------------------------------------------------------------- output

def _cell(v: Verdict | None) -> str:
    """The verdict and its one key figure; the full evidence is on the flagged case's own line."""
    if v is None:
        return "–"
    if v.outcome == NOT_COMPARED:
        return f"{v.outcome}: {v.detail}"
    mark = " (advisory)" if v.advisory and v.outcome in (REGRESSED, IMPROVED) else ""
    if v.aspect == "top-1" and v.estimate is not None:
        figure = f" {v.estimate:+.2f} pp" + (f", p={v.p_value:.2g}" if v.p_value is not None else "")
    elif v.aspect == "latency" and v.estimate is not None:
        figure = (f" {100 * v.estimate:+.1f} % ({100 * v.low:+.1f}…{100 * v.high:+.1f}), p={v.p_value:.2g}"
                  f" (adj. {v.p_adjusted:.2g})")
    else:
        figure = ""
    return f"{v.outcome}{mark}{figure}"


def render_comparison(cmp: Comparison, fmt: str = "github") -> str:
    """One line per flagged case, the per-case table, the one-sided cases, notes and a verdict line."""
    if fmt == "json":
        return json.dumps({
            "regressions": cmp.regressions,
            "cases": [{"case_id": m.case_id, **m.candidate.case.fields(), "fails": m.fails,
                       "verdicts": [{"verdict": v.outcome,
                                     **{k: getattr(v, k) for k in ("aspect", "detail", "advisory", "estimate", "low",
                                                                   "high", "p_value", "p_adjusted", "before", "after")}}
                                    for v in m.verdicts]} for m in cmp.matched],
            "only_baseline": [c.case_id for c in cmp.only_baseline],
            "only_candidate": [c.case_id for c in cmp.only_candidate],
            "notes": cmp.notes,
        }, indent=2) + "\n"
    parts: list[str] = []
    flagged = [(m, v) for m in cmp.matched for v in m.verdicts if v.outcome == REGRESSED]
    for m, v in flagged:
        parts.append(f"{m.case_id}: {v.aspect} regressed{' (advisory)' if v.advisory else ''}: {v.detail}")
    rows = []
    for m in cmp.matched:
        lat = m.verdict("latency")
        speedups = ""
        if lat is not None and lat.before is not None:
            speedups = medians(cmp.tolerances.latency_metric, lat.before, lat.after)
        rows.append([m.case_id, _cell(m.verdict("sizes")), _cell(m.verdict("top-1")), speedups, _cell(lat)])
    headers = ["case", "params/MACs", "top-1 Δ", f"{cmp.tolerances.latency_metric} before → after",
               "latency change (95 % CI)"]
    parts.append("Cases compared\n\n" + tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True))
    for title, cases in (("only in baseline", cmp.only_baseline), ("only in candidate", cmp.only_candidate)):
        if cases:
            suffix = " (counted as regressions: --fail-on-missing)" if (
                title == "only in baseline" and cmp.tolerances.fail_on_missing) else ""
            parts.append(f"{len(cases)} case(s) {title}{suffix}:\n" + "\n".join(f"  {c.case_id}" for c in cases))
    parts += cmp.notes
    tol = cmp.tolerances
    limits = (f"α {tol.alpha:g}; top-1 drop beyond {100 * tol.max_accuracy_drop:g} pp; "
              + (f"{tol.latency_metric} change beyond {100 * tol.latency_tolerance:g} %" if tol.check_latency
                 else "latency off"))
    parts.append(f"{len(cmp.matched)} case(s) compared, {cmp.regressions} regression(s) ({limits}): "
                 f"{'FAIL' if cmp.regressions else 'OK'}")
    return "\n\n".join(parts) + "\n"


def summary_counts(cmp: Comparison) -> dict[str, Any]:
    """How many cases got each verdict per aspect (for notes and tests)."""
    counts: dict[str, Any] = {}
    for m in cmp.matched:
        for v in m.verdicts:
            counts.setdefault(v.aspect, {}).setdefault(v.outcome, 0)
            counts[v.aspect][v.outcome] += 1
    return counts
