"""The harness's pass/fail rules: exact parameter counts and accuracy gates.

Two accuracy gates hold for every profile, with or without a thresholds entry: the base must beat
chance (:func:`check_learned`: a one-sided exact binomial test against the largest class's share of
the test split), and each pruned case must not lose more than an allowed drop against its base on the
same images (:func:`check_pruning_cost`: McNemar's exact test plus the tolerance, as `vggprune
compare` judges top-1). A thresholds file adds minimum top-1 values and can change the allowed drop.

The caller says where the files are (bench/conftest.py passes its own); :meth:`load` checks each
file's whole schema and value ranges up front, so a corrupt file is one usage error before any work
and a NaN or empty entry can never switch a gate off. Each check returns ``None`` when the gate
holds, or one sentence saying measured vs required; a value that cannot be compared fails.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vggprune.errors import UserError

_RATE_KEY = re.compile(r"^0\.\d\d$")
_SCOPES = ("fc", "conv", "all")
LEARNED_ALPHA = 0.01  # a base "learned" when its top-1 beats chance at this one-sided level
PRUNING_ALPHA = 0.05  # a pruned case's drop is real at this two-sided McNemar level (compare's default)
DEFAULT_MAX_DROP = 0.05  # allowed top-1 drop vs the base where neither the file nor --max-accuracy-drop says


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{what} file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise UserError(f"{what} file {path} is not valid JSON: {str(exc)[:160]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} file {path} must hold a JSON object")
    return data


@dataclass(frozen=True)
class ExpectedParams:
    counts: dict

    @classmethod
    def load(cls, path: Path) -> ExpectedParams:
        data = _read_json(path, "expected parameter counts")
        counts = data.get("counts")
        if not isinstance(counts, dict):
            raise UserError(f"expected parameter counts file {path} has no 'counts' object")
        for model, scopes in counts.items():
            where = f"expected parameter counts file {path}: counts.{model}"
            if not isinstance(scopes, dict) or not scopes:
                raise UserError(f"{where} must be a non-empty object of scopes")
            for scope, rates in scopes.items():
                if scope not in _SCOPES or not isinstance(rates, dict) or not rates:
                    raise UserError(f"{where}.{scope} must be one of {', '.join(_SCOPES)} holding a "
                                    f"non-empty object of rates")
                for rate, count in rates.items():
                    if not _RATE_KEY.match(rate):
                        raise UserError(f"{where}.{scope}: rate key {rate!r} is not like '0.30'")
                    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                        raise UserError(f"{where}.{scope}.{rate} = {count!r} is not a positive integer")
        return cls(counts)

    def lookup(self, model: str, num_classes: int, scope: str, rate: float, round_to: int) -> int | None:
        """The committed count, or None when the file does not cover this case."""
        if round_to != 1:
            return None
        scope = "fc" if scope == "none" else scope  # the base: rate 0 is the same count in every scope
        return self.counts.get(f"{model}-{num_classes}", {}).get(scope, {}).get(f"{rate:.2f}")


def check_params(measured: int, expected: int | None) -> str | None:
    if not isinstance(measured, int) or isinstance(measured, bool) or measured < 1:
        return f"parameter count {measured!r} cannot be checked"
    if expected is not None and measured != expected:
        return f"parameter count {measured:,} != expected {expected:,} (diff {measured - expected:+,})"
    return None


@dataclass(frozen=True)
class AccuracyRule:
    min_top1: float
    max_drop: float | None  # allowed top-1 drop vs the base, absolute


@dataclass(frozen=True)
class Thresholds:
    profiles: dict

    @classmethod
    def load(cls, path: Path) -> Thresholds:
        data = _read_json(path, "thresholds")
        profiles = {k: v for k, v in data.items() if not k.startswith("_")}
        for name, entry in profiles.items():
            where = f"thresholds file {path}: {name}"
            if not isinstance(entry, dict) or not entry:
                raise UserError(f"{where} must be a non-empty object (delete the profile to keep only the "
                                f"default gates)")
            unknown = sorted(set(entry) - {"base_min_top1", "max_drop", "scopes"})
            if unknown:
                raise UserError(f"{where} has unknown keys {', '.join(unknown)}; allowed: base_min_top1, "
                                f"max_drop, scopes")
            for key in ("base_min_top1", "max_drop"):
                if key in entry:
                    _fraction(entry[key], f"{where}.{key}")
            scopes = entry.get("scopes", {})
            if not isinstance(scopes, dict):
                raise UserError(f"{where}.scopes must be an object")
            for scope, rule in scopes.items():
                if scope not in _SCOPES:
                    raise UserError(f"{where}.scopes: unknown scope {scope!r}; allowed: {', '.join(_SCOPES)}")
                if not isinstance(rule, dict) or "min_top1" not in rule:
                    raise UserError(f"{where}.scopes.{scope} needs a min_top1 (and may have max_drop)")
                unknown = sorted(set(rule) - {"min_top1", "max_drop"})
                if unknown:
                    raise UserError(f"{where}.scopes.{scope} has unknown keys {', '.join(unknown)}")
                _fraction(rule["min_top1"], f"{where}.scopes.{scope}.min_top1")
                if rule.get("max_drop") is not None:
                    _fraction(rule["max_drop"], f"{where}.scopes.{scope}.max_drop")
        return cls(profiles)

    def rule(self, profile: str, scope: str) -> AccuracyRule | None:
        """``scope="none"`` is the base model; None when the file sets no gate for this case."""
        entry = self.profiles.get(profile)
        if not entry:
            return None
        if scope == "none":
            base = entry.get("base_min_top1")
            return None if base is None else AccuracyRule(float(base), None)
        rule = entry.get("scopes", {}).get(scope)
        if rule is None:
            return None
        drop = rule.get("max_drop")
        return AccuracyRule(float(rule["min_top1"]), None if drop is None else float(drop))

    def max_drop(self, profile: str, scope: str, override: float | None = None) -> float:
        """The allowed top-1 drop vs the base: ``override`` (--max-accuracy-drop), else the scope's
        ``max_drop``, else the profile's, else :data:`DEFAULT_MAX_DROP`."""
        if override is not None:
            return float(override)
        entry = self.profiles.get(profile) or {}
        rule = self.rule(profile, scope) if scope != "none" else None
        if rule is not None and rule.max_drop is not None:
            return rule.max_drop
        return float(entry.get("max_drop", DEFAULT_MAX_DROP))


