"""Turn pytest-benchmark JSON runs into report rows and tables: load → merge → rows → tables.

The harness's ``--benchmark-json`` output is the only input, read as typed case records
(:mod:`vggprune.results.record`). Several runs (a CPU run from a laptop and a GPU run from a server) merge
into one set of cases; each case is then tagged with a *device label* that tells apart the same device
type measured on different machines, so a speed-up is only ever computed between numbers from the
same device of the same machine. Every published number carries its uncertainty: top-1 its 95 %
Wilson interval, latency its interquartile range, speed-up the 95 % CI of its paired rounds; noisy
and contended cases are marked.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tabulate import tabulate

from vggprune.atomic import write_atomic
from vggprune.errors import UserError
from vggprune.identity import BASE_METHOD, DEFAULT_RUNTIME, KEY_FIELDS, RUNTIME_ORDER, Case
from vggprune.results.record import CaseRecord, Run, load_run, load_runs
from vggprune.stats import ratio_of_medians

FORMATS = ("github", "plain", "csv", "json")
BASE_UNLEARNED = "base never learned"
# The evidence fields stay in the run's JSON; report rows carry summaries, plus the case's own rounds
# for the figures that compare two cases timed apart (never written out: CSV_FIELDS leaves them out).
_EVIDENCE = ("base_times_s", "correct")

Tagged = dict[str, Any]  # a record as a dict (no evidence strings), tagged with device_label, node and source
Row = dict[str, Any]

__all__ = ["FORMATS", "KEY_FIELDS", "Run", "load_run", "load_runs", "load_rows", "build_rows", "merge_runs"]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def case_key(case: Tagged) -> tuple:
    """The identity of a case (see vggprune.identity)."""
    return Case.from_fields(case).key()


def _as_case(record: CaseRecord) -> Tagged:
    data = asdict(record)
    for name in _EVIDENCE:
        data.pop(name)
    return data


# ---------------------------------------------------------------- merge

def _device_labels(runs: Sequence[Run]) -> dict[tuple[str, str, str], str]:
    """(device, device_name, node) → a short column label.

    Runs from one machine keep plain names (``cpu``, ``cuda``); once runs from several machines are
    merged every column is ``device@node``, so a GPU box's cuda column says which box it was and
    numbers from different hardware never share a column.
    """
    seen: dict[str, list[tuple[str, str, str]]] = {}
    for run in runs:
        for case in run.cases:
            ident = (case.device, str(case.device_name), run.node)
            if ident not in seen.setdefault(case.device, []):
                seen[case.device].append(ident)
    machines = {ident[2] for idents in seen.values() for ident in idents}
    labels: dict[tuple[str, str, str], str] = {}
    for device, idents in seen.items():
        for i, ident in enumerate(idents):
            if len(idents) == 1 and len(machines) == 1:
                labels[ident] = device
            else:
                at_node = f"{device}@{ident[2]}"
                clash = sum(1 for other in idents if other[2] == ident[2]) > 1
                labels[ident] = f"{at_node}#{i + 1}" if clash else at_node
    return labels


def merge_runs(runs: Sequence[Run]) -> list[Tagged]:
    """All cases of all runs, each tagged with ``device_label``, ``node`` and ``source``.

    The same case (same identity, same device of the same machine) in two files is ambiguous and
    an error rather than a silent pick of one of them.
    """
    labels = _device_labels(runs)
    merged: dict[tuple, Tagged] = {}
    for run in runs:
        for record in run.cases:
            label = labels[(record.device, str(record.device_name), run.node)]
            tagged = {**_as_case(record), "device_label": label, "node": run.node, "source": run.path}
            key = (*record.key(), label)
            if key in merged:
                raise UserError(f"case {record.case_id} on {label} is in both {merged[key]['source']} and "
                                f"{run.path}; pass each run once")
            merged[key] = tagged
    return list(merged.values())


# ---------------------------------------------------------------- rows

_SCOPE_ORDER = {"none": 0, "fc": 1, "conv": 2, "all": 3}
_CRITERION_ORDER = {"none": 0, "l2": 1, "l1": 2, "random": 3}
_RUNTIME_ORDER = {name: i for i, name in enumerate(RUNTIME_ORDER)}


def row_order(row: Row) -> tuple:
    """Base first, then method, scope, criterion, round_to, rate, runtime: how a reader scans a sweep."""
    return (row["profile"], row["model"], row["batch_size"], row["method"] != BASE_METHOD, row["method"],
            _SCOPE_ORDER.get(row["scope"], 9), row["scope"], _CRITERION_ORDER.get(row["criterion"], 9),
            row["criterion"], row["round_to"], row["rate"], _RUNTIME_ORDER.get(row["runtime"], 9), row["runtime"])


def device_order(labels: Iterable[str], rows: Sequence[Row]) -> list[str]:
    """CPU labels first, then accelerators, each in order of first appearance."""
    device_of = {r["device_label"]: r["device"] for r in rows}
    unique = list(dict.fromkeys(labels))
    return sorted(unique, key=lambda lab: (device_of.get(lab) != "cpu", unique.index(lab)))


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if _is_number(num) and _is_number(den) and den > 0 else None


def _unpaired_speedup(slow: Tagged | None, fast: Tagged) -> tuple[float | None, list[float] | None]:
    """``slow``'s median time over ``fast``'s, with its 95 % CI, for two cases timed apart."""
    if slow is None or not slow["times_s"] or not fast["times_s"]:
        return None, None
    ratio, ci = ratio_of_medians(slow["times_s"], fast["times_s"], slow["blocks"], fast["blocks"])
    return ratio, list(ci)


def cpu_partners(cases: Sequence[Tagged]) -> dict[str, str]:
    """Accelerator label → the CPU label it is compared with: the same machine's CPU, else the only CPU."""
    cpus = {c["device_label"]: c["node"] for c in cases if c["device"] == "cpu"}
    partners = {}
    for c in cases:
        if c["device"] == "cpu" or c["device_label"] in partners:
            continue
        same_node = [lab for lab, node in cpus.items() if node == c["node"]]
        if len(same_node) == 1:
            partners[c["device_label"]] = same_node[0]
        elif not same_node and len(cpus) == 1:
            partners[c["device_label"]] = next(iter(cpus))
    return partners


