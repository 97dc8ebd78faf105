"""Turn pytest-benchmark JSON runs into report rows and tables: load → check → merge → rows → tables.

The harness's ``--benchmark-json`` output is the only input. Each benchmark's ``extra_info`` carries
the results contract (see :data:`CONTRACT_FIELDS`) and is the source of truth: the ``stats`` block
may be absent (e.g. a run with ``--benchmark-disable``) and is never read. Several runs (a CPU run
from a laptop and a GPU run from a server) merge into one set of cases; each case is then tagged
with a *device label* that tells apart the same device type measured on different machines, so a
speed-up is only ever computed between numbers from the same device of the same machine.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabulate import tabulate

from vggprune.atomic import write_atomic
from vggprune.errors import UserError

# What the harness writes into every benchmark's extra_info (the results contract).
CONTRACT_FIELDS: tuple[str, ...] = (
    "case_id", "profile", "model", "method", "scope", "criterion", "round_to", "rate", "device",
    "device_name", "batch_size", "dtype", "threads", "params", "macs", "base_params", "base_macs",
    "accuracy", "top5", "accuracy_reason", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms",
    "latency_mean_ms", "images_per_s", "gpu_time_p50_ms", "theoretical_speedup",
)
# A case's identity inside one run.
KEY_FIELDS: tuple[str, ...] = (
    "profile", "model", "method", "scope", "criterion", "round_to", "rate", "device", "batch_size",
)
_STR_FIELDS = ("profile", "model", "method", "scope", "criterion", "device")
_INT_FIELDS = ("round_to", "batch_size", "params", "macs", "base_params", "base_macs")
_NULLABLE_NUMBERS = ("rate", "threads", "accuracy", "top5", "latency_p50_ms", "latency_p90_ms",
                     "latency_p99_ms", "latency_mean_ms", "images_per_s", "gpu_time_p50_ms",
                     "theoretical_speedup")
BASE_METHOD = "base"
FORMATS = ("github", "plain", "csv", "json")

Case = dict[str, Any]
Row = dict[str, Any]


@dataclass(frozen=True)
class Run:
    """One ``--benchmark-json`` file: where it came from, the machine, and its contract records."""

    path: str
    machine_info: dict[str, Any]
    datetime: str | None
    cases: list[Case]

    @property
    def node(self) -> str:
        return str(self.machine_info.get("node") or Path(self.path).stem)


# ---------------------------------------------------------------- load and check

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def case_key(case: Case) -> tuple:
    """The contract's identity of a case; the rate is rounded so 0.3 and 0.30000000000000004 agree."""
    return tuple(round(float(case[k]), 6) if k == "rate" else case[k] for k in KEY_FIELDS)


def _check_case(extra: Any, name: str, path: str) -> Case:
    """One benchmark's extra_info, checked field by field so a bad file fails with a line that says why."""
    where = f"{path}: benchmark {name!r}"
    if not isinstance(extra, dict):
        raise UserError(f"{where} has no extra_info object (not written by the vggprune harness?)")
    missing = [f for f in CONTRACT_FIELDS if f not in extra]
    if missing:
        raise UserError(f"{where} lacks contract fields in extra_info: {', '.join(missing)}")
    for f in _STR_FIELDS:
        if not isinstance(extra[f], str) or not extra[f]:
            raise UserError(f"{where}: {f} must be a non-empty string, got {extra[f]!r}")
    for f in _INT_FIELDS:
        if not isinstance(extra[f], int) or isinstance(extra[f], bool) or extra[f] < 1:
            raise UserError(f"{where}: {f} must be a positive integer, got {extra[f]!r}")
    for f in _NULLABLE_NUMBERS:
        if extra[f] is not None and not _is_number(extra[f]):
            raise UserError(f"{where}: {f} must be a number or null, got {extra[f]!r}")
    if extra["rate"] is None or not 0 <= extra["rate"] < 1:
        raise UserError(f"{where}: rate must be in [0, 1), got {extra['rate']!r}")
    return dict(extra)


