"""`vggprune report` on the committed run fixtures: rows, tables, formats, merging, and bad input.

Expected numbers are recomputed from the fixture's own ``extra_info`` so the tests hold for any real
run that replaces it; the structure (one table per batch size, a row per case, a column group per
device) is what is pinned down.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from vggprune.atomic import write_atomic
from vggprune.cli import main
from vggprune.errors import UserError
from vggprune.results.record import ADDED, SCHEMA
from vggprune.results.report import (
    BASE_CELLS,
    BASE_UNLEARNED,
    CSV_FIELDS,
    Table,
    fmt_num,
    load_rows,
    load_run,
    marks,
    render,
    report_tables,
    summary_tables,
    with_interval,
)
from vggprune.results.summary import summarize
from vggprune.stats import wilson_interval

FIXTURES = Path(__file__).parent / "fixtures"
CPU = FIXTURES / "run_cpu.json"
GPU = FIXTURES / "run_gpu.json"
EXAMPLE = Path(__file__).parent.parent / "reports" / "example" / "run.json"


def raw(path: Path = CPU) -> dict:
    return json.loads(path.read_text())


def extras(path: Path = CPU) -> list[dict]:
    return [b["extra_info"] for b in raw(path)["benchmarks"]]


def variant(tmp_path: Path, edit, src: Path = CPU, name: str = "variant.json") -> Path:
    """A copy of a fixture with ``edit(data)`` applied, for one-off bad or changed inputs."""
    data = raw(src)
    edit(data)
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def current(data: dict) -> dict:
    """A fixture written by an older schema, brought to today's: its summaries re-derived from its rounds
    by today's rule, as a current file must hold them."""
    for b in data["benchmarks"]:
        e = b["extra_info"]
        for added in ADDED.values():  # what each later schema's fields meant for an older file
            for k, v in added.items():
                e.setdefault(k, v)
        e["schema"] = SCHEMA
        e.update(summarize(b["stats"]["data"], e["batch_size"], e["base_times_s"] or None, blocks=e["blocks"],
                           run_spread=e.get("run_spread") or 0.0))
    return data


def test_a_current_file_whose_summaries_disagree_with_its_rounds_is_refused_in_one_line(tmp_path):
    assert load_run(variant(tmp_path, current, name="current.json")).cases  # re-derived: it reads

    def edited(data):
        current(data)
        data["benchmarks"][0]["extra_info"]["latency_p50_ms"] *= 0.8  # a flattering p50

    with pytest.raises(UserError, match=r"latency_p50_ms = .* is not what its rounds give \(.*\): the summaries"):
        load_run(variant(tmp_path, edited))


def lines_of(table: Table) -> list[dict[str, str]]:
    """Each row of a table as header → cell, with the columns its caption holds filled back in."""
    out = []
    for line in table.rows:
        cell = dict(zip(table.headers, line))
        for header, value in table.fixed.items():
            cell[header] = BASE_CELLS[header] if cell["method"] == "base" else value
        out.append(cell)
    return out


def case_line(tables: list[Table], kind: str, case: dict, where: str = "") -> dict[str, str]:
    """The one line for ``case`` in the ``kind`` tables (title prefix) whose title contains ``where``."""
    found = [c for t in tables if t.title.startswith(kind) and where in t.title for c in lines_of(t)
             if (c["method"], c["scope"], c["criterion"], c["rate"]) == (
                 case["method"], case["scope"], case["criterion"], f"{case['rate']:g}")
             and c.get("runtime", case["runtime"]) == case["runtime"]]
    assert len(found) == 1, (kind, where, case["case_id"], found)
    return found[0]


def p50(cases: list[dict], **match) -> float:
    (case,) = [c for c in cases if all(c[k] == v for k, v in match.items())]
    return case["latency_p50_ms"]


# ---------------------------------------------------------------- rows