def _overlap(a: Sequence[float] | None, b: Sequence[float] | None) -> bool | None:
    if not a or not b:
        return None
    return a[0] <= b[1] and b[0] <= a[1]


def accuracy_vs_base(case: Tagged, base: Tagged | None) -> str | None:
    """``n.s.`` when the case's 95 % interval overlaps the base's (too few images to tell them apart),
    else ``lower`` / ``higher``; ``base never learned`` when its base did not beat chance (nothing to
    compare against); None for a base that learned or without intervals."""
    if case.get("base_learned") is False:
        return BASE_UNLEARNED
    if base is None or case["method"] == BASE_METHOD:
        return None
    overlap = _overlap(case["accuracy_ci"], base["accuracy_ci"])
    if overlap is None:
        return None
    if overlap:
        return "n.s."
    return "lower" if case["accuracy"] < base["accuracy"] else "higher"


def build_rows(cases: Sequence[Tagged]) -> list[Row]:
    """One tidy row per case: its record's summaries plus what needs another case to compute.

    ``measured_speedup`` and its CI come from the case's own paired rounds (recorded by the harness);
    ``speedup_ratio`` is measured over theoretical (1.0 = the MAC count's promise is kept), with
    the speed-up's CI scaled by the same exact constant;
    ``deploy_speedup`` is the eager base's median time over this one's (a runtime's gain on top of
    pruning) and ``vs_cpu_speedup`` (accelerator rows only) the partner CPU's over this device's for
    the same case: both compare two timing windows, so their CIs are unpaired (:func:`ratio_of_medians`).
    """
    by_key = {(*case_key(c), c["device_label"]): c for c in cases}
    partners = cpu_partners(cases)

    def same_but(c: Tagged, **changes) -> Tagged | None:
        ident = dict(zip(KEY_FIELDS, case_key(c)))
        ident.update(changes)
        return by_key.get((*Case.from_fields(ident).key(), c["device_label"]))

    rows = []
    for c in cases:
        base = same_but(c, method=BASE_METHOD, scope="none", criterion="none", round_to=1, rate=0.0)
        eager_base = same_but(c, method=BASE_METHOD, scope="none", criterion="none", round_to=1, rate=0.0,
                              runtime=DEFAULT_RUNTIME)
        partner = partners.get(c["device_label"])
        cpu_case = None
        if partner:
            cpu_key = tuple("cpu" if k == "device" else v for k, v in zip(KEY_FIELDS, case_key(c)))
            cpu_case = by_key.get((*cpu_key, partner))
        deploy, deploy_ci = _unpaired_speedup(eager_base, c) if c["runtime"] != DEFAULT_RUNTIME else (None, None)
        vs_cpu, vs_cpu_ci = _unpaired_speedup(cpu_case, c)
        rows.append({
            **c,
            "rate": round(float(c["rate"]), 6),
            "params_pct": 100.0 * c["params"] / c["base_params"],
            "accuracy_vs_base": accuracy_vs_base(c, base),
            "speedup_ratio": _ratio(c["measured_speedup"], c["theoretical_speedup"]),
            # theoretical is exact (MAC counts), so the ratio's CI is the speed-up's, scaled
            "speedup_ratio_ci": ([_ratio(v, c["theoretical_speedup"]) for v in c["measured_speedup_ci"]]
                                 if c["measured_speedup_ci"] and c["theoretical_speedup"] else None),
            "deploy_speedup": deploy,
            "deploy_speedup_ci": deploy_ci,
            "vs_cpu_device": partner if cpu_case else None,
            "vs_cpu_speedup": vs_cpu,
            "vs_cpu_speedup_ci": vs_cpu_ci,
        })
    order = device_order((r["device_label"] for r in rows), rows)
    return sorted(rows, key=lambda r: (row_order(r), order.index(r["device_label"])))