def load_run(path: str | os.PathLike) -> Run:
    """Read and check one pytest-benchmark JSON file; any problem is a one-line :class:`UserError`."""
    path = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not JSON ({exc})") from None
    if not (isinstance(data, dict) and isinstance(data.get("benchmarks"), list)
            and isinstance(data.get("machine_info"), dict)):
        raise UserError(f"{path} is not pytest-benchmark JSON (expected an object with 'machine_info' and "
                        f"a 'benchmarks' list, as written by pytest --benchmark-json)")
    if not data["benchmarks"]:
        raise UserError(f"{path} holds no benchmarks (were all cases skipped or deselected?)")
    cases, seen = [], {}
    for i, bench in enumerate(data["benchmarks"]):
        name = bench.get("name", f"#{i}") if isinstance(bench, dict) else f"#{i}"
        case = _check_case(bench.get("extra_info") if isinstance(bench, dict) else None, name, path)
        key = case_key(case)
        if key in seen:
            raise UserError(f"{path}: benchmarks {seen[key]!r} and {name!r} are the same case "
                            f"{case['case_id']}")
        seen[key] = name
        cases.append(case)
    return Run(path=path, machine_info=data["machine_info"], datetime=data.get("datetime"), cases=cases)


def load_runs(paths: Sequence[str | os.PathLike]) -> list[Run]:
    if not paths:
        raise UserError("give at least one --benchmark-json file")
    return [load_run(p) for p in paths]


# ---------------------------------------------------------------- merge

def _device_labels(runs: Sequence[Run]) -> dict[tuple[str, str, str], str]:
    """(device, device_name, node) → a short column label.

    A device type measured on one machine keeps its plain name (``cpu``, ``cuda``); measured on
    several, each gets ``device@node`` so numbers from different hardware never share a column.
    """
    seen: dict[str, list[tuple[str, str, str]]] = {}
    for run in runs:
        for case in run.cases:
            ident = (case["device"], str(case["device_name"]), run.node)
            if ident not in seen.setdefault(case["device"], []):
                seen[case["device"]].append(ident)
    labels: dict[tuple[str, str, str], str] = {}
    for device, idents in seen.items():
        for i, ident in enumerate(idents):
            if len(idents) == 1:
                labels[ident] = device
            else:
                at_node = f"{device}@{ident[2]}"
                clash = sum(1 for other in idents if other[2] == ident[2]) > 1
                labels[ident] = f"{at_node}#{i + 1}" if clash else at_node
    return labels


def merge_runs(runs: Sequence[Run]) -> list[Case]:
    """All cases of all runs, each tagged with ``device_label``, ``node`` and ``source``.

    The same case (same identity, same device of the same machine) in two files is ambiguous and
    an error rather than a silent pick of one of them.
    """
    labels = _device_labels(runs)
    merged: dict[tuple, Case] = {}
    for run in runs:
        for case in run.cases:
            label = labels[(case["device"], str(case["device_name"]), run.node)]
            tagged = {**case, "device_label": label, "node": run.node, "source": run.path}
            key = (*case_key(case), label)
            if key in merged:
                raise UserError(f"case {case['case_id']} on {label} is in both {merged[key]['source']} and "
                                f"{run.path}; pass each run once")
            merged[key] = tagged
    return list(merged.values())


# ---------------------------------------------------------------- rows

_SCOPE_ORDER = {"none": 0, "fc": 1, "conv": 2, "all": 3}
_CRITERION_ORDER = {"none": 0, "l2": 1, "l1": 2, "random": 3}


def row_order(row: Row) -> tuple:
    """Base first, then method, scope, criterion, round_to, rate: the order a reader scans a sweep in."""
    return (row["profile"], row["model"], row["batch_size"], row["method"] != BASE_METHOD, row["method"],
            _SCOPE_ORDER.get(row["scope"], 9), row["scope"], _CRITERION_ORDER.get(row["criterion"], 9),
            row["criterion"], row["round_to"], row["rate"])


def device_order(labels: Iterable[str], rows: Sequence[Row]) -> list[str]:
    """CPU labels first, then accelerators, each in order of first appearance."""
    device_of = {r["device_label"]: r["device"] for r in rows}
    unique = list(dict.fromkeys(labels))
    return sorted(unique, key=lambda lab: (device_of.get(lab) != "cpu", unique.index(lab)))


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if _is_number(num) and _is_number(den) and den > 0 else None


def cpu_partners(cases: Sequence[Case]) -> dict[str, str]:
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


