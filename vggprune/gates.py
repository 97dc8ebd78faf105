"""The harness's pass/fail rules: exact parameter counts and accuracy thresholds, from committed files.

Each check returns ``None`` when the gate holds, or one sentence saying measured vs required.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vggprune.errors import UserError

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
DEFAULT_THRESHOLDS = BENCH_DIR / "thresholds.json"
DEFAULT_EXPECTED_PARAMS = BENCH_DIR / "expected_params.json"


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{what} file not found: {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{what} file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} file {path} must hold a JSON object")
    return data


@dataclass(frozen=True)
class ExpectedParams:
    counts: dict

    @classmethod
    def load(cls, path: Path | None = None) -> ExpectedParams:
        path = path or DEFAULT_EXPECTED_PARAMS
        data = _read_json(path, "expected parameter counts")
        if not isinstance(data.get("counts"), dict):
            raise UserError(f"expected parameter counts file {path} has no 'counts' object")
        return cls(data["counts"])

    def lookup(self, model: str, num_classes: int, scope: str, rate: float, round_to: int) -> int | None:
        """The committed count, or None when the file does not cover this case."""
        if round_to != 1:
            return None
        scope = "fc" if scope == "none" else scope  # the base: rate 0 is the same count in every scope
        return self.counts.get(f"{model}-{num_classes}", {}).get(scope, {}).get(f"{rate:.2f}")


def check_params(measured: int, expected: int | None) -> str | None:
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
    def load(cls, path: Path | None = None) -> Thresholds:
        data = _read_json(path or DEFAULT_THRESHOLDS, "thresholds")
        return cls({k: v for k, v in data.items() if not k.startswith("_")})

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


def check_accuracy(rule: AccuracyRule, top1: float, base_top1: float | None) -> str | None:
    if top1 < rule.min_top1:
        return f"top-1 {top1:.4f} < required {rule.min_top1:.4f}"
    if rule.max_drop is not None and base_top1 is not None and base_top1 - top1 > rule.max_drop + 1e-12:
        return (f"top-1 drop vs base {base_top1 - top1:.4f} (base {base_top1:.4f}, case {top1:.4f}) "
                f"> allowed {rule.max_drop:.4f}")
    return None