def test_one_row_per_case_with_derived_ratios_from_the_same_device_and_batch():
    runs, rows = load_rows([CPU])
    cases = extras()
    assert len(rows) == len(cases) == len(runs[0].cases)
    for r in rows:
        # the speed-up is the case's own paired rounds: median of per-round base/case ratios
        (bench,) = [b for b in raw()["benchmarks"] if b["extra_info"]["case_id"] == r["case_id"]]
        ratios = np.asarray(bench["extra_info"]["base_times_s"]) / np.asarray(bench["stats"]["data"])
        assert r["measured_speedup"] == pytest.approx(np.median(ratios), abs=1e-4)
        low, high = r["measured_speedup_ci"]
        assert low <= r["measured_speedup"] <= high
        assert r["theoretical_speedup"] == pytest.approx(r["base_macs"] / r["macs"], rel=1e-3)
        assert r["speedup_ratio"] == pytest.approx(r["measured_speedup"] / r["theoretical_speedup"])
        assert r["speedup_ratio_ci"] == pytest.approx([low / r["theoretical_speedup"], high / r["theoretical_speedup"]])
        assert r["params_pct"] == pytest.approx(100 * r["params"] / r["base_params"])
        assert r["vs_cpu_speedup"] is None  # a CPU-only run has nothing to compare the CPU with
    assert rows[0]["method"] == "base"  # base first, then the sweep


def test_summary_has_size_and_accuracy_per_model_and_latency_per_batch_size_and_device():
    runs, rows = load_rows([CPU])
    cases = extras()
    tables = summary_tables(rows)
    assert [t.title for t in tables] == ["Size: profile quick, model small", "Accuracy: profile quick, model small"] + [
        f"Latency: profile quick, model small, batch size {b}, cpu" for b in sorted({c["batch_size"] for c in cases})]
    idents = {(c["method"], c["scope"], c["criterion"], f"{c['rate']:g}") for c in cases}
    for table in tables:
        got = [(c["method"], c["scope"], c["criterion"], c["rate"]) for c in lines_of(table)]
        assert set(got) == idents and len(got) == len(idents)  # size and top-1 once, not once per batch size
        assert got[0] == ("base", "none", "none", "0")
    size, accuracy, latency = tables[0], tables[1], tables[2]
    assert size.headers[-5:] == ["params", "% of base", "MMACs", "theor. ×", "MB"]
    assert accuracy.fixed == {"criterion": "l2", "vs base": "n.s."} and "vs base n.s." in accuracy.caption
    assert latency.headers[-4:] == ["p50 ms (IQR)", "× (95 % CI)", "×/theor.", "marks"]
    assert lines_of(size)[0]["% of base"] == "100.0"


def test_table_cells_show_the_contract_values():
    _, rows = load_rows([CPU])
    case = next(c for c in extras() if c["method"] != "base" and c["accuracy"] is not None)
    tables = summary_tables(rows)
    size, accuracy = case_line(tables, "Size", case), case_line(tables, "Accuracy", case)
    latency = case_line(tables, "Latency", case, f"batch size {case['batch_size']},")
    assert size["params"] == f"{case['params']:,}"
    assert size["MMACs"] == f"{case['macs'] / 1e6:,.2f}"
    low, high = case["accuracy_ci"]
    assert accuracy["top-1 % (95 % CI)"] == f"{100 * case['accuracy']:.1f} ({100 * low:.1f}–{100 * high:.1f})"
    assert latency["p50 ms (IQR)"].split(" (")[0] in (f"{case['latency_p50_ms']:.2f}",
                                                    f"{case['latency_p50_ms']:.1f}",
                                                    f"{case['latency_p50_ms']:,.0f}")


