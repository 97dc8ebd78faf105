"""`vggprune compare`: verdicts from each run's raw evidence (exit 0 ok, 1 regression, 2 bad input).

The fixture runs are real; where a test needs evidence with known properties it writes it into a copy:
per-image correctness strings for McNemar, and paired rounds drawn from a seeded log-normal (2 %
spread) for the latency tests, so a verdict depends on the rule being tested, not on this machine.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from vggprune.cli import main
from vggprune.errors import UserError
from vggprune.results.compare import Tolerances, compare_files, summary_counts
from vggprune.results.record import load_run
from vggprune.results.summary import summarize
from vggprune.stats import wilson_interval

FIXTURES = Path(__file__).parent / "fixtures"
CPU = FIXTURES / "run_cpu.json"
GPU = FIXTURES / "run_gpu.json"
N_TEST = 360


def with_evidence(data: dict, seed: int, correct: dict[str, str] | None = None, run_spread: float = 0.0) -> dict:
    """Give every case steady synthetic paired rounds (speed-up = theoretical, 2 % noise) and, optionally,
    per-image correctness; the summaries are recomputed from them as the harness would (pruned cases'
    intervals widened by ``run_spread``)."""
    rng = np.random.default_rng(seed)
    for b in data["benchmarks"]:
        e = b["extra_info"]
        base = 0.01 * np.exp(rng.normal(0, 0.02, 30))
        case = base / e["theoretical_speedup"] * np.exp(rng.normal(0, 0.02, 30))
        b["stats"] = {"data": case.tolist()}
        e.update(base_times_s=base.tolist(), contended=False, schema=3,
                 **summarize(case.tolist(), e["batch_size"], base.tolist(), run_spread=run_spread))
        if correct is not None:
            bits = correct.get(e["case_id"], correct["*"])
            k = bits.count("1")
            e.update(correct=bits, accuracy=k / len(bits), accuracy_ci=list(wilson_interval(k, len(bits))),
                     test_fingerprint="digits-test")
    return data


def write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def fixture(src: Path = CPU) -> dict:
    return json.loads(src.read_text())


def run(capsys, *args) -> tuple[int, str, str]:
    code = main(["compare", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


BASELINE_BITS = "1" * 350 + "0" * 10  # 97.2 % on 360 images


def flipped(n: int) -> str:
    """The baseline's correctness with its first ``n`` correct images turned wrong."""
    return "0" * n + BASELINE_BITS[n:]


def conv50(data: dict) -> list[str]:
    return [b["extra_info"]["case_id"] for b in data["benchmarks"]
            if b["extra_info"]["scope"] == "conv" and b["extra_info"]["rate"] == 0.5]


def scale_rounds(data: dict, factor: float, case_ids: list[str] | None = None, base_too: bool = False) -> dict:
    """Every timed round of the listed cases (default: all) × ``factor``; with ``base_too`` the paired
    base's rounds as well (the whole machine slower, not the case)."""
    for b in data["benchmarks"]:
        if case_ids is None or b["extra_info"]["case_id"] in case_ids:
            b["stats"]["data"] = [factor * t for t in b["stats"]["data"]]
            if base_too:
                b["extra_info"]["base_times_s"] = [factor * t for t in b["extra_info"]["base_times_s"]]
    return data


# ---------------------------------------------------------------- same code, same machine

def test_a_run_against_itself_passes(capsys):
    code, out, _ = run(capsys, CPU, CPU)
    n = len(fixture()["benchmarks"])
    assert code == 0 and f"{n} case(s) compared, 0 regression(s)" in out and out.rstrip().endswith("OK")
    assert "regressed" not in out


def test_two_runs_of_the_same_code_are_not_flagged(tmp_path, capsys):
    a = write(tmp_path, "a.json", with_evidence(fixture(), seed=1))
    b = write(tmp_path, "b.json", with_evidence(fixture(), seed=2))
    code, out, _ = run(capsys, a, b)
    assert code == 0 and "regressed" not in out
    counts = summary_counts(compare_files(a, b))
    assert counts["latency"].get("regressed", 0) == counts["latency"].get("improved", 0) == 0