def load_rows(paths: Sequence[str | os.PathLike]) -> tuple[list[Run], list[Row]]:
    """The whole input side in one call: files → checked runs → merged cases → rows."""
    runs = load_runs(paths)
    return runs, build_rows(merge_runs(runs))


# ---------------------------------------------------------------- tables

def fmt_num(value: float | None, kind: str) -> str:
    """Format for reading, not for machines (CSV/JSON keep full precision); missing is an en dash."""
    if value is None:
        return "–"
    if kind == "ms":
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    if kind == "x":
        return f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"
    if kind == "pct":
        return f"{100 * value:.2f}"
    if kind == "pct1":
        return f"{value:.1f}"
    if kind == "acc":
        return f"{100 * value:.1f}"
    if kind == "int":
        return f"{value:,}"
    if kind == "ips":
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
    if kind == "mmacs":
        return f"{value / 1e6:,.2f}"
    if kind == "rate":
        return f"{value:g}"
    if kind == "mb":
        return f"{value:.2f}" if value < 10 else f"{value:,.0f}"
    return f"{value:.1f}"


def with_interval(value: float | None, interval: Sequence[float] | None, kind: str) -> str:
    """``97.2 (95.0–98.5)``: a point estimate and its interval in the same format."""
    if value is None:
        return "–"
    if not interval:
        return fmt_num(value, kind)
    return f"{fmt_num(value, kind)} ({fmt_num(interval[0], kind)}–{fmt_num(interval[1], kind)})"


SAME_MODEL = "same model"


def marks(row: Row) -> str:
    """Why a latency cell should not be taken as fact: ``noisy`` (IQR/median > 10 %), ``contended``; and
    ``same model`` when it is another case's timing (``timed_with``: the same model, timed once)."""
    flags = [f for f in ("noisy", "contended") if row.get(f)]
    return ", ".join(flags + ([SAME_MODEL] if row.get("timed_with") else []))


@dataclass(frozen=True)
class Table:
    """A titled table ready for tabulate; ``numeric`` marks right-aligned columns.

    ``fixed`` holds the columns left out because every pruned row had the same value and the base rows
    held their own (:data:`BASE_CELLS`: scope and criterion ``none``, no verdict); the caption names them,
    so a reader loses nothing and the table stays narrow enough for a terminal.
    """

    title: str
    headers: list[str]
    rows: list[list[str]]
    numeric: list[bool]
    fixed: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def caption(self) -> str:
        same = ", ".join(f"{h} {v or '–'}" for h, v in self.fixed.items())
        first = [f"Every pruned row: {same}" + ("" if same.endswith(".") else ".")] if same else []
        return " ".join(first + list(self.notes))

    def render(self, fmt: str = "github") -> str:
        align = ["right" if n else "left" for n in self.numeric]
        return tabulate(self.rows, headers=self.headers, tablefmt=fmt, disable_numparse=True, colalign=align)