def _fraction(value: Any, where: str) -> float:
    """A gate value: a finite number in [0, 1] (top-1 is a fraction, not a percentage)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise UserError(f"{where} = {value!r} is not a number in [0, 1] (a fraction, not a percentage)")
    return float(value)


def _measurable(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and 0.0 <= value <= 1.0


def check_accuracy(rule: AccuracyRule, top1: float) -> str | None:
    """The thresholds file's minimum top-1 (the drop vs the base is :func:`check_pruning_cost`'s)."""
    # A gate that cannot be evaluated never passes: NaN compares False with everything.
    if not _measurable(top1):
        return f"top-1 {top1!r} cannot be gated (not a fraction in [0, 1])"
    if top1 < rule.min_top1:
        return f"top-1 {top1:.4f} < required {rule.min_top1:.4f}"
    return None


def chance_level(labels: Sequence[int]) -> float:
    """What always answering the commonest class scores: its share of ``labels`` (the test split's)."""
    if not labels:
        raise ValueError("chance needs at least one label")
    counts: dict[int, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return max(counts.values()) / len(labels)


def _pct_interval(correct: str) -> str:
    from vggprune.stats import correct_interval

    low, high = correct_interval(correct)  # type: ignore[misc]
    return f"{100 * correct.count('1') / len(correct):.1f} % (95 % CI {100 * low:.1f}–{100 * high:.1f} %, " \
           f"{correct.count('1')}/{len(correct)})"


def check_learned(correct: str | None, chance: float, alpha: float = LEARNED_ALPHA) -> str | None:
    """None when the base's top-1 beats ``chance`` by a one-sided exact binomial test at ``alpha``,
    else one line: its top-1 and interval, chance, and what to try. A base that cannot be judged fails."""
    from scipy.stats import binomtest

    from vggprune.stats import check_correct

    try:
        check_correct(correct)  # type: ignore[arg-type]
    except ValueError as exc:
        return f"cannot tell whether the base learned: {exc}"
    if not (isinstance(chance, (int, float)) and 0.0 < chance < 1.0):
        return f"cannot tell whether the base learned: chance {chance!r} is not a fraction in (0, 1)"
    hits, n = correct.count("1"), len(correct)  # type: ignore[union-attr]
    p = float(binomtest(hits, n, chance, alternative="greater").pvalue)
    if p < alpha:
        return None
    if float(binomtest(n, n, chance, alternative="greater").pvalue) >= alpha:
        return (f"the test split ({n} images, chance {100 * chance:.1f} %) is too small to show that any model "
                f"learned: even 100 % would not beat chance at alpha {alpha:g}; add test images")
    return (f"the base did not learn: top-1 {_pct_interval(correct)} does not beat chance {100 * chance:.1f} % "
            f"(the largest class's share of the test split; one-sided binomial p={p:.2g}, needs < {alpha:g}); "
            f"try more --epochs, another --augment or a different --lr")


def check_pruning_cost(base_correct: str | None, case_correct: str | None, max_drop: float,
                       alpha: float = PRUNING_ALPHA) -> str | None:
    """None unless the pruned case scores more than ``max_drop`` below its base on the same images *and*
    McNemar's exact test finds the difference significant at ``alpha`` (a small test split's noise is
    not a pruning cost); a pair that cannot be compared fails."""
    from vggprune.stats import mcnemar_exact

    try:
        test = mcnemar_exact(base_correct, case_correct)  # type: ignore[arg-type]
    except ValueError as exc:
        return f"cannot compare with the base: {exc}"
    drop = -test.difference
    if drop > max_drop + 1e-12 and test.p_value < alpha:
        return (f"top-1 drop vs base {100 * drop:.1f} pp (base {_pct_interval(base_correct)}, case "  # type: ignore[arg-type]
                f"{_pct_interval(case_correct)}) > allowed {100 * max_drop:g} pp, and significant (McNemar: "  # type: ignore[arg-type]
                f"{test.b} right→wrong, {test.c} wrong→right, p={test.p_value:.2g} < {alpha:g}); "
                f"--max-accuracy-drop changes the allowance")
    return None