def test_the_example_report_fits_120_columns_and_keeps_every_figure(capsys, tmp_path):
    """What `make bench` prints fits a 120-column terminal, and no figure or interval was dropped for it."""
    assert main(["report", str(EXAMPLE), "--out", str(tmp_path), "--no-plots"]) == 0
    out = capsys.readouterr().out
    too_wide = [line for line in out.splitlines() if len(line) > 120]
    assert not too_wide, too_wide[:3]
    assert max(len(line) for line in (tmp_path / "summary.md").read_text().splitlines()) <= 120
    runs, rows = load_rows([EXAMPLE])
    tables = report_tables(runs, rows)
    eager = {r["case_id"] for r in rows if r["runtime"] == "eager"}
    multi = {(r["method"], r["scope"], r["criterion"], r["rate"]) for r in rows if r["runtime"] != "eager"}
    for r in rows:
        where = f"batch size {r['batch_size']}, {r['device_label']}"
        iqr = [r["latency_q1_ms"], r["latency_q3_ms"]]
        timing = {"p50 ms (IQR)": with_interval(r["latency_p50_ms"], iqr, "ms"),
                  "× (95 % CI)": with_interval(r["measured_speedup"], r["measured_speedup_ci"], "x"),
                  "×/theor.": with_interval(r["speedup_ratio"], r["speedup_ratio_ci"], "x"), "marks": marks(r)}
        if r["case_id"] in eager:
            size = case_line(tables, "Size", r)
            assert (size["params"], size["% of base"], size["MMACs"], size["theor. ×"], size["MB"]) == (
                f"{r['params']:,}", fmt_num(r["params_pct"], "pct1"), fmt_num(r["macs"], "mmacs"),
                fmt_num(r["theoretical_speedup"], "x"), fmt_num(r["size_mb"], "mb"))
            acc = case_line(tables, "Accuracy", r)
            assert (acc["top-1 % (95 % CI)"], acc["before FT %"], acc["vs base"]) == (
                with_interval(r["accuracy"], r["accuracy_ci"], "acc"),
                fmt_num(r["accuracy_before_finetune"], "acc"), r["accuracy_vs_base"] or "")
            latency = case_line(tables, "Latency", r, where)
            assert {h: latency.get(h, "") for h in timing} == timing
        if (r["method"], r["scope"], r["criterion"], r["rate"]) in multi:
            timed = case_line(tables, "Runtimes", r, where)
            assert {h: timed.get(h, "") for h in timing} == timing
            shipped = case_line(tables, "Deploying", r, where)
            assert shipped["MB"] == fmt_num(r["size_mb"], "mb")
            assert shipped["top-1 agrees"] == ("reference" if r["runtime"] == "eager"
                                               else f"{100 * r['runtime_agreement']:.2f} %")
            assert r["runtime"] == "eager" or shipped["max rel. Δ"] == f"{r['runtime_max_rel_diff']:.1e}"
            gain = (with_interval(r["deploy_speedup"], r["deploy_speedup_ci"], "x") if r["runtime"] != "eager"
                    else "1.00" if r["method"] == "base" else timing["× (95 % CI)"])
            assert shipped["× vs eager base"] == gain
    devices = {t.title: [dict(zip(t.headers, line)) for line in t.rows] for t in tables}
    (hardware,), (software,) = devices["Devices"], devices["Software"]
    assert (hardware["name"], hardware["threads"], hardware["memory format"]) == (
        rows[0]["device_name"], str(rows[0]["threads"]), rows[0]["memory_format"])
    assert (software["torch"], software["run file"]) == (runs[0].machine_info["vggprune"]["torch"], "run.json")


def test_missing_accuracy_is_a_dash_with_its_reason_noted(tmp_path):
    def drop_accuracy(data):
        for b in data["benchmarks"]:
            b["extra_info"].update(accuracy=None, top5=None, accuracy_ci=None, correct=None,
                                   accuracy_reason="Flowers102 not found under /data")

    runs, rows = load_rows([variant(tmp_path, drop_accuracy)])
    text = render(runs, rows, "github")
    accuracy = [t for t in summary_tables(rows) if t.title.startswith("Accuracy")]
    assert accuracy and all(lines_of(t)[0]["top-1 % (95 % CI)"] == "–" for t in accuracy)
    assert f"top-1 missing for {len(rows)} case(s): Flowers102 not found under /data" in text


def test_a_run_without_timing_still_reports_sizes_and_accuracy(tmp_path):
    """A --benchmark-disable run has no stats: latency cells are dashes, nothing else is lost."""
    def untimed(data):
        for b in data["benchmarks"]:
            b.pop("stats", None)
            b["extra_info"].update(base_times_s=[], **summarize([], b["extra_info"]["batch_size"]))

    runs, rows = load_rows([variant(tmp_path, untimed)])
    assert len(rows) == len(extras()) and all(r["latency_p50_ms"] is None for r in rows)
    latency = [t for t in summary_tables(rows) if t.title.startswith("Latency")]
    assert latency and all(lines_of(t)[0]["p50 ms (IQR)"] == "–" for t in latency)