def build_rows(cases: Sequence[Case]) -> list[Row]:
    """One tidy row per case: the contract fields plus the derived ratios every table and plot reads.

    ``measured_speedup`` is the base's p50 over this case's p50 on the same device label and batch
    size; ``speedup_ratio`` is measured over theoretical (1.0 = the MAC count's promise is kept);
    ``vs_cpu_speedup`` (accelerator rows only) is the partner CPU's p50 over this p50 for the same case.
    """
    by_key = {(*case_key(c), c["device_label"]): c for c in cases}
    partners = cpu_partners(cases)

    def base_of(c: Case) -> Case | None:
        group = (c["profile"], c["model"], c["batch_size"], c["device_label"])
        candidates = [b for b in cases if b["method"] == BASE_METHOD
                      and (b["profile"], b["model"], b["batch_size"], b["device_label"]) == group]
        same_round = [b for b in candidates if b["round_to"] == c["round_to"]]
        return (same_round or candidates or [None])[0]

    rows = []
    for c in cases:
        base = base_of(c)
        theoretical = c["theoretical_speedup"]
        if theoretical is None:
            theoretical = _ratio(c["base_macs"], c["macs"])
        measured = _ratio(base["latency_p50_ms"], c["latency_p50_ms"]) if base else None
        partner = partners.get(c["device_label"])
        cpu_case = None
        if partner:
            cpu_key = tuple("cpu" if k == "device" else v for k, v in zip(KEY_FIELDS, case_key(c)))
            cpu_case = by_key.get((*cpu_key, partner))
        rows.append({
            **{k: c[k] for k in KEY_FIELDS},
            "rate": round(float(c["rate"]), 6),
            "device_label": c["device_label"], "device_name": c["device_name"], "dtype": c["dtype"],
            "memory_format": c.get("memory_format"),  # recorded by the harness, not a contract field
            "threads": c["threads"], "params": c["params"], "base_params": c["base_params"],
            "params_pct": 100.0 * c["params"] / c["base_params"], "macs": c["macs"],
            "base_macs": c["base_macs"], "theoretical_speedup": theoretical,
            "accuracy": c["accuracy"], "top5": c["top5"], "accuracy_reason": c["accuracy_reason"],
            "latency_p50_ms": c["latency_p50_ms"], "latency_p90_ms": c["latency_p90_ms"],
            "latency_p99_ms": c["latency_p99_ms"], "latency_mean_ms": c["latency_mean_ms"],
            "images_per_s": c["images_per_s"], "gpu_time_p50_ms": c["gpu_time_p50_ms"],
            "measured_speedup": measured, "speedup_ratio": _ratio(measured, theoretical),
            "vs_cpu_device": partner if cpu_case else None,
            "vs_cpu_speedup": _ratio(cpu_case["latency_p50_ms"], c["latency_p50_ms"]) if cpu_case else None,
            "case_id": c["case_id"], "node": c["node"], "source": c["source"],
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
    if kind == "int":
        return f"{value:,}"
    if kind == "ips":
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
    if kind == "mmacs":
        return f"{value / 1e6:,.2f}"
    if kind == "rate":
        return f"{value:g}"
    return f"{value:.1f}"


@dataclass(frozen=True)
class Table:
    """A titled table ready for tabulate; ``numeric`` marks right-aligned columns."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    numeric: list[bool]

    def render(self, fmt: str = "github") -> str:
        align = ["right" if n else "left" for n in self.numeric]
        return tabulate(self.rows, headers=self.headers, tablefmt=fmt, disable_numparse=True, colalign=align)


def _row_id(r: Row) -> tuple:
    return (r["method"], r["scope"], r["criterion"], r["round_to"], r["rate"])


def summary_tables(rows: Sequence[Row]) -> list[Table]:
    """One wide table per (profile, model, batch size): a row per (method, scope, criterion, rate),
    size and accuracy once, then latency and speed-ups side by side for each device."""
    tables = []
    show_round = len({r["round_to"] for r in rows}) > 1
    for group in sorted({(r["profile"], r["model"], r["batch_size"]) for r in rows}):
        grows = [r for r in rows if (r["profile"], r["model"], r["batch_size"]) == group]
        devices = device_order((r["device_label"] for r in grows), grows)
        accels = [d for d in devices
                  if any(r["vs_cpu_speedup"] is not None for r in grows if r["device_label"] == d)]
        headers = ["method", "scope", "criterion"] + (["round_to"] if show_round else []) + [
            "rate", "params", "% of base", "MMACs", "theor. ×", "top-1 %"]
        numeric = [False] * (4 if show_round else 3) + [True] * 6
        for d in devices:
            headers += [f"{d} p50 (p90) ms", f"{d} img/s", f"{d} ×", f"{d} ×/theor."]
            numeric += [True] * 4
        for d in accels:
            partner = next(r["vs_cpu_device"] for r in grows if r["device_label"] == d and r["vs_cpu_device"])
            headers.append(f"{d} vs {partner} ×")
            numeric.append(True)
        cells = []
        for rid in dict.fromkeys(_row_id(r) for r in grows):  # rows arrive in row_order
            per_dev = {r["device_label"]: r for r in grows if _row_id(r) == rid}
            first = per_dev[next(d for d in devices if d in per_dev)]
            accuracies = [per_dev[d]["accuracy"] for d in devices if d in per_dev]
            accuracy = next((a for a in accuracies if a is not None), None)
            line = [first["method"], first["scope"], first["criterion"]] + (
                [str(first["round_to"])] if show_round else []) + [
                fmt_num(first["rate"], "rate"), fmt_num(first["params"], "int"),
                fmt_num(first["params_pct"], "pct1"), fmt_num(first["macs"], "mmacs"),
                fmt_num(first["theoretical_speedup"], "x"), fmt_num(accuracy, "pct")]
            for d in devices:
                r = per_dev.get(d)
                if r is None:
                    line += ["–"] * 4
                    continue
                line += [f"{fmt_num(r['latency_p50_ms'], 'ms')} ({fmt_num(r['latency_p90_ms'], 'ms')})",
                         fmt_num(r["images_per_s"], "ips"), fmt_num(r["measured_speedup"], "x"),
                         fmt_num(r["speedup_ratio"], "x")]
            line += [fmt_num(per_dev[d]["vs_cpu_speedup"] if d in per_dev else None, "x") for d in accels]
            cells.append(line)
        title = f"profile {group[0]}, model {group[1]}, batch size {group[2]}"
        tables.append(Table(title=title, headers=headers, rows=cells, numeric=numeric))
    return tables


def devices_table(runs: Sequence[Run], rows: Sequence[Row]) -> Table:
    """Which hardware and software each device column stands for."""
    lines, seen = [], set()
    for r in rows:
        if r["device_label"] in seen:
            continue
        seen.add(r["device_label"])
        info = next(run.machine_info for run in runs if run.path == r["source"])
        versions = info.get("vggprune") if isinstance(info.get("vggprune"), dict) else {}
        lines.append([r["device_label"], str(r["device_name"]), r["node"], str(r["threads"]), r["dtype"],
                      str(r["memory_format"] or "?"),
                      str(versions.get("torch", "?")), str(versions.get("torch_pruning", "?")),
                      Path(r["source"]).name])
    order = device_order((r["device_label"] for r in rows), rows)
    lines.sort(key=lambda line: order.index(line[0]))
    headers = ["device", "name", "machine", "threads", "dtype", "memory format", "torch", "torch-pruning",
               "run file"]
    return Table(title="Devices", headers=headers, rows=lines, numeric=[False] * len(headers))


def accuracy_notes(rows: Sequence[Row]) -> list[str]:
    """Why some top-1 cells are empty, once per distinct reason."""
    reasons: dict[str, int] = {}
    for r in rows:
        if r["accuracy"] is None:
            reason = r["accuracy_reason"] or "no reason recorded"
            reasons[reason] = reasons.get(reason, 0) + 1
    return [f"top-1 missing for {n} case(s): {reason}" for reason, n in reasons.items()]


def render_text(runs: Sequence[Run], rows: Sequence[Row], fmt: str = "github") -> str:
    """The human summary: one table per group, then the devices and any accuracy notes."""
    md = fmt == "github"
    parts = []
    for table in [*summary_tables(rows), devices_table(runs, rows)]:
        parts.append(f"### {table.title}" if md else f"{table.title}:")
        parts.append(table.render(fmt))
    notes = accuracy_notes(rows)
    if notes:
        parts.append("\n".join(f"- {n}" if md else n for n in notes))
    return "\n\n".join(parts) + "\n"


CSV_FIELDS: tuple[str, ...] = (
    *KEY_FIELDS, "device_label", "device_name", "dtype", "memory_format", "threads", "params", "base_params",
    "params_pct", "macs", "base_macs", "theoretical_speedup", "accuracy", "top5", "accuracy_reason", "latency_p50_ms",
    "latency_p90_ms", "latency_p99_ms", "latency_mean_ms", "images_per_s", "gpu_time_p50_ms",
    "measured_speedup", "speedup_ratio", "vs_cpu_device", "vs_cpu_speedup", "case_id", "node", "source",
)


def render_csv(rows: Sequence[Row]) -> str:
    """Tidy CSV: one line per case and device, full precision, empty cell for null."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if r[k] is None else r[k] for k in CSV_FIELDS})
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
    md = f"# vggprune report\n\nFrom {sources}. Latency is per batch, p50 (p90) in ms.\n\n"
    return [write_atomic(out / "summary.md", md + render_text(runs, rows, "github")),
            write_atomic(out / "summary.csv", render_csv(rows)),
            write_atomic(out / "summary.json", render_json(runs, rows))]
