"""`vggprune calibration`: how often each run's speed-up CI holds the median over same-code runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vggprune.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "run_cpu.json"


def runs_with(tmp_path: Path, speedups: list[float], cis: list[tuple[float, float]]) -> list[Path]:
    """One copy of the fixture run per speed-up, every conv case at batch 64 given that speed-up and CI."""
    paths = []
    for i, (speedup, ci) in enumerate(zip(speedups, cis)):
        data = json.loads(FIXTURE.read_text())
        for bench in data["benchmarks"]:
            e = bench["extra_info"]
            if e["scope"] == "conv" and e["batch_size"] == 64:
                e.update(measured_speedup=speedup, measured_speedup_ci=list(ci))
        paths.append(tmp_path / f"run{i}.json")
        paths[-1].write_text(json.dumps(data))
    return paths


def conv_cases_at_64() -> int:
    data = json.loads(FIXTURE.read_text())
    return sum(b["extra_info"]["scope"] == "conv" and b["extra_info"]["batch_size"] == 64 for b in data["benchmarks"])


def test_coverage_counts_the_cis_that_hold_the_median_of_the_runs(tmp_path, capsys):
    # speed-ups 1.0..1.4: the median is 1.2; only the third run's narrow CI and the first run's wide
    # one hold it, so 2 of 5 runs cover every case
    paths = runs_with(tmp_path, [1.0, 1.1, 1.2, 1.3, 1.4],
                      [(0.8, 1.3), (1.05, 1.15), (1.15, 1.25), (1.25, 1.35), (1.35, 1.45)])
    n = conv_cases_at_64()
    assert n == 4
    code = main(["calibration", *map(str, paths)])
    out = capsys.readouterr().out
    assert code == 0
    assert f"coverage: {2 * n}/{5 * n} = 40.0%" in out
    assert out.count("2/5") == n
    assert "-fc-" not in out and "-b1" not in out  # only conv and all cases, at the largest batch size


def test_min_coverage_fails_the_command_below_it(tmp_path, capsys):
    paths = runs_with(tmp_path, [1.0, 1.1, 1.2], [(0.9, 1.3), (1.0, 1.3), (1.1, 1.3)])
    assert main(["calibration", *map(str, paths), "--min-coverage", "0.9"]) == 0  # 3 of 3 hold 1.1
    paths = runs_with(tmp_path, [1.0, 1.1, 1.2], [(0.9, 1.05), (1.0, 1.3), (1.15, 1.3)])
    assert main(["calibration", *map(str, paths), "--min-coverage", "0.9"]) == 1  # 1 of 3
    assert "33.3%" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["RUN", "RUN"], "at least 3 runs"),
    (["RUN", "RUN", "RUN", "--scopes", "head"], "unknown scope 'head'"),
    (["RUN", "RUN", "RUN", "--batch-size", "7"], "no timed conv/all case at batch size 7"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys):
    code = main(["calibration", *[str(FIXTURE) if a == "RUN" else a for a in args]])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1