# what a base row holds in a column a pruned case fills: a column may be dropped when these differ
BASE_CELLS = {"scope": "none", "criterion": "none", "vs base": ""}
_MARKS = "marks"


def _table(title: str, columns: Sequence[tuple[str, bool]], lines: Sequence[tuple[bool, list[str]]],
           note: str = "") -> Table:
    """Build a table from (header, numeric) columns and (is_base, cells) lines, moving out what repeats.

    A column in :data:`BASE_CELLS` whose pruned rows all agree (and whose base rows hold the base's
    own value there) goes to the caption; an empty ``marks`` column goes too, with a sentence saying so.
    """
    headers = [h for h, _ in columns]
    fixed: dict[str, str] = {}
    notes = [note] if note else []
    drop = set()
    pruned = [cells for is_base, cells in lines if not is_base]
    for i, h in enumerate(headers):
        if h == _MARKS and all(not cells[i] for _, cells in lines):
            drop.add(i)
            notes.append("No latency here is marked noisy or contended.")
        elif h in BASE_CELLS and pruned and len({cells[i] for cells in pruned}) == 1 and all(
                cells[i] == BASE_CELLS[h] for is_base, cells in lines if is_base):
            drop.add(i)
            fixed[h] = pruned[0][i]
    keep = [i for i in range(len(headers)) if i not in drop]
    return Table(title=title, headers=[headers[i] for i in keep], numeric=[columns[i][1] for i in keep],
                 rows=[[cells[i] for i in keep] for _, cells in lines], fixed=fixed, notes=tuple(notes))


def _row_id(r: Row) -> tuple:
    return (r["method"], r["scope"], r["criterion"], r["round_to"], r["rate"], r["runtime"])  # runtime last


def _primary_runtime(rows: Sequence[Row]) -> str:
    runtimes = {r["runtime"] for r in rows}
    return DEFAULT_RUNTIME if DEFAULT_RUNTIME in runtimes or not runtimes else sorted(
        runtimes, key=lambda rt: _RUNTIME_ORDER.get(rt, 9))[0]


def _ident(show_round: bool) -> list[tuple[str, bool]]:
    return [("method", False), ("scope", False), ("criterion", False)] + (
        [("round_to", True)] if show_round else []) + [("rate", True)]


def _ident_cells(r: Row, show_round: bool) -> list[str]:
    return [r["method"], r["scope"], r["criterion"]] + ([str(r["round_to"])] if show_round else []) + [
        fmt_num(r["rate"], "rate")]


def model_tables(rows: Sequence[Row]) -> list[Table]:
    """Per (profile, model) in the primary runtime: a size table and an accuracy table, each case once.

    Neither depends on batch size, so they are not repeated per batch; they are two tables rather
    than one so that each stays narrower than a terminal with every interval kept.
    """
    primary = _primary_runtime(rows)
    rows = [r for r in rows if r["runtime"] == primary]
    show_round = len({r["round_to"] for r in rows}) > 1
    show_size = any(r["size_mb"] is not None for r in rows)
    show_before = any(r["accuracy_before_finetune"] is not None for r in rows)
    runtime = "" if primary == DEFAULT_RUNTIME else f", runtime {primary}"
    tables = []
    for group in sorted({(r["profile"], r["model"]) for r in rows}):
        grows = sorted((r for r in rows if (r["profile"], r["model"]) == group),
                       key=lambda r: row_order({**r, "batch_size": 0}))  # each case where a sweep puts it
        for kind in ("Size", "Accuracy"):
            if kind == "Size":
                columns = [("params", True), ("% of base", True), ("MMACs", True), ("theor. ×", True)] + (
                    [("MB", True)] if show_size else [])

                def cells(r: Row) -> list[str]:
                    return [fmt_num(r["params"], "int"), fmt_num(r["params_pct"], "pct1"),
                            fmt_num(r["macs"], "mmacs"), fmt_num(r["theoretical_speedup"], "x")] + (
                        [fmt_num(r["size_mb"], "mb")] if show_size else [])
            else:
                columns = [("top-1 % (95 % CI)", True)] + ([("before FT %", True)] if show_before else []) + [
                    ("vs base", False)]

                def cells(r: Row) -> list[str]:
                    return [with_interval(r["accuracy"], r["accuracy_ci"], "acc")] + (
                        [fmt_num(r["accuracy_before_finetune"], "acc")] if show_before else []) + [
                        r["accuracy_vs_base"] or ""]
            lines, split = _model_lines(grows, show_round, cells)
            title = f"{kind}: profile {group[0]}, model {group[1]}{runtime}"
            tables.append(_table(title, _ident(show_round) + columns + ([("measured on", False)] if split else []),
                                 lines))
    return tables