# ---------------------------------------------------------------- latency

def test_a_25_percent_slowdown_of_the_conv_cases_is_caught_and_only_those(tmp_path, capsys):
    base = with_evidence(fixture(), seed=1)
    slow = with_evidence(fixture(), seed=2)
    targets = conv50(slow)
    scale_rounds(slow, 1.25, targets)
    code, out, _ = run(capsys, write(tmp_path, "a.json", base), write(tmp_path, "b.json", slow))
    flagged = [line.split(":")[0] for line in out.splitlines() if "latency regressed" in line]
    assert code == 1 and sorted(flagged) == sorted(targets)
    assert f"{len(targets)} regression(s)" in out


def test_a_significant_change_within_the_tolerance_is_within_noise(tmp_path, capsys):
    base = with_evidence(fixture(), seed=1)
    slow = with_evidence(fixture(), seed=2)
    scale_rounds(slow, 1.05)
    cmp = compare_files(write(tmp_path, "a.json", base), write(tmp_path, "b.json", slow))
    counts = summary_counts(cmp)["latency"]
    assert counts.get("regressed", 0) == 0 and counts.get("within noise", 0) > len(cmp.matched) / 2
    assert cmp.exit_code == 0
    # a tighter tolerance makes the same evidence a regression
    tight = compare_files(write(tmp_path, "a.json", base), write(tmp_path, "b.json", slow),
                          Tolerances(latency_tolerance=0.01))
    assert tight.exit_code == 1


def test_faster_candidate_is_improved_not_regressed(tmp_path, capsys):
    base = with_evidence(fixture(), seed=1)
    fast = with_evidence(fixture(), seed=2)
    scale_rounds(fast, 0.7)
    cmp = compare_files(write(tmp_path, "a.json", base), write(tmp_path, "b.json", fast))
    assert cmp.exit_code == 0 and summary_counts(cmp)["latency"] == {"improved": len(cmp.matched)}


def test_a_run_whose_host_was_slower_for_the_pruned_models_is_within_the_run_spread(tmp_path, capsys):
    """Same code; in the candidate every pruned case ran 10 % slower against its base (the run-level
    shift seen on a shared VM). Runs that record the default run spread (0.05) allow for it: the shift
    is not significant (z = 0.095 / sqrt(2 · 0.05² + within-run noise) < 1.4). Runs that claim no spread
    cannot tell it from a regression."""
    shifted = [b["extra_info"]["case_id"] for b in fixture()["benchmarks"] if b["extra_info"]["method"] != "base"]
    for spread, code in ((0.05, 0), (0.0, 1)):
        a = write(tmp_path, "a.json", with_evidence(fixture(), seed=1, run_spread=spread))
        b_ = write(tmp_path, "b.json", scale_rounds(with_evidence(fixture(), seed=2, run_spread=spread), 1.10, shifted))
        assert run(capsys, a, b_)[0] == code
    # compare's --run-spread overrides what the files recorded
    assert run(capsys, a, b_, "--run-spread", "0.05")[0] == 0


def test_with_the_default_run_spread_a_25_percent_slowdown_is_still_caught_and_only_there(tmp_path, capsys):
    # the difference's SE is about sqrt(2) · 0.05 = 0.071, so log 1.25 = 0.223 is significant (z ≈ 3.1) and
    # its CI's near end (0.223 - 1.96 · 0.071 = 0.084) lies beyond the 5 % tolerance (log 1.05 = 0.049)
    base = with_evidence(fixture(), seed=1, run_spread=0.05)
    slow = with_evidence(fixture(), seed=2, run_spread=0.05)
    targets = conv50(slow)
    scale_rounds(slow, 1.25, targets)
    code, out, _ = run(capsys, write(tmp_path, "a.json", base), write(tmp_path, "b.json", slow))
    flagged = [line.split(":")[0] for line in out.splitlines() if "latency regressed" in line]
    assert code == 1 and sorted(flagged) == sorted(targets)


