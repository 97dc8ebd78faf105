"""The harness's pass/fail rules: exact parameter counts and accuracy thresholds, from committed files.

The caller says where the files are (bench/conftest.py passes its own); :meth:`load` checks each
file's whole schema and value ranges up front, so a corrupt file is one usage error before any work
and a NaN or empty entry can never switch a gate off. Each check returns ``None`` when the gate
holds, or one sentence saying measured vs required; a value that cannot be compared fails.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vggprune.errors import UserError

_RATE_KEY = re.compile(r"^0\.\d\d$")
_SCOPES = ("fc", "conv", "all")


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
                raise UserError(f"{where} must be a non-empty object (delete the profile to leave it ungated)")
            unknown = sorted(set(entry) - {"base_min_top1", "scopes"})
            if unknown:
                raise UserError(f"{where} has unknown keys {', '.join(unknown)}; allowed: base_min_top1, scopes")
            if "base_min_top1" in entry:
                _fraction(entry["base_min_top1"], f"{where}.base_min_top1")
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


def _fraction(value: Any, where: str) -> float:
    """A gate value: a finite number in [0, 1] (top-1 is a fraction, not a percentage)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise UserError(f"{where} = {value!r} is not a number in [0, 1] (a fraction, not a percentage)")
    return float(value)


def _measurable(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and 0.0 <= value <= 1.0


def check_accuracy(rule: AccuracyRule, top1: float, base_top1: float | None) -> str | None:
    # A gate that cannot be evaluated never passes: NaN compares False with everything.
    if not _measurable(top1):
        return f"top-1 {top1!r} cannot be gated (not a fraction in [0, 1])"
    if rule.max_drop is not None and base_top1 is not None and not _measurable(base_top1):
        return f"base top-1 {base_top1!r} cannot be gated (not a fraction in [0, 1])"
    if top1 < rule.min_top1:
        return f"top-1 {top1:.4f} < required {rule.min_top1:.4f}"
    if rule.max_drop is not None and base_top1 is not None and base_top1 - top1 > rule.max_drop + 1e-12:
        return (f"top-1 drop vs base {base_top1 - top1:.4f} (base {base_top1:.4f}, case {top1:.4f}) "
                f"> allowed {rule.max_drop:.4f}")
    return None
