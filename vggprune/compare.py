"""Run-to-run comparison for CI: a baseline run against a candidate run, case by case.

A regression is any of: a params or MACs count that changed at all (pruning is exact, so any
difference is a bug), a top-1 drop larger than the tolerance (or a top-1 the baseline had and the
candidate lost), and, unless latency is off, a candidate p50 more than ``max_latency_ratio`` times
the baseline's. Cases are matched by the contract's identity (which ignores the machine), and cases
found in only one file are reported rather than dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tabulate import tabulate

from vggprune.errors import UserError
from vggprune.report import KEY_FIELDS, Case, Run, case_key, fmt_num, load_run, row_order


@dataclass(frozen=True)
class Tolerances:
    max_accuracy_drop: float = 0.01  # absolute top-1 fraction: 0.01 = one percentage point
    max_latency_ratio: float = 1.5  # candidate p50 / baseline p50
    check_latency: bool = True
    fail_on_missing: bool = False  # a baseline case absent from the candidate counts as a regression

    def __post_init__(self) -> None:
        if not 0 <= self.max_accuracy_drop <= 1:
            raise UserError(f"--max-accuracy-drop is a top-1 fraction in [0, 1], "
                            f"got {self.max_accuracy_drop}")
        if not self.max_latency_ratio > 0:
            raise UserError(f"--max-latency-ratio must be > 0, got {self.max_latency_ratio}")


@dataclass
class Comparison:
    """Per common case: both records and what regressed; plus the cases only one side has."""

    matched: list[tuple[Case, Case, list[str]]] = field(default_factory=list)
    only_baseline: list[Case] = field(default_factory=list)
    only_candidate: list[Case] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tolerances: Tolerances = field(default_factory=Tolerances)

    @property
    def regressions(self) -> int:
        missing = len(self.only_baseline) if self.tolerances.fail_on_missing else 0
        return sum(1 for _, _, problems in self.matched if problems) + missing

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0


def _problems(base: Case, cand: Case, tol: Tolerances) -> list[str]:
    """Why ``cand`` is worse than ``base``; empty when it is within every tolerance."""
    problems = []
    for f in ("params", "macs"):
        if cand[f] != base[f]:
            problems.append(f"{f} {base[f]:,} → {cand[f]:,}")
    if base["accuracy"] is not None:
        if cand["accuracy"] is None:
            problems.append(f"top-1 missing ({cand['accuracy_reason'] or 'no reason recorded'})")
        elif base["accuracy"] - cand["accuracy"] > tol.max_accuracy_drop + 1e-12:
            drop = 100 * (base["accuracy"] - cand["accuracy"])
            problems.append(f"top-1 −{drop:.2f} pp > {100 * tol.max_accuracy_drop:g}")
    if tol.check_latency and base["latency_p50_ms"] and cand["latency_p50_ms"] is not None:
        ratio = cand["latency_p50_ms"] / base["latency_p50_ms"]
        if ratio > tol.max_latency_ratio:
            problems.append(f"p50 ×{ratio:.2f} > {tol.max_latency_ratio:g}")
    return problems


def compare_runs(baseline: Run, candidate: Run, tol: Tolerances | None = None) -> Comparison:
    """Match cases by identity and judge each pair; no common case at all is bad input, not a pass."""
    tol = tol or Tolerances()
    base_cases = {case_key(c): c for c in baseline.cases}
    cand_cases = {case_key(c): c for c in candidate.cases}
    common = [k for k in base_cases if k in cand_cases]
    if not common:
        raise UserError(f"{candidate.path} has no case in common with {baseline.path}; "
                        f"are they runs of the same profile and axes?")
    result = Comparison(tolerances=tol)
    by_order = sorted(common, key=lambda k: row_order(dict(zip(KEY_FIELDS, k))))
    hardware, untimed = set(), 0
    for key in by_order:
        b, c = base_cases[key], cand_cases[key]
        result.matched.append((b, c, _problems(b, c, tol)))
        if b["device_name"] != c["device_name"]:
            hardware.add((b["device"], f"hardware: baseline {b['device_name']!r}", f"candidate {c['device_name']!r}"))
        if b.get("memory_format") != c.get("memory_format"):
            hardware.add((b["device"], f"memory formats: baseline {b.get('memory_format')!r}",
                          f"candidate {c.get('memory_format')!r}"))
        untimed += not (b["latency_p50_ms"] and c["latency_p50_ms"] is not None)
    result.only_baseline = [base_cases[k] for k in base_cases if k not in cand_cases]
    result.only_candidate = [cand_cases[k] for k in cand_cases if k not in base_cases]
    for device, before, after in sorted(hardware):
        result.notes.append(f"{device} latency compares different {before}, {after}")
    if not tol.check_latency:
        result.notes.append("latency not checked (--no-latency)")
    elif untimed:
        result.notes.append(f"latency not compared for {untimed} case(s): p50 missing in one of the files")
    return result


def _case_label(c: Case) -> list[str]:
    return [c["profile"], c["model"], c["method"], c["scope"], c["criterion"], str(c["round_to"]),
            fmt_num(c["rate"], "rate"), c["device"], str(c["batch_size"])]


def _change(b: Any, c: Any, kind: str) -> str:
    """``x`` when equal, else ``x → y``."""
    return fmt_num(b, kind) if b == c else f"{fmt_num(b, kind)} → {fmt_num(c, kind)}"


def _drop_constant(headers: list[str], rows: list[list[str]], keep_from: int) -> tuple[list[str], list, str]:
    """Lift identity columns with one value for every row into a caption line, to keep the table narrow."""
    constant = [i for i in range(keep_from) if rows and len({r[i] for r in rows}) == 1]
    caption = ", ".join(f"{headers[i]} {rows[0][i]}" for i in constant)
    keep = [i for i in range(len(headers)) if i not in constant]
    return [headers[i] for i in keep], [[r[i] for i in keep] for r in rows], caption


def render_comparison(cmp: Comparison, fmt: str = "github") -> str:
    """The delta table, the one-sided cases, notes and a verdict line."""
    if fmt == "json":
        return json.dumps({
            "regressions": cmp.regressions,
            "cases": [{"case_id": c["case_id"], **{k: c[k] for k in KEY_FIELDS}, "problems": problems,
                       "baseline": {k: b[k] for k in ("params", "macs", "accuracy", "latency_p50_ms")},
                       "candidate": {k: c[k] for k in ("params", "macs", "accuracy", "latency_p50_ms")}}
                      for b, c, problems in cmp.matched],
            "only_baseline": [c["case_id"] for c in cmp.only_baseline],
            "only_candidate": [c["case_id"] for c in cmp.only_candidate],
            "notes": cmp.notes,
        }, indent=2) + "\n"
    ident = ["profile", "model", "method", "scope", "criterion", "round_to", "rate", "device", "batch"]
    headers = ident + ["params", "MMACs", "top-1 %", "Δ top-1 pp", "p50 ms", "p50 ratio", "status"]
    rows = []
    for b, c, problems in cmp.matched:
        delta_acc = (100 * (c["accuracy"] - b["accuracy"])
                     if b["accuracy"] is not None and c["accuracy"] is not None else None)
        ratio = (c["latency_p50_ms"] / b["latency_p50_ms"]
                 if b["latency_p50_ms"] and c["latency_p50_ms"] is not None else None)
        rows.append(_case_label(c) + [
            _change(b["params"], c["params"], "int"), _change(b["macs"], c["macs"], "mmacs"),
            _change(b["accuracy"], c["accuracy"], "pct"), "–" if delta_acc is None else f"{delta_acc:+.2f}",
            f"{fmt_num(b['latency_p50_ms'], 'ms')} → {fmt_num(c['latency_p50_ms'], 'ms')}",
            fmt_num(ratio, "x"), "REGRESSION: " + "; ".join(problems) if problems else "ok"])
    headers, rows, caption = _drop_constant(headers, rows, len(ident))
    numeric = {"rate", "batch", "round_to", "params", "MMACs", "top-1 %", "Δ top-1 pp", "p50 ms", "p50 ratio"}
    parts = [f"Cases compared ({caption})" if caption else "Cases compared",
             tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True,
                      colalign=["right" if h in numeric else "left" for h in headers])]
    for title, cases in (("only in baseline", cmp.only_baseline), ("only in candidate", cmp.only_candidate)):
        if cases:
            suffix = " (counted as regressions: --fail-on-missing)" if (
                title == "only in baseline" and cmp.tolerances.fail_on_missing) else ""
            listing = "\n".join(f"  {c['case_id']}" for c in cases)
            parts.append(f"{len(cases)} case(s) {title}{suffix}:\n{listing}")
    parts += cmp.notes
    tol = cmp.tolerances
    limits = f"max top-1 drop {100 * tol.max_accuracy_drop:g} pp, " + (
        f"max p50 ratio {tol.max_latency_ratio:g}" if tol.check_latency else "latency off")
    parts.append(f"{len(cmp.matched)} case(s) compared, {cmp.regressions} regression(s) ({limits}): "
                 f"{'FAIL' if cmp.regressions else 'OK'}")
    return "\n\n".join(parts) + "\n"


def compare_files(baseline: str, candidate: str, tol: Tolerances | None = None) -> Comparison:
    """Both files must be valid contract JSON; anything else is a :class:`UserError` (exit 2)."""
    return compare_runs(load_run(baseline), load_run(candidate), tol)