def test_noisy_and_contended_cases_are_marked_and_counted(tmp_path):
    def mark(data):
        for b in data["benchmarks"]:
            b["extra_info"].update(noisy=False, contended=False, other_cpu_cores=0.0)
        data["benchmarks"][0]["extra_info"].update(noisy=True)
        data["benchmarks"][1]["extra_info"].update(contended=True, other_cpu_cores=0.75)

    runs, rows = load_rows([variant(tmp_path, mark)])
    text = render(runs, rows, "github")
    assert "1 of 18 case(s) were timed while other processes used the CPU (up to 0.75 cores" in text.replace(
        str(len(rows)), "18")
    assert "1 of" in text and "are `noisy`" in text
    flagged = {r["case_id"]: r for r in rows}
    assert marks(flagged[extras()[0]["case_id"]]) == "noisy"
    assert marks(flagged[extras()[1]["case_id"]]) == "contended"


def test_a_case_sharing_the_timing_of_the_same_model_says_so_in_its_row_and_the_notes(tmp_path):
    def share(data):  # by-hand's models are torch-pruning's here (same weights): timed once, as the harness does
        for b in data["benchmarks"]:
            e = b["extra_info"]
            e.update(noisy=False, contended=False)
            if e["method"] == "by-hand":
                e["timed_with"] = e["case_id"].replace("by-hand", "torch-pruning")

    runs, rows = load_rows([variant(tmp_path, share)])
    shared = [r for r in rows if r["method"] == "by-hand"]
    assert shared and {marks(r) for r in shared} == {"same model"}
    assert {marks(r) for r in rows if r["method"] != "by-hand"} == {""}
    text = render(runs, rows, "github")
    assert f"{len(shared)} of {len(rows)} case(s) are marked `same model`" in text
    assert "timed_with" in CSV_FIELDS


def test_the_notes_say_when_speed_up_intervals_include_a_run_spread(tmp_path):
    def spread(data):
        for b in data["benchmarks"]:
            b["extra_info"].update(schema=3, run_spread=0.05)

    runs, rows = load_rows([variant(tmp_path, spread)])
    assert "allow for a between-run spread of 0.05 (log-scale SD, `--run-spread`)" in render(runs, rows, "github")
    runs, rows = load_rows([variant(tmp_path, lambda data: None)])  # schema 2: within-run intervals
    assert "between-run spread" not in render(runs, rows, "github")


def test_accuracy_overlapping_the_base_interval_is_not_significant(tmp_path):
    def edit(data):
        for b in data["benchmarks"]:
            e = b["extra_info"]
            n = 360
            k = n if e["method"] == "base" else (n - 2 if e["scope"] == "fc" else n - 40)
            e.update(correct="1" * k + "0" * (n - k), accuracy=k / n, accuracy_ci=list(wilson_interval(k, n)))

    _, rows = load_rows([variant(tmp_path, edit)])
    verdicts = {(r["scope"]): r["accuracy_vs_base"] for r in rows}
    assert verdicts == {"none": None, "fc": "n.s.", "conv": "lower"}


def test_cases_whose_base_never_learned_are_marked_and_counted(tmp_path):
    def unlearned(data):
        for b in data["benchmarks"]:
            b["extra_info"].update(ADDED[4], schema=SCHEMA, run_spread=None, base_learned=False)
        current(data)

    runs, rows = load_rows([variant(tmp_path, unlearned)])
    assert {r["accuracy_vs_base"] for r in rows} == {BASE_UNLEARNED}  # the base's own row too
    text = render(runs, rows, "github")
    assert f"{len(rows)} case(s) are marked `{BASE_UNLEARNED}`: their base's top-1 did not beat chance" in text
    (accuracy,) = [t for t in summary_tables(rows) if t.title.startswith("Accuracy")]
    assert {c["vs base"] for c in lines_of(accuracy)} == {BASE_UNLEARNED}  # a column: the base's row holds it too
    assert "base_learned" in CSV_FIELDS
    runs, learned = load_rows([variant(tmp_path, lambda d: current([b["extra_info"].update(
        ADDED[4], schema=SCHEMA, run_spread=None, base_learned=True) for b in d["benchmarks"]] and d),
        name="learned.json")])
    assert BASE_UNLEARNED not in render(runs, learned, "github")