def _model_lines(rows: Sequence[Row], show_round: bool, cells) -> tuple[list[tuple[bool, list[str]]], bool]:
    """One line per case for what does not depend on batch size or device (size, top-1).

    Copies that disagree (runs merged from machines that trained their own weights) each keep a
    line that names where it was measured (and the flag says so), rather than one being picked silently.
    """
    variants: dict[tuple, dict[tuple, list[str]]] = {}
    for r in rows:
        if r["accuracy"] is None and any(o["accuracy"] is not None for o in rows if _row_id(o) == _row_id(r)):
            continue  # a device that did not evaluate top-1 adds nothing
        key = (_row_id(r), tuple(_ident_cells(r, show_round)))
        where = variants.setdefault(key, {}).setdefault(tuple(cells(r)), [])
        if r["device_label"] not in where:
            where.append(r["device_label"])
    split = any(len(v) > 1 for v in variants.values())
    return [(key[0][0] == BASE_METHOD, [*key[1], *values] + ([", ".join(where)] if split else []))
            for key, by_cells in variants.items() for values, where in by_cells.items()], split


def _latency_cells(r: Row) -> list[str]:
    iqr = [r["latency_q1_ms"], r["latency_q3_ms"]] if r["latency_q1_ms"] is not None else None
    return [with_interval(r["latency_p50_ms"], iqr, "ms"),
            with_interval(r["measured_speedup"], r["measured_speedup_ci"], "x"),
            with_interval(r["speedup_ratio"], r["speedup_ratio_ci"], "x"), marks(r)]


LATENCY_COLUMNS = [("p50 ms (IQR)", True), ("× (95 % CI)", True), ("×/theor.", True), (_MARKS, False)]


def latency_tables(rows: Sequence[Row]) -> list[Table]:
    """Per (profile, model, batch size, device) in the primary runtime: latency and paired speed-ups.

    One device per table, so that a merged CPU + GPU report grows longer, never wider; a GPU's
    speed-up over its CPU has its own table (:func:`vs_cpu_tables`).
    """
    primary = _primary_runtime(rows)
    rows = [r for r in rows if r["runtime"] == primary]
    show_round = len({r["round_to"] for r in rows}) > 1
    runtime = "" if primary == DEFAULT_RUNTIME else f", runtime {primary}"
    tables = []
    for group in sorted({(r["profile"], r["model"], r["batch_size"]) for r in rows}):
        grows = [r for r in rows if (r["profile"], r["model"], r["batch_size"]) == group]
        for d in device_order((r["device_label"] for r in grows), grows):
            lines = [(r["method"] == BASE_METHOD, _ident_cells(r, show_round) + _latency_cells(r))
                     for r in grows if r["device_label"] == d]
            title = f"Latency: profile {group[0]}, model {group[1]}, batch size {group[2]}, {d}{runtime}"
            tables.append(_table(title, _ident(show_round) + LATENCY_COLUMNS, lines))
    return tables


def vs_cpu_tables(rows: Sequence[Row]) -> list[Table]:
    """Per accelerator and batch size: its CPU partner's p50 over its own, with an unpaired 95 % CI."""
    primary = _primary_runtime(rows)
    rows = [r for r in rows if r["runtime"] == primary and r["vs_cpu_speedup"] is not None]
    show_round = len({r["round_to"] for r in rows}) > 1
    tables = []
    for group in sorted({(r["profile"], r["model"], r["batch_size"]) for r in rows}):
        grows = [r for r in rows if (r["profile"], r["model"], r["batch_size"]) == group]
        for d in device_order((r["device_label"] for r in grows), grows):
            drows = [r for r in grows if r["device_label"] == d]
            partner = drows[0]["vs_cpu_device"]
            lines = [(r["method"] == BASE_METHOD, _ident_cells(r, show_round) + [
                with_interval(r["vs_cpu_speedup"], r["vs_cpu_speedup_ci"], "x")]) for r in drows]
            title = f"{d} vs {partner}: profile {group[0]}, model {group[1]}, batch size {group[2]}"
            tables.append(_table(title, _ident(show_round) + [(f"{d} vs {partner} × (95 % CI)", True)], lines,
                                 note=f"{partner}'s p50 over {d}'s for the same case, timed apart."))
    return tables


