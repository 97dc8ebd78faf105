"""The harness's gates: committed expected counts match the arithmetic; thresholds say measured vs required."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.arith import expected_table
from vggprune.errors import UserError
from vggprune.gates import (
    DEFAULT_MAX_DROP,
    AccuracyRule,
    ExpectedParams,
    Thresholds,
    chance_level,
    check_accuracy,
    check_learned,
    check_params,
    check_pruning_cost,
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
    assert check_accuracy(rule, 0.96) is None
    assert check_accuracy(rule, 0.94) == "top-1 0.9400 < required 0.9500"


def test_allowed_drop_comes_from_the_option_then_the_scope_then_the_profile_then_the_default(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"quick": {"max_drop": 0.1, "scopes": {"fc": {"min_top1": 0.9, "max_drop": 0.02}}},
                                "seed": {"base_min_top1": 0.5}}))
    t = Thresholds.load(path)
    assert t.max_drop("quick", "fc") == 0.02  # the scope's own
    assert t.max_drop("quick", "conv") == 0.1  # the profile's, for scopes without one
    assert t.max_drop("quick", "fc", override=0.3) == 0.3  # --max-accuracy-drop wins
    assert t.max_drop("seed", "fc") == t.max_drop("imagefolder", "fc") == DEFAULT_MAX_DROP
    committed = Thresholds.load(DEFAULT_THRESHOLDS)
    assert committed.max_drop("imagefolder", "fc") == DEFAULT_MAX_DROP  # applies with no entry at all


# --- "it learned": the base beats chance (largest class's share), one-sided exact binomial, alpha 0.01 ----

def test_chance_is_the_largest_class_share():
    assert chance_level([0, 1, 2, 3]) == 0.25
    assert chance_level([0, 0, 0, 1]) == 0.75  # always answering class 0 scores 75 %


def test_a_base_at_chance_fails_with_its_interval_chance_and_what_to_try():
    # A model that learned nothing: 32 of 240 right on 10 balanced classes (13.3 %) is not learning.
    message = check_learned("1" * 32 + "0" * 208, 0.10)
    assert message is not None and "\n" not in message
    assert "top-1 13.3 % (95 % CI 9.6–18.2 %, 32/240)" in message and "chance 10.0 %" in message
    for advice in ("--epochs", "--augment", "--lr"):
        assert advice in message


def test_the_learned_gate_is_the_exact_binomial_at_alpha_001():
    from scipy.stats import binomtest

    n, chance = 240, 0.10
    # the smallest count that passes is the first whose one-sided p-value drops below 0.01
    first = next(k for k in range(n + 1) if binomtest(k, n, chance, alternative="greater").pvalue < 0.01)
    assert 30 < first < 40
    assert check_learned("1" * first + "0" * (n - first), chance) is None
    assert check_learned("1" * (first - 1) + "0" * (n - first + 1), chance) is not None
    # against a skewed test split, 70 % is what always answering the big class gets: not learning
    assert check_learned("1" * 168 + "0" * 72, 0.70) is not None


def test_a_test_split_too_small_to_show_learning_says_so():
    assert "too small to show" in check_learned("1111", 0.5)  # even 4/4 has p = 1/16 > 0.01


@pytest.mark.parametrize("correct, chance", [(None, 0.1), ("", 0.1), ("10x", 0.1), ("1" * 50, float("nan")),
                                             ("1" * 50, 1.0)])
def test_a_learned_gate_that_cannot_be_evaluated_never_passes(correct, chance):
    assert check_learned(correct, chance) is not None


# --- "pruning cost": McNemar on the same images, plus the allowed drop -------------------------------

def test_pruning_cost_needs_a_drop_beyond_the_allowance_and_a_significant_mcnemar():
    base = "1" * 200 + "0" * 40
    same = base
    assert check_pruning_cost(base, same, 0.05) is None
    # 30 right→wrong, none back: 12.5 pp lower, p tiny
    worse = "0" * 30 + base[30:]
    message = check_pruning_cost(base, worse, 0.05)
    assert message is not None and "12.5 pp" in message and "30 right→wrong, 0 wrong→right" in message
    assert "--max-accuracy-drop" in message and "\n" not in message
    assert check_pruning_cost(base, worse, 0.15) is None  # within a larger allowance
    # a net 6-image drop (2.5 pp) beyond a zero allowance, but 8 right→wrong vs 2 wrong→right is p = 0.11
    noisy = "0" * 8 + base[8:200] + "11" + base[202:]
    assert check_pruning_cost(base, noisy, 0.0) is None


@pytest.mark.parametrize("case", [None, "1" * 10, "1" * 239 + "x"])
def test_a_pruning_cost_that_cannot_be_evaluated_never_passes(case):
    assert check_pruning_cost("1" * 240, case, 0.05) is not None


@pytest.mark.parametrize("content, message", [("{not json", "is not valid JSON"),
                                              ("[1, 2]", "must hold a JSON object")])
def test_broken_files_are_clear_errors(tmp_path, content, message):
    bad = tmp_path / "t.json"
    bad.write_text(content)
    with pytest.raises(UserError, match=message):
        Thresholds.load(bad)
    with pytest.raises(UserError, match="not found"):
        ExpectedParams.load(tmp_path / "missing.json")