def test_one_case_significant_alone_is_not_a_discovery_among_many(tmp_path):
    """Dozens of cases per comparison: a lone p around 0.01 is what chance gives every few comparisons.
    Significance is judged after Benjamini–Hochberg over the compared cases; a regression of several
    cases at once is still found."""
    base = with_evidence(fixture(), seed=1, run_spread=0.05)
    one = with_evidence(fixture(), seed=2, run_spread=0.05)
    target = conv50(one)[:1]
    scale_rounds(one, 1.20, target)
    no_tolerance = Tolerances(latency_tolerance=0.0)
    cmp = compare_files(write(tmp_path, "a.json", base), write(tmp_path, "b.json", one), no_tolerance)
    lat = {m.case_id: m.verdict("latency") for m in cmp.matched}
    p = sorted(v.p_value for v in lat.values())
    assert lat[target[0]].p_value == p[0] < 0.05  # alone it would be significant...
    assert p[0] * len(p) > 0.05  # ...but not after BH's m / rank (its rank is 1)
    assert lat[target[0]].outcome == "no change" and cmp.exit_code == 0
    every = with_evidence(fixture(), seed=2, run_spread=0.05)
    scale_rounds(every, 1.25, conv50(every))
    cmp = compare_files(write(tmp_path, "a.json", base), write(tmp_path, "c.json", every), no_tolerance)
    regressed = [m.case_id for m in cmp.matched if m.verdict("latency").outcome == "regressed"]
    assert sorted(regressed) == sorted(conv50(every))


def test_a_shifted_a_a_check_is_reported_but_does_not_fail(tmp_path, capsys):
    # the base's speed-up is the base against its own twin: a shift there says the timing moved
    base = with_evidence(fixture(), seed=1)
    shifted = with_evidence(fixture(), seed=2)
    aa = [b["extra_info"]["case_id"] for b in shifted["benchmarks"] if b["extra_info"]["method"] == "base"]
    scale_rounds(shifted, 1.25, aa)
    code, out, _ = run(capsys, write(tmp_path, "a.json", base), write(tmp_path, "b.json", shifted))
    assert code == 0
    assert all(f"{case}: latency regressed (advisory)" in out for case in aa)
    assert "advisory: the base against its twin (A/A) measures the timing, not a model" in out


def test_files_that_recorded_no_run_spread_get_the_default(tmp_path):
    from vggprune.limits import RUN_SPREAD
    from vggprune.results.compare import _run_spread

    old = load_run(CPU).cases[0]  # schema 2: nothing recorded
    assert old.run_spread is None
    new = dataclasses.replace(old, run_spread=0.02)
    assert _run_spread(old, old, Tolerances()) == RUN_SPREAD
    assert _run_spread(old, new, Tolerances()) == 0.02
    assert _run_spread(old, new, Tolerances(run_spread=0.0)) == 0.0


def test_speedup_holds_when_the_whole_machine_is_slower(tmp_path, capsys):
    """Both the case and its paired base 40 % slower (another session, a busier host): no change."""
    base = with_evidence(fixture(), seed=1)
    slower = with_evidence(fixture(), seed=2)
    scale_rounds(slower, 1.4, base_too=True)
    a, b_ = write(tmp_path, "a.json", base), write(tmp_path, "b.json", slower)
    assert run(capsys, a, b_)[0] == 0
    assert run(capsys, a, b_, "--latency-metric", "absolute")[0] == 1  # the absolute metric sees it


def test_latency_across_machines_is_advisory_unless_asked(tmp_path, capsys):
    base = with_evidence(fixture(), seed=1)
    other = with_evidence(fixture(), seed=2)
    for b in other["benchmarks"]:
        b["extra_info"].update(cpu_model="Other CPU", device_name="Other CPU")
    scale_rounds(other, 1.25, conv50(other))
    a, b_ = write(tmp_path, "a.json", base), write(tmp_path, "b.json", other)
    code, out, _ = run(capsys, a, b_)
    assert code == 0 and "latency regressed (advisory)" in out and "the runs come from different machines" in out
    assert run(capsys, a, b_, "--gate-across-machines")[0] == 1
    code, out, _ = run(capsys, a, b_, "--latency-metric", "absolute")
    assert code == 0 and "absolute latency is only compared between runs of one machine" in out