def summary_tables(rows: Sequence[Row]) -> list[Table]:
    """The main summary in the primary runtime: size and accuracy per model, then latency per batch
    size and device, then accelerators against their CPU. Other runtimes: :func:`runtime_tables`."""
    return [*model_tables(rows), *latency_tables(rows), *vs_cpu_tables(rows)]


def runtime_tables(rows: Sequence[Row]) -> list[Table]:
    """Per (profile, model, batch size, device): the models timed in more than one runtime, in two tables.

    *Runtimes* holds each runtime's latency and its speed-up against the base *in the same runtime*
    (paired); *Deploying* holds the size shipped, how closely its outputs matched eager and the gain
    against the base in eager PyTorch (what pruning and the runtime buy together).
    """
    tables = []
    if len({r["runtime"] for r in rows}) < 2:
        return tables
    for group in sorted({(r["profile"], r["model"], r["batch_size"], r["device_label"]) for r in rows}):
        grows = [r for r in rows if (r["profile"], r["model"], r["batch_size"], r["device_label"]) == group]
        multi = {k for k in {_row_id(r)[:-1] for r in grows}
                 if len({r["runtime"] for r in grows if _row_id(r)[:-1] == k}) > 1}
        grows = sorted((r for r in grows if _row_id(r)[:-1] in multi),
                       key=lambda r: (r["method"] != BASE_METHOD, row_order(r)))
        if not grows:
            continue
        show_round = len({r["round_to"] for r in grows}) > 1
        ident = _ident(show_round) + [("runtime", False)]
        where = f"profile {group[0]}, model {group[1]}, batch size {group[2]}, {group[3]}"
        timed = [(r["method"] == BASE_METHOD, _ident_cells(r, show_round) + [r["runtime"]] + _latency_cells(r))
                 for r in grows]
        tables.append(_table(f"Runtimes: {where}", ident + LATENCY_COLUMNS, timed,
                             note="`×` against the base in the same runtime."))
        shipped = []
        for r in grows:
            agree = "reference" if r["runtime"] == DEFAULT_RUNTIME else (
                "–" if r["runtime_agreement"] is None else f"{100 * r['runtime_agreement']:.2f} %")
            diff = "" if r["runtime_max_rel_diff"] is None else f"{r['runtime_max_rel_diff']:.1e}"
            shipped.append((r["method"] == BASE_METHOD, _ident_cells(r, show_round) + [
                r["runtime"], fmt_num(r["size_mb"], "mb"), agree, diff, _deploy_cell(r)]))
        columns = [("MB", True), ("top-1 agrees", True), ("max rel. Δ", True), ("× vs eager base", True)]
        tables.append(_table(f"Deploying: {where}", ident + columns, shipped,
                             note="`top-1 agrees`: share of test images whose top-1 matches eager's; "
                                  "`max rel. Δ`: largest relative logit difference; `× vs eager base` (95 % CI): "
                                  "the eager base's p50 over this one's."))
    return tables


def _deploy_cell(r: Row) -> str:
    """Against the eager base: 1.00 for itself; an eager case's own paired speed-up (the better
    evidence: same timing window); another runtime's unpaired ratio of medians."""
    if r["runtime"] != DEFAULT_RUNTIME:
        return with_interval(r["deploy_speedup"], r["deploy_speedup_ci"], "x")
    if r["method"] == BASE_METHOD:
        return "1.00"
    return with_interval(r["measured_speedup"], r["measured_speedup_ci"], "x")


