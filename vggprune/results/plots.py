"""PNG plots of report rows: accuracy vs params, latency vs params per device, GPU vs CPU latency.

Figures are built as :class:`matplotlib.figure.Figure` objects rendered by the Agg canvas, never
through pyplot, so nothing needs a display and no global figure state leaks between reports. Each
pruning series (method · scope · criterion) starts at the unpruned base, so every line reads as
"what pruning this way does to the base model" and keeps its colour across all plots.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless, whatever MPLBACKEND says; set before anything draws

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from vggprune.atomic import write_atomic  # noqa: E402
from vggprune.identity import BASE_METHOD, DEFAULT_RUNTIME, ModelKey  # noqa: E402
from vggprune.results.report import Row, device_order  # noqa: E402

_COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
            "tab:olive", "tab:cyan", "tab:gray"]
# Both backends keep the same units, so their accuracy curves coincide: hollow squares on a dashed
# line around filled circles keep both visible where they overlap.
_METHOD_LOOK = [dict(marker="o", linestyle="-"), dict(marker="s", linestyle="--", markerfacecolor="none",
                                                      markersize=8)]


def _series_name(row: Row) -> str:
    name = ModelKey(row["method"], row["scope"], row["rate"], row["criterion"], row["round_to"]).series()
    return name if row.get("runtime", DEFAULT_RUNTIME) == DEFAULT_RUNTIME else f"{name} · {row['runtime']}"


def _series(rows: Sequence[Row]) -> dict[str, list[Row]]:
    """Pruned rows by series, each sorted by rate; the base is kept out (it is drawn into every series)."""
    out: dict[str, list[Row]] = {}
    for r in rows:
        if r["method"] != BASE_METHOD:
            out.setdefault(_series_name(r), []).append(r)
    return {name: sorted(rs, key=lambda r: r["rate"]) for name, rs in sorted(out.items())}


def _looks(rows: Sequence[Row]) -> dict[str, dict]:
    """Series → plot keywords: colour by scope · criterion, marker and line style by method."""
    pruned = [r for r in rows if r["method"] != BASE_METHOD]
    kinds = sorted({_series_name(r).split(" · ", 1)[1] for r in pruned})
    methods = sorted({r["method"] for r in pruned}, key=lambda m: (m != "torch-pruning", m))
    looks = {}
    for r in pruned:
        name = _series_name(r)
        looks[name] = {"color": _COLOURS[kinds.index(name.split(" · ", 1)[1]) % len(_COLOURS)],
                       **_METHOD_LOOK[methods.index(r["method"]) % len(_METHOD_LOOK)]}
    return looks


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return write_atomic(path, buf.getvalue())


def _annotate_rates(ax, points: Sequence[tuple[float, float, float]], colour: str, done: set) -> None:
    """Label each point with its pruning rate, once per position (coinciding series share a label)."""
    for x, y, rate in points:
        if (round(x, 6), round(y, 6)) not in done:
            done.add((round(x, 6), round(y, 6)))
            ax.annotate(f"{rate:.0%}", (x, y), textcoords="offset points", xytext=(5, -10), fontsize=7,
                        color=colour)


def plot_accuracy(rows: Sequence[Row], title: str, path: Path) -> Path | None:
    """Top-1 against parameter count (the study's "accuracy per size of params") with 95 % Wilson
    error bars; each series also shows its one-shot accuracy before fine-tuning (dotted, hollow)."""
    def acc_by_point(rs: Sequence[Row], field: str = "accuracy") -> list[tuple[float, float, float, float, float]]:
        points: dict[float, tuple[float, float, float, float, float]] = {}
        for r in rs:  # accuracy does not depend on device or batch size: one point per rate
            if r[field] is not None and r["rate"] not in points:
                low, high = r[f"{field}_ci"] or (r[field], r[field])
                points[r["rate"]] = (r["params"] / 1e6, 100 * r[field], r["rate"],
                                     100 * (r[field] - low), 100 * (high - r[field]))
        return [points[k] for k in sorted(points)]

    base = acc_by_point([r for r in rows if r["method"] == BASE_METHOD])
    series = {name: acc_by_point(rs) for name, rs in _series(rows).items()}
    before = {name: acc_by_point(rs, "accuracy_before_finetune") for name, rs in _series(rows).items()}
    if not base and not any(series.values()):
        return None
    looks = _looks(rows)
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.add_subplot()
    labelled: set = set()
    for name, points in series.items():
        if not points:
            continue
        xs, ys, _, lo, hi = zip(*(base[:1] + points))
        ax.errorbar(xs, ys, yerr=[lo, hi], capsize=2, label=name, **looks[name])
        _annotate_rates(ax, [p[:3] for p in points], looks[name]["color"], labelled)
        if before.get(name):
            bx, by, _, blo, bhi = zip(*(base[:1] + before[name]))
            ax.errorbar(bx, by, yerr=[blo, bhi], capsize=2, alpha=0.6, label=f"{name}, before fine-tuning",
                        **{**looks[name], "linestyle": ":", "markerfacecolor": "none"})
    if base:
        ax.errorbar([base[0][0]], [base[0][1]], yerr=[[base[0][3]], [base[0][4]]], marker="*", markersize=14,
                    color="black", linestyle="none", capsize=2, label="base (unpruned)", zorder=5)
    ax.set_xlabel("parameters (millions)")
    ax.set_ylabel("top-1 accuracy on the test split (%)")
    ax.set_title(f"Accuracy vs size — {title}\n(labels: pruning rate; bars: 95 % Wilson interval)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _batch_panels(rows: Sequence[Row]) -> tuple[Figure, dict]:
    """A figure with one panel per batch size in ``rows``, side by side: {batch size: axes}."""
    batch_sizes = sorted({r["batch_size"] for r in rows})
    fig = Figure(figsize=(5.2 * len(batch_sizes) + 1.5, 4.6))
    return fig, dict(zip(batch_sizes, fig.subplots(1, len(batch_sizes), squeeze=False)[0]))


def _panels_on(rows: Sequence[Row], device: str, field: str) -> tuple[Figure, list] | None:
    """The rows measured on ``device`` (``field`` not None) in a figure of one panel per batch size:
    (figure, [(batch size, axes, that size's rows)]), or None when there are none."""
    drows = [r for r in rows if r["device_label"] == device and r[field] is not None]
    if not drows:
        return None
    fig, panels = _batch_panels(drows)
    return fig, [(bs, ax, [r for r in drows if r["batch_size"] == bs]) for bs, ax in panels.items()]


def _finish_panels(fig: Figure, title: str, path: Path, handles: list | None = None, ax=None) -> Path:
    """One legend to the right (``handles``, else the last panel's), the title, then the PNG."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right center", fontsize=8)
    else:
        fig.legend(handles=handles, loc="outside right center", fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.set_layout_engine("constrained")
    return _save(fig, path)


def _iqr_bars(rs: Sequence[Row]) -> list[list[float]]:
    """matplotlib's [below, above] error bars from each row's p50 to its quartiles."""
    down = [max(0.0, r["latency_p50_ms"] - (r["latency_q1_ms"] or r["latency_p50_ms"])) for r in rs]
    up = [max(0.0, (r["latency_q3_ms"] or r["latency_p50_ms"]) - r["latency_p50_ms"]) for r in rs]
    return [down, up]


def plot_latency(rows: Sequence[Row], device: str, title: str, path: Path) -> Path | None:
    """p50 latency per batch against parameter count on one device, one panel per batch size;
    the bar spans the interquartile range of the case's rounds."""
    made = _panels_on(rows, device, "latency_p50_ms")
    if made is None:
        return None
    fig, panels = made
    looks = _looks(rows)
    for bs, ax, brows in panels:
        base = [r for r in brows if r["method"] == BASE_METHOD][:1]
        for name, rs in _series(brows).items():
            rs = base + rs
            xs = [r["params"] / 1e6 for r in rs]
            p50 = [r["latency_p50_ms"] for r in rs]
            ax.errorbar(xs, p50, yerr=_iqr_bars(rs), capsize=3, label=name, **looks[name])
        if base:
            ax.plot([base[0]["params"] / 1e6], [base[0]["latency_p50_ms"]], marker="*", markersize=14,
                    color="black", linestyle="none", label="base (unpruned)", zorder=5)
        ax.set_title(f"batch size {bs}", fontsize=10)
        ax.set_xlabel("parameters (millions)")
        ax.set_ylabel("latency per batch, p50 (ms); bar: IQR")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    return _finish_panels(fig, f"Inference time vs size on {device} — {title}", path, ax=ax)


def plot_speedup(rows: Sequence[Row], device: str, title: str, path: Path) -> Path | None:
    """Measured speed-up (median of paired rounds, bar = its 95 % CI) against the theoretical one
    (base MACs / case MACs), one panel per batch size; the dashed diagonal is "MACs turned into time"."""
    made = _panels_on(rows, device, "measured_speedup")
    if made is None:
        return None
    fig, panels = made
    looks = _looks(rows)
    for bs, ax, brows in panels:
        top = max(max(r["theoretical_speedup"] for r in brows), max((r["measured_speedup_ci"] or [0, 0])[1]
                                                                    for r in brows))
        ax.plot([1, top], [1, top], color="gray", linestyle="--", linewidth=1, label="theoretical (MACs)")
        for name, rs in _series(brows).items():
            xs = [r["theoretical_speedup"] for r in rs]
            ys = [r["measured_speedup"] for r in rs]
            cis = [r["measured_speedup_ci"] or [y, y] for r, y in zip(rs, ys)]
            ax.errorbar(xs, ys, yerr=[[y - c[0] for y, c in zip(ys, cis)], [c[1] - y for y, c in zip(ys, cis)]],
                        capsize=3, label=name, **looks[name])
        base = [r for r in brows if r["method"] == BASE_METHOD][:1]
        if base:
            b = base[0]
            low, high = b["measured_speedup_ci"] or [b["measured_speedup"]] * 2
            ax.errorbar([1.0], [b["measured_speedup"]], yerr=[[b["measured_speedup"] - low],
                                                              [high - b["measured_speedup"]]],
                        marker="*", markersize=14, color="black", linestyle="none", capsize=3,
                        label="base vs its twin (A/A)", zorder=5)
        ax.set_title(f"batch size {bs}", fontsize=10)
        ax.set_xlabel("theoretical speed-up (base MACs / case MACs)")
        ax.set_ylabel("measured speed-up, paired rounds (95 % CI)")
        ax.grid(True, alpha=0.3)
    return _finish_panels(fig, f"What pruning buys on {device} — {title}", path, ax=ax)


def _plain_log_labels(ax) -> None:
    """Label a log y axis with plain numbers (0.4, 3, 60, not 4×10⁻¹), and label in-between ticks only
    as far as they fit: all of them within a 3× range, 2-3-5 within 30×, none beyond."""
    low, high = ax.get_ylim()
    span = high / low if low > 0 else math.inf
    digits = set(range(1, 10)) if span < 3 else {2, 3, 5} if span < 30 else set()

    def minor(value: float, _pos) -> str:
        lead = round(value / 10 ** math.floor(math.log10(value))) if value > 0 else 0
        return f"{value:g}" if lead in digits else ""

    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def plot_gpu_vs_cpu(rows: Sequence[Row], accel: str, title: str, path: Path) -> Path | None:
    """p50 per batch (bar: IQR) on an accelerator and on its partner CPU for the same cases (log scale:
    the gap is often tens of times), one panel per batch size."""
    arows = [r for r in rows if r["device_label"] == accel and r["vs_cpu_device"]]
    if not arows:
        return None
    cpu = arows[0]["vs_cpu_device"]
    looks = _looks(rows)
    fig, panels = _batch_panels(arows)
    for bs, ax in panels.items():
        for device, style in ((cpu, "-"), (accel, "--")):
            brows = [r for r in rows if r["device_label"] == device and r["batch_size"] == bs
                     and r["latency_p50_ms"] is not None]
            base = [r for r in brows if r["method"] == BASE_METHOD][:1]
            for name, rs in _series(brows).items():
                rs = base + rs
                ax.errorbar([r["params"] / 1e6 for r in rs], [r["latency_p50_ms"] for r in rs],
                            yerr=_iqr_bars(rs), capsize=3, **{**looks[name], "linestyle": style})
            if base:
                ax.plot([base[0]["params"] / 1e6], [base[0]["latency_p50_ms"]], marker="*", markersize=14,
                        color="black", linestyle="none", zorder=5)
        ax.set_yscale("log")
        _plain_log_labels(ax)
        ax.set_title(f"batch size {bs}", fontsize=10)
        ax.set_xlabel("parameters (millions)")
        ax.set_ylabel("latency per batch, p50 (ms, log scale)")
        ax.grid(True, which="both", alpha=0.3)
    # One legend entry per series and per device, not per (series, device): the line style is the device.
    handles = [Line2D([], [], label=name, **{**look, "linestyle": "none"}) for name, look in looks.items()]
    handles += [Line2D([], [], color="black", marker="*", markersize=12, linestyle="none", label="base (unpruned)"),
                Line2D([], [], color="gray", linestyle="-", label=f"on {cpu}"),
                Line2D([], [], color="gray", linestyle="--", label=f"on {accel}")]
    return _finish_panels(fig, f"{accel} vs {cpu} latency — {title}", path, handles=handles)


def write_plots(rows: Sequence[Row], out_dir: str | os.PathLike) -> list[Path]:
    """Every plot the rows support, per (profile, model); returns the files written."""
    out = Path(out_dir)
    written: list[Path | None] = []
    for profile, model in sorted({(r["profile"], r["model"]) for r in rows}):
        grows = [r for r in rows if (r["profile"], r["model"]) == (profile, model)]
        title = f"profile {profile}, model {model}"
        stem = _slug(f"{profile}_{model}")
        written.append(plot_accuracy(grows, title, out / f"accuracy_vs_params_{stem}.png"))
        devices = device_order((r["device_label"] for r in grows), grows)
        for device in devices:
            written.append(plot_latency(grows, device, title,
                                        out / f"latency_vs_params_{stem}_{_slug(device)}.png"))
            written.append(plot_speedup(grows, device, title,
                                        out / f"speedup_vs_theoretical_{stem}_{_slug(device)}.png"))
        for device in devices:
            if any(r["vs_cpu_device"] for r in grows if r["device_label"] == device):
                written.append(plot_gpu_vs_cpu(grows, device, title,
                                               out / f"gpu_vs_cpu_{stem}_{_slug(device)}.png"))
    return [p for p in written if p is not None]