# ---------------------------------------------------------------- formats

def test_formats_github_plain_csv_json():
    runs, rows = load_rows([CPU])
    github, plain = render(runs, rows, "github"), render(runs, rows, "plain")
    assert "| method" in github and "### Size: profile" in github and "### Devices" in github
    assert "|" not in plain and "method" in plain
    parsed = list(csv.DictReader(io.StringIO(render(runs, rows, "csv"))))
    assert len(parsed) == len(rows) and tuple(parsed[0]) == CSV_FIELDS
    assert float(parsed[0]["latency_p50_ms"]) == rows[0]["latency_p50_ms"]  # full precision
    as_json = json.loads(render(runs, rows, "json"))
    assert len(as_json["rows"]) == len(rows) and as_json["runs"][0]["path"] == str(CPU)
    with pytest.raises(UserError, match="unknown format"):
        render(runs, rows, "html")


# ---------------------------------------------------------------- merging

def test_merge_cpu_run_with_gpu_run_from_another_machine():
    runs, rows = load_rows([CPU, GPU])
    assert len(rows) == len(extras(CPU)) + len(extras(GPU))
    node = raw(CPU)["machine_info"]["node"]
    # runs from two machines: every column names its machine, the lone cuda included
    assert {r["device_label"] for r in rows} == {f"cpu@{node}", "cpu@gpu-box", "cuda@gpu-box"}
    gpu_cases = extras(GPU)
    for r in rows:
        if r["device"] == "cuda":
            # GPU vs CPU compares with the CPU of the same machine, not the other run's
            assert r["vs_cpu_device"] == "cpu@gpu-box"
            cpu_p50 = p50(gpu_cases, device="cpu", method=r["method"], scope=r["scope"], rate=r["rate"],
                          batch_size=r["batch_size"])
            # the ratio of the two cases' medians (the recorded p50s are rounded, hence rel=1e-3)
            assert r["vs_cpu_speedup"] == pytest.approx(cpu_p50 / r["latency_p50_ms"], rel=1e-3)
            low, high = r["vs_cpu_speedup_ci"]  # timed apart: an unpaired interval, but never none
            assert low < r["vs_cpu_speedup"] < high
    titles = [t.title for t in summary_tables(rows)]
    assert any(h == "cuda@gpu-box vs cpu@gpu-box × (95 % CI)" for t in summary_tables(rows) for h in t.headers)
    latency_1 = [t.split(", ")[-1] for t in titles if t.startswith("Latency") and "batch size 1," in t]
    assert latency_1 == [f"cpu@{node}", "cpu@gpu-box", "cuda@gpu-box"]  # a table per device, CPUs first


def test_gpu_only_file_is_compared_with_the_only_cpu_and_each_column_names_its_machine(tmp_path):
    def cuda_only(data):
        data["benchmarks"] = [b for b in data["benchmarks"] if b["extra_info"]["device"] == "cuda"]

    _, rows = load_rows([CPU, variant(tmp_path, cuda_only, src=GPU)])
    cpu = f"cpu@{raw(CPU)['machine_info']['node']}"
    assert {r["device_label"] for r in rows} == {cpu, "cuda@gpu-box"}
    cuda = [r for r in rows if r["device"] == "cuda"]
    assert cuda and all(r["vs_cpu_device"] == cpu and r["vs_cpu_speedup"] > 0 for r in cuda)
    assert any(f"cuda@gpu-box vs {cpu} × (95 % CI)" in t.headers for t in summary_tables(rows))