def devices_tables(runs: Sequence[Run], rows: Sequence[Row]) -> list[Table]:
    """Which hardware and software each device label stands for, in two tables so that a long CPU
    name still fits a terminal."""
    hardware, software, seen = [], [], set()
    order = device_order((r["device_label"] for r in rows), rows)
    for r in sorted(rows, key=lambda r: order.index(r["device_label"])):
        if r["device_label"] in seen:
            continue
        seen.add(r["device_label"])
        info = next(run.machine_info for run in runs if run.path == r["source"])
        versions = info.get("vggprune") if isinstance(info.get("vggprune"), dict) else {}
        hardware.append([r["device_label"], str(r["device_name"]), r["node"], str(r["threads"]), r["dtype"],
                         str(r["memory_format"] or "?")])
        software.append([r["device_label"], str(versions.get("torch", "?")), str(versions.get("torch_pruning", "?")),
                         Path(r["source"]).name])
    hw = ["device", "name", "machine", "threads", "dtype", "memory format"]
    sw = ["device", "torch", "torch-pruning", "run file"]
    return [Table(title="Devices", headers=hw, rows=hardware, numeric=[False] * len(hw)),
            Table(title="Software", headers=sw, rows=software, numeric=[False] * len(sw))]


def accuracy_notes(rows: Sequence[Row]) -> list[str]:
    """Why some top-1 cells are empty, once per distinct reason; and which cases' base never learned."""
    reasons: dict[str, int] = {}
    for r in rows:
        if r["accuracy"] is None:
            reason = r["accuracy_reason"] or "no reason recorded"
            reasons[reason] = reasons.get(reason, 0) + 1
    notes = [f"top-1 missing for {n} case(s): {reason}" for reason, n in reasons.items()]
    unlearned = [r for r in rows if r.get("base_learned") is False]
    if unlearned:
        notes.append(f"{len(unlearned)} case(s) are marked `{BASE_UNLEARNED}`: their base's top-1 did not beat "
                     f"chance (the largest class's share of the test split), so neither their accuracy nor "
                     f"their speed-up says anything about pruning")
    return notes


def timing_notes(rows: Sequence[Row]) -> list[str]:
    """How many latency figures are marked, and why; nothing when every case was quiet and steady."""
    timed = [r for r in rows if r["latency_p50_ms"] is not None]
    notes = []
    contended = [r for r in timed if r["contended"]]
    noisy = [r for r in timed if r["noisy"]]
    if contended:
        worst = max(r["other_cpu_cores"] or 0 for r in contended)
        notes.append(f"{len(contended)} of {len(timed)} case(s) were timed while other processes used the CPU "
                     f"(up to {worst:.2f} cores; marked `contended`): their latency is not a quiet machine's")
    if noisy:
        notes.append(f"{len(noisy)} of {len(timed)} case(s) are `noisy`: IQR/median above 10 %")
    shared = [r for r in timed if r.get("timed_with")]
    if shared:
        notes.append(f"{len(shared)} of {len(timed)} case(s) are marked `{SAME_MODEL}`: the same model (weights and "
                     f"layout) as another case in the same runtime, device and batch size, as by-hand and "
                     f"torch-pruning are when they keep the same units; it was timed once, and both rows show "
                     f"that timing (`timed_with` in the JSON names the case timed)")
    spreads = sorted({r["run_spread"] for r in timed if r["run_spread"]})
    if spreads:
        notes.append(f"`×` intervals allow for a between-run spread of {' / '.join(map(str, spreads))} "
                     f"(log-scale SD, `--run-spread`): they hold what another run on this machine would give, "
                     f"not only this run's rounds")
    return notes


LEGEND = ("top-1 with its 95 % Wilson interval; `vs base`: `n.s.` = the interval overlaps the base's (the test "
          "split is too small to tell them apart). Latency: p50 per batch with its interquartile range. `×`: "
          "speed-up against the base timed in the same shuffled rounds, median of per-round ratios with its "
          "95 % CI; `×/theor.`: that speed-up over the MAC count's, with the same CI scaled.")


def report_tables(runs: Sequence[Run], rows: Sequence[Row]) -> list[Table]:
    """Every table of the human summary, in reading order."""
    return [*summary_tables(rows), *runtime_tables(rows), *devices_tables(runs, rows)]


TEXT_WIDTH = 110  # prose lines of the summary: a terminal's 120 columns and a code host's page both hold them


def _wrap(text: str, bullet: str = "") -> str:
    return textwrap.fill(text, TEXT_WIDTH, initial_indent=bullet, subsequent_indent=" " * len(bullet),
                         break_on_hyphens=False)