def test_cases_without_rounds_are_not_compared(tmp_path, capsys):
    data = fixture()
    for b in data["benchmarks"]:
        b.pop("stats", None)
        b["extra_info"].update(base_times_s=[], **summarize([], b["extra_info"]["batch_size"]))
    code, out, _ = run(capsys, CPU, write(tmp_path, "untimed.json", data))
    assert code == 0 and "not compared" in out and "regressed" not in out
    code, out, _ = run(capsys, CPU, CPU, "--no-latency")
    assert code == 0 and "latency not checked" in out


# ---------------------------------------------------------------- accuracy

@pytest.mark.parametrize("flips, code", [(2, 0), (12, 1)])
def test_mcnemar_on_the_same_images(tmp_path, capsys, flips, code):
    base = with_evidence(fixture(), seed=1, correct={"*": BASELINE_BITS})
    target = conv50(base)[0]
    cand = with_evidence(fixture(), seed=1, correct={"*": BASELINE_BITS, target: flipped(flips)})
    got, out, _ = run(capsys, write(tmp_path, "a.json", base), write(tmp_path, "b.json", cand))
    assert got == code
    lines = [line for line in out.splitlines() if "top-1 regressed" in line]
    if code:
        assert lines == [f"{target}: top-1 regressed: 97.22 → 93.89 % (-3.33 pp; McNemar: 12 right→wrong, "
                         f"0 wrong→right of 360, p=0.00049)"]
    else:
        assert not lines


def test_a_significant_drop_below_the_tolerance_passes(tmp_path, capsys):
    base = with_evidence(fixture(), seed=1, correct={"*": BASELINE_BITS})
    target = conv50(base)[0]
    cand = with_evidence(fixture(), seed=1, correct={"*": BASELINE_BITS, target: flipped(12)})
    a, b = write(tmp_path, "a.json", base), write(tmp_path, "b.json", cand)
    assert run(capsys, a, b, "--max-accuracy-drop", "0.05")[0] == 0


def test_different_test_sets_fall_back_to_intervals(tmp_path, capsys):
    base = with_evidence(fixture(), seed=1, correct={"*": BASELINE_BITS})
    small = "1" * 90 + "0" * 10  # 90 % on 100 other images: intervals 88.7–98.3 vs 84.3–94.8 overlap? no
    cand = with_evidence(fixture(), seed=1, correct={"*": small})
    for b in cand["benchmarks"]:
        b["extra_info"]["test_fingerprint"] = "other-test-set"
    code, out, _ = run(capsys, write(tmp_path, "a.json", base), write(tmp_path, "b.json", cand))
    assert "different test sets" in out
    b_low = wilson_interval(350, 360)[0]
    c_high = wilson_interval(90, 100)[1]
    assert code == (1 if c_high < b_low else 0)


def test_retrained_on_another_cpu_type_is_advisory(tmp_path, capsys):
    base = with_evidence(fixture(), seed=1, correct={"*": BASELINE_BITS})
    target = conv50(base)[0]
    cand = with_evidence(fixture(), seed=1, correct={"*": BASELINE_BITS, target: flipped(12)})
    for b in cand["benchmarks"]:
        b["extra_info"].update(cpu_model="Other CPU", weights_sha256="0123456789abcdef")
    a, b_ = write(tmp_path, "a.json", base), write(tmp_path, "b.json", cand)
    code, out, _ = run(capsys, a, b_, "--no-latency")
    assert code == 0 and "top-1 regressed (advisory)" in out and "different CPU type" in out
    assert run(capsys, a, b_, "--no-latency", "--gate-across-machines")[0] == 1


def test_lost_accuracy_is_a_regression(tmp_path, capsys):
    data = fixture()
    data["benchmarks"][1]["extra_info"].update(accuracy=None, accuracy_ci=None, correct=None,
                                               accuracy_reason="data missing")
    code, out, _ = run(capsys, CPU, write(tmp_path, "b.json", data))
    assert code == 1 and "top-1 missing (data missing)" in out


# ---------------------------------------------------------------- sizes, one-sided cases, bad input

