"""`vggprune compare`: exit 0 within tolerances, 1 on any regression, 2 on bad input; one-sided cases listed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vggprune.cli import main
from vggprune.compare import Tolerances, compare_files
from vggprune.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures"
CPU = FIXTURES / "run_cpu.json"
GPU = FIXTURES / "run_gpu.json"


def candidate(tmp_path: Path, edit_case=None, edit_run=None, src: Path = CPU) -> Path:
    """The baseline with ``edit_case(extra_info)`` applied to its first pruned case (or ``edit_run(data)``)."""
    data = json.loads(src.read_text())
    if edit_case:
        edit_case(next(b["extra_info"] for b in data["benchmarks"] if b["extra_info"]["method"] != "base"))
    if edit_run:
        edit_run(data)
    path = tmp_path / "candidate.json"
    path.write_text(json.dumps(data))
    return path


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["compare", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def first_pruned() -> dict:
    return next(b["extra_info"] for b in json.loads(CPU.read_text())["benchmarks"]
                if b["extra_info"]["method"] != "base")


def test_a_run_against_itself_passes(capsys):
    code, out, _ = run(capsys, CPU, CPU)
    n = len(json.loads(CPU.read_text())["benchmarks"])
    assert code == 0
    assert f"{n} case(s) compared, 0 regression(s)" in out and out.rstrip().endswith("OK")
    assert "REGRESSION" not in out


@pytest.mark.parametrize("drop, code", [(0.009, 0), (0.02, 1)])
def test_accuracy_drop_against_the_tolerance(tmp_path, capsys, drop, code):
    acc = first_pruned()["accuracy"]
    path = candidate(tmp_path, lambda e: e.update(accuracy=acc - drop))
    got, out, _ = run(capsys, CPU, path)
    assert got == code
    assert ("REGRESSION: top-1 −2.00 pp > 1" in out) == (code == 1)


def test_accuracy_tolerance_is_an_option(tmp_path, capsys):
    acc = first_pruned()["accuracy"]
    path = candidate(tmp_path, lambda e: e.update(accuracy=acc - 0.02))
    assert run(capsys, CPU, path, "--max-accuracy-drop", "0.03")[0] == 0


def test_lost_accuracy_is_a_regression(tmp_path, capsys):
    path = candidate(tmp_path, lambda e: e.update(accuracy=None, accuracy_reason="data missing"))
    code, out, _ = run(capsys, CPU, path)
    assert code == 1 and "top-1 missing (data missing)" in out


@pytest.mark.parametrize("field", ["params", "macs"])
def test_any_size_change_is_a_regression(tmp_path, capsys, field):
    path = candidate(tmp_path, lambda e: e.update({field: e[field] - 1}))
    code, out, _ = run(capsys, CPU, path)
    assert code == 1 and f"REGRESSION: {field} " in out


def test_latency_ratio_and_no_latency(tmp_path, capsys):
    path = candidate(tmp_path, lambda e: e.update(latency_p50_ms=2 * e["latency_p50_ms"]))
    code, out, _ = run(capsys, CPU, path)
    assert code == 1 and "p50 ×2.00 > 1.5" in out
    assert run(capsys, CPU, path, "--max-latency-ratio", "2.5")[0] == 0
    code, out, _ = run(capsys, CPU, path, "--no-latency")
    assert code == 0 and "latency not checked" in out


def test_a_different_memory_format_is_noted(tmp_path, capsys):
    path = candidate(tmp_path, edit_run=lambda d: [b["extra_info"].update(memory_format="contiguous")
                                                   for b in d["benchmarks"]])
    code, out, _ = run(capsys, CPU, path)
    assert code == 0 and "cpu latency compares different memory formats: baseline 'channels_last'" in out


def test_missing_latency_is_noted_not_judged(tmp_path, capsys):
    path = candidate(tmp_path, lambda e: e.update(latency_p50_ms=None))
    code, out, _ = run(capsys, CPU, path)
    assert code == 0 and "latency not compared for 1 case(s)" in out


def test_faster_candidate_is_not_a_regression(tmp_path, capsys):
    path = candidate(tmp_path, lambda e: e.update(latency_p50_ms=e["latency_p50_ms"] / 10))
    assert run(capsys, CPU, path)[0] == 0


def test_one_sided_cases_are_listed_and_optionally_fail(tmp_path, capsys):
    dropped = json.loads(CPU.read_text())["benchmarks"][-1]["extra_info"]["case_id"]
    path = candidate(tmp_path, edit_run=lambda d: d["benchmarks"].pop())
    code, out, _ = run(capsys, CPU, path)
    assert code == 0 and f"1 case(s) only in baseline:\n  {dropped}" in out
    assert run(capsys, CPU, path, "--fail-on-missing")[0] == 1
    code, out, _ = run(capsys, path, CPU)  # the other way round: listed as only in candidate
    assert code == 0 and f"1 case(s) only in candidate:\n  {dropped}" in out


def test_runs_from_different_hardware_are_flagged(capsys):
    code, out, _ = run(capsys, CPU, GPU)  # the GPU run's CPU is faster; its cuda cases are extra
    cuda = sum(1 for b in json.loads(GPU.read_text())["benchmarks"] if b["extra_info"]["device"] == "cuda")
    assert code == 0
    assert "cpu latency compares different hardware" in out
    assert f"{cuda} case(s) only in candidate" in out


@pytest.mark.parametrize("content, message", [
    ("{", "is not JSON"),
    ('{"benchmarks": [{"name": "t", "extra_info": {}}], "machine_info": {}}', "lacks contract fields"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    for args in ((CPU, bad), (bad, CPU)):
        code, out, err = run(capsys, *args)
        assert code == 2 and out == "" and err.count("\n") == 1 and message in err


def test_no_common_case_is_bad_input(tmp_path, capsys):
    path = candidate(tmp_path, edit_run=lambda d: [b["extra_info"].update(profile="seed") for b in d["benchmarks"]])
    code, _, err = run(capsys, CPU, path)
    assert code == 2 and "no case in common" in err


def test_tolerances_are_checked():
    with pytest.raises(UserError, match="--max-latency-ratio"):
        Tolerances(max_latency_ratio=0)
    with pytest.raises(UserError, match="--max-accuracy-drop"):
        compare_files(CPU, CPU, Tolerances(max_accuracy_drop=-0.1))


def test_json_output_lists_problems(tmp_path, capsys):
    path = candidate(tmp_path, lambda e: e.update(params=e["params"] + 1))
    code, out, _ = run(capsys, CPU, path, "--format", "json")
    data = json.loads(out)
    assert code == 1 and data["regressions"] == 1
    assert [c["case_id"] for c in data["cases"] if c["problems"]] == [first_pruned()["case_id"]]