def test_runs_from_one_machine_keep_plain_column_names(tmp_path):
    _, rows = load_rows([CPU])
    assert {r["device_label"] for r in rows} == {"cpu"}


def test_the_same_run_twice_is_an_error_not_a_silent_pick(tmp_path):
    copy = variant(tmp_path, lambda d: None, name="copy.json")
    with pytest.raises(UserError, match="is in both"):
        load_rows([CPU, copy])


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("content, message", [
    ("not json {", "is not valid JSON"),
    ("[" * 100000 + "]" * 100000, "is not valid JSON"),
    ('{"benchmarks": [{"extra_info": {"x": NaN}}], "machine_info": {}}', "is not valid JSON"),
    ("[1, 2]", "is not pytest-benchmark JSON"),
    ('{"benchmarks": [], "machine_info": {}}', "holds no benchmarks"),
])
def test_not_a_benchmark_file(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_run(path)


def test_missing_file():
    with pytest.raises(UserError, match="cannot read"):
        load_run("no/such/run.json")


def test_a_schema_2_file_reads_as_within_run_intervals(tmp_path):
    def as_schema_2(data):
        for bench in data["benchmarks"]:
            bench["extra_info"].update(schema=2)
            bench["extra_info"].pop("run_spread", None)

    run = load_run(variant(tmp_path, as_schema_2))
    # neither the spread nor whether the base learned was recorded
    assert run.cases and {(c.schema, c.run_spread, c.base_learned) for c in run.cases} == {(SCHEMA, None, None)}


def test_an_older_file_does_not_say_how_its_models_were_got():
    run = load_run(CPU)  # written before the record said where its checkpoints came from
    assert run.cases[0].schema == SCHEMA and {(c.from_cache, c.trained_on) for c in run.cases} == {(None, None)}


@pytest.mark.parametrize("edit, message", [
    (lambda e: e.clear(), "first release .no 'schema' field.; regenerate it"),
    (lambda e: e.update(schema=99), f"has results schema 99; this vggprune reads schemas 2..{SCHEMA}"),
    (lambda e: e.update(schema=3), "lacks fields in extra_info: run_spread"),  # schema 3 writes it
    (lambda e: e.pop("latency_p50_ms"), "lacks fields in extra_info: latency_p50_ms"),
    (lambda e: e.update(bogus=1), "unknown fields in extra_info: bogus"),
    (lambda e: e.update(params="912k"), "params has the wrong type"),
    (lambda e: e.update(accuracy="high"), "accuracy has the wrong type"),
    (lambda e: e.update(rate=1.5), "rate = 1.5 is out of range"),
    (lambda e: e.update(latency_p50_ms=-3.0), "latency_p50_ms = -3.0 is out of range"),
    (lambda e: e.update(latency_p50_ms=0), "latency_p50_ms = 0 is out of range"),
    (lambda e: e.update(accuracy=97.2, correct=None), "accuracy = 97.2 is out of range"),
    (lambda e: e.update(accuracy=0.5), "is not the mean of its per-image 'correct'"),
    (lambda e: e.update(correct="01x"), "correct must be a non-empty string of 0s and 1s"),
    (lambda e: e.update(base_times_s=[0.001]), "base_times_s has 1 rounds but stats.data has"),
    (lambda e: e.update(measured_speedup_ci=[2.0, 1.0]), r"measured_speedup_ci must be \[low, high\]"),
])
def test_contract_violations_name_the_benchmark_and_field(tmp_path, edit, message):
    path = variant(tmp_path, lambda d: edit(d["benchmarks"][1]["extra_info"]))
    name = raw()["benchmarks"][1]["name"]
    with pytest.raises(UserError, match=message) as info:
        load_run(path)
    assert name in str(info.value)


def test_a_case_twice_in_one_file_is_an_error(tmp_path):
    path = variant(tmp_path, lambda d: d["benchmarks"].append(d["benchmarks"][0]))
    with pytest.raises(UserError, match="are the same case"):
        load_run(path)


# ---------------------------------------------------------------- CLI and files

def test_cli_writes_every_file_and_prints_the_table(tmp_path, capsys):
    assert main(["report", str(CPU), str(GPU), "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("### Size: profile") and "cuda@gpu-box vs cpu@gpu-box × (95 % CI)" in out
    names = {p.name for p in tmp_path.iterdir()}
    assert {"summary.md", "summary.csv", "summary.json"} <= names
    pngs = sorted(n for n in names if n.endswith(".png"))
    node = raw()["machine_info"]["node"]
    assert pngs == sorted(["accuracy_vs_params_quick_small.png", "gpu_vs_cpu_quick_small_cuda-gpu-box.png"] + [
        f"{kind}_quick_small_{device}.png" for kind in ("latency_vs_params", "speedup_vs_theoretical")
        for device in ("cuda-gpu-box", "cpu-gpu-box", f"cpu-{node}")])
    assert all((tmp_path / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in pngs)
    assert not [n for n in names if n.endswith(".tmp")]  # atomic writes leave nothing behind
    assert "wrote 11 files" in err
    assert out in (tmp_path / "summary.md").read_text()


def test_a_new_report_removes_what_an_earlier_one_wrote(tmp_path, capsys):
    assert main(["report", str(CPU), str(GPU), "--out", str(tmp_path)]) == 0
    (tmp_path / "notes.txt").write_text("mine")  # not the report's: kept
    assert main(["report", str(CPU), "--out", str(tmp_path)]) == 0
    names = {p.name for p in tmp_path.iterdir()}
    node = raw()["machine_info"]["node"]
    # one CPU run: its device column is plain "cpu" now; the two-machine and GPU figures are gone
    assert sorted(n for n in names if n.endswith(".png")) == [
        "accuracy_vs_params_quick_small.png", "latency_vs_params_quick_small_cpu.png",
        "speedup_vs_theoretical_quick_small_cpu.png"]
    assert "notes.txt" in names
    assert (f"removed 7 stale files of an earlier report: gpu_vs_cpu_quick_small_cuda-gpu-box.png, "
            f"latency_vs_params_quick_small_cpu-gpu-box.png, latency_vs_params_quick_small_cpu-{node}.png, "
            f"latency_vs_params_quick_small_cuda-gpu-box.png") in capsys.readouterr().err


def test_cli_csv_to_stdout_without_plots(tmp_path, capsys):
    assert main(["report", str(CPU), "--format", "csv", "--no-plots", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == ",".join(CSV_FIELDS)
    assert not list(tmp_path.glob("*.png"))


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    path = variant(tmp_path, lambda d: d["benchmarks"][0].pop("extra_info"))
    assert main(["report", str(path), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no extra_info" in err
    assert not (tmp_path / "summary.md").exists()


def test_write_atomic_replaces_whole_file(tmp_path):
    target = tmp_path / "deep" / "summary.md"
    write_atomic(target, "old")
    write_atomic(target, b"new")
    assert target.read_text() == "new" and [p.name for p in target.parent.iterdir()] == ["summary.md"]


def test_top_1_that_differs_between_merged_machines_keeps_a_line_per_machine(tmp_path):
    """Size and top-1 are shown once per case; two machines' differing top-1 is never collapsed into one."""
    def retrained(data):
        for b in data["benchmarks"]:
            e = b["extra_info"]
            k = e["correct"].count("1") - 1  # one image fewer right: another machine's weights
            e.update(correct="1" * k + "0" * (len(e["correct"]) - k), accuracy=k / len(e["correct"]),
                     accuracy_ci=list(wilson_interval(k, len(e["correct"]))))

    _, rows = load_rows([CPU, variant(tmp_path, retrained, src=GPU)])
    (accuracy,) = [t for t in summary_tables(rows) if t.title.startswith("Accuracy")]
    assert accuracy.headers[-1] == "measured on"
    node = raw(CPU)["machine_info"]["node"]
    base = [c for c in lines_of(accuracy) if c["method"] == "base"]
    assert [c["measured on"] for c in base] == [f"cpu@{node}", "cpu@gpu-box, cuda@gpu-box"]
    assert base[0]["top-1 % (95 % CI)"] != base[1]["top-1 % (95 % CI)"]