def render_text(runs: Sequence[Run], rows: Sequence[Row], fmt: str = "github") -> str:
    """The human summary: the tables, each with its caption, then any accuracy or timing notes."""
    md = fmt == "github"
    parts = []
    for table in report_tables(runs, rows):
        parts.append(f"### {table.title}" if md else f"{table.title}:")
        if table.caption:
            parts.append(_wrap(table.caption))
        parts.append(table.render(fmt))
    notes = accuracy_notes(rows) + timing_notes(rows)
    if notes:
        parts.append("\n".join(_wrap(n, "- " if md else "") for n in notes))
    return "\n\n".join(parts) + "\n"


CSV_FIELDS: tuple[str, ...] = (
    *KEY_FIELDS, "device_label", "device_name", "cpu_model", "dtype", "memory_format", "threads", "params",
    "base_params", "params_pct", "macs", "base_macs", "theoretical_speedup", "size_mb", "accuracy", "accuracy_ci",
    "accuracy_vs_base", "accuracy_before_finetune", "accuracy_before_finetune_ci", "top5", "accuracy_reason",
    "base_accuracy", "base_learned", "runtime_agreement", "runtime_max_rel_diff", "rounds", "latency_p50_ms",
    "latency_q1_ms", "latency_q3_ms", "latency_mean_ms", "latency_noise", "noisy", "images_per_s", "gpu_time_p50_ms",
    "base_latency_p50_ms", "measured_speedup", "measured_speedup_ci", "run_spread", "speedup_ratio",
    "speedup_ratio_ci", "deploy_speedup", "deploy_speedup_ci", "other_cpu_cores", "loadavg_1m", "contended",
    "timed_with", "vs_cpu_device", "vs_cpu_speedup", "vs_cpu_speedup_ci", "test_fingerprint", "weights_sha256",
    "case_id", "node", "source",
)


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list):
        return "–".join(str(v) for v in value)
    return value


def render_csv(rows: Sequence[Row]) -> str:
    """Tidy CSV: one line per case and device, full precision, empty cell for null, intervals as low–high."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _csv_cell(r[k]) for k in CSV_FIELDS})
    return buf.getvalue()


def render_json(runs: Sequence[Run], rows: Sequence[Row]) -> str:
    """The tidy rows plus where they came from, for scripts that post-process a report."""
    sources = [{"path": run.path, "node": run.node, "datetime": run.datetime,
                "vggprune": run.machine_info.get("vggprune"), "cases": len(run.cases)} for run in runs]
    tidy = [{k: r[k] for k in CSV_FIELDS} for r in rows]
    return json.dumps({"runs": sources, "rows": tidy}, indent=2) + "\n"


def render(runs: Sequence[Run], rows: Sequence[Row], fmt: str) -> str:
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if fmt == "csv":
        return render_csv(rows)
    if fmt == "json":
        return render_json(runs, rows)
    return render_text(runs, rows, fmt)


# ---------------------------------------------------------------- output



def write_summaries(runs: Sequence[Run], rows: Sequence[Row], out_dir: str | os.PathLike) -> list[Path]:
    """summary.md, summary.csv and summary.json in ``out_dir``."""
    out = Path(out_dir)
    sources = ", ".join(Path(run.path).name for run in runs)
    md = f"# vggprune report\n\n{_wrap(f'From {sources}. {LEGEND}')}\n\n"
    return [write_atomic(out / "summary.md", md + render_text(runs, rows, "github")),
            write_atomic(out / "summary.csv", render_csv(rows)),
            write_atomic(out / "summary.json", render_json(runs, rows))]


# What `vggprune report` owns in its --out directory: an earlier report's files that this one did not
# rewrite (a plot for a device no longer in the runs, say) are removed, so no stale figure survives.
REPORT_PATTERNS = ("summary.md", "summary.csv", "summary.json", "accuracy_vs_params_*.png",
                   "latency_vs_params_*.png", "gpu_vs_cpu_*.png", "speedup_vs_theoretical_*.png")


def remove_stale(out_dir: str | os.PathLike, written: Sequence[Path]) -> list[Path]:
    """Delete report-owned files in ``out_dir`` that are not in ``written``; returns what was removed."""
    keep = {Path(p).resolve() for p in written}
    stale = sorted({p for pattern in REPORT_PATTERNS for p in Path(out_dir).glob(pattern)
                    if p.is_file() and p.resolve() not in keep})
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