@pytest.mark.parametrize("field", ["params", "macs"])
def test_any_size_change_is_a_regression(tmp_path, capsys, field):
    data = fixture()
    e = data["benchmarks"][1]["extra_info"]
    e[field] -= 1
    code, out, _ = run(capsys, CPU, write(tmp_path, "b.json", data))
    assert code == 1 and f"{e['case_id']}: sizes regressed: {field} " in out


def test_one_sided_cases_are_listed_and_optionally_fail(tmp_path, capsys):
    data = fixture()
    dropped = data["benchmarks"].pop()["extra_info"]["case_id"]
    path = write(tmp_path, "b.json", data)
    code, out, _ = run(capsys, CPU, path)
    assert code == 0 and f"1 case(s) only in baseline:\n  {dropped}" in out
    assert run(capsys, CPU, path, "--fail-on-missing")[0] == 1
    code, out, _ = run(capsys, path, CPU)
    assert code == 0 and f"1 case(s) only in candidate:\n  {dropped}" in out


def test_runs_from_different_hardware_are_flagged(capsys):
    code, out, _ = run(capsys, CPU, GPU)  # the GPU run's CPU is another machine; its cuda cases are extra
    cuda = sum(1 for b in fixture(GPU)["benchmarks"] if b["extra_info"]["device"] == "cuda")
    assert code == 0
    assert "the runs come from different machines" in out
    assert f"{cuda} case(s) only in candidate" in out


@pytest.mark.parametrize("content, message", [
    ("{", "is not valid JSON"),
    ("[" * 50000 + "]" * 50000, "is not valid JSON"),
    ('{"benchmarks": [{"name": "t", "extra_info": {}}], "machine_info": {}}', "no 'schema' field"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    for args in ((CPU, bad), (bad, CPU)):
        code, out, err = run(capsys, *args)
        assert code == 2 and out == "" and err.count("\n") == 1 and message in err


@pytest.mark.parametrize("edit", [
    lambda e: e.update(latency_p50_ms=-1.0),
    lambda e: e.update(accuracy=97.2, correct=None, accuracy_ci=None),
])
def test_out_of_range_results_are_bad_input_not_a_regression(tmp_path, capsys, edit):
    data = fixture()
    edit(data["benchmarks"][1]["extra_info"])
    code, out, err = run(capsys, CPU, write(tmp_path, "b.json", data))
    assert code == 2 and "out of range" in err


def test_no_common_case_is_bad_input(tmp_path, capsys):
    data = fixture()
    for b in data["benchmarks"]:
        b["extra_info"]["profile"] = "seed"
    code, _, err = run(capsys, CPU, write(tmp_path, "b.json", data))
    assert code == 2 and "no case in common" in err


def test_tolerances_are_checked():
    with pytest.raises(UserError, match="--latency-tolerance"):
        Tolerances(latency_tolerance=-0.1)
    with pytest.raises(UserError, match="--alpha"):
        Tolerances(alpha=1.5)
    with pytest.raises(UserError, match="--run-spread"):
        Tolerances(run_spread=-0.01)
    with pytest.raises(UserError, match="--max-accuracy-drop"):
        compare_files(CPU, CPU, Tolerances(max_accuracy_drop=-0.1))


def test_json_output_lists_verdicts(tmp_path, capsys):
    data = fixture()
    e = data["benchmarks"][1]["extra_info"]
    e["params"] += 1
    code, out, _ = run(capsys, CPU, write(tmp_path, "b.json", data), "--format", "json")
    parsed = json.loads(out)
    assert code == 1 and parsed["regressions"] == 1
    assert [c["case_id"] for c in parsed["cases"] if c["fails"]] == [e["case_id"]]
    (sizes,) = [v for c in parsed["cases"] if c["fails"] for v in c["verdicts"] if v["aspect"] == "sizes"]
    assert sizes["verdict"] == "regressed"


def test_an_unexpected_error_never_exits_with_the_regression_code(monkeypatch, capsys):
    import vggprune.results.compare

    def boom(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(vggprune.results.compare, "compare_files", boom)
    code, out, err = run(capsys, CPU, CPU)
    assert code == 3 and out == "" and err.count("\n") == 1 and "internal error: ZeroDivisionError: a bug" in err
