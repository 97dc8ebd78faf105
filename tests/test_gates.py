"""The harness's gates: committed expected counts match the arithmetic; thresholds say measured vs required."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.arith import expected_table
from vggprune.errors import UserError
from vggprune.gates import (
    AccuracyRule,
    ExpectedParams,
    Thresholds,
    check_accuracy,
    check_params,
)

BENCH = Path(__file__).resolve().parent.parent / "bench"  # the library no longer knows where bench/ is
DEFAULT_EXPECTED_PARAMS = BENCH / "expected_params.json"
DEFAULT_THRESHOLDS = BENCH / "thresholds.json"


def test_committed_expected_params_are_the_arithmetic_table():
    # If this fails, the rule or the models changed: regenerate with `python -m tests.arith` and review.
    assert json.loads(DEFAULT_EXPECTED_PARAMS.read_text()) == expected_table()


def test_lookup_and_params_check():
    table = ExpectedParams.load(DEFAULT_EXPECTED_PARAMS)
    assert table.lookup("seed", 102, "none", 0.0, 1) == 132_970_942  # the base is rate 0 of any scope
    assert table.lookup("small", 10, "conv", 0.3, 1) == expected_table()["counts"]["small-10"]["conv"]["0.30"]
    assert table.lookup("small", 10, "conv", 0.3, 8) is None  # round_to is not in the file
    assert table.lookup("small", 7, "fc", 0.3, 1) is None
    assert check_params(100, 100) is None and check_params(100, None) is None
    assert check_params(1_000_001, 1_000_000) == "parameter count 1,000,001 != expected 1,000,000 (diff +1)"


def test_thresholds_rules_and_messages(tmp_path):
    t = Thresholds.load(DEFAULT_THRESHOLDS)
    assert t.rule("quick", "none").min_top1 == 0.97 and t.rule("quick", "none").max_drop is None
    assert t.rule("quick", "fc").min_top1 == 0.95
    assert t.rule("imagefolder", "fc") is None and t.rule("seed", "conv") is None
    rule = AccuracyRule(0.95, 0.02)
    assert check_accuracy(rule, 0.96, 0.97) is None
    assert check_accuracy(rule, 0.94, 0.95) == "top-1 0.9400 < required 0.9500"
    assert check_accuracy(rule, 0.955, 0.99) == ("top-1 drop vs base 0.0350 (base 0.9900, case 0.9550) "
                                                 "> allowed 0.0200")


@pytest.mark.parametrize("content, message", [("{not json", "is not valid JSON"),
                                              ("[1, 2]", "must hold a JSON object")])
def test_broken_files_are_clear_errors(tmp_path, content, message):
    bad = tmp_path / "t.json"
    bad.write_text(content)
    with pytest.raises(UserError, match=message):
        Thresholds.load(bad)
    with pytest.raises(UserError, match="not found"):
        ExpectedParams.load(tmp_path / "missing.json")
