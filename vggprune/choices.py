"""The names a user can choose between, and their checks, without importing torch.

The command line builds its parsers from these (``vggprune report`` and ``compare`` must not pay for
torch); vggprune.pruning and vggprune.models re-export them.
"""

from __future__ import annotations

import math

from vggprune.errors import UserError

VARIANTS = ("seed", "torchvision", "small")
METHODS = ("torch-pruning", "by-hand")
SCOPES = ("fc", "conv", "all")
CRITERIA = ("l2", "l1", "random")


def check_rate(rate: object) -> float:
    """Return ``rate`` as a float in [0, 1) or raise a ValueError naming it."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        try:  # numpy / torch scalars are fine, strings and containers are not
            if isinstance(rate, (str, bytes)) or not hasattr(rate, "__float__"):
                raise TypeError
            rate = float(rate)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise UserError(f"rate must be a number in [0, 1), got {rate!r}") from None
    rate = float(rate)
    if not math.isfinite(rate) or not 0.0 <= rate < 1.0:
        raise UserError(f"rate must be a number in [0, 1), got {rate!r}")
    return rate


def parse_rates(text: str) -> list[float]:
    """``"0,0.1,0.5"`` → ``[0.0, 0.1, 0.5]``, each checked by :func:`check_rate` (order kept)."""
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise UserError(f"expected a comma-separated list of rates in [0, 1), got {text!r}")
    rates = []
    for item in items:
        try:
            value = float(item)
        except ValueError:
            raise UserError(f"rate must be a number in [0, 1), got {item!r}") from None
        rates.append(check_rate(value))
    return rates


def check_choice(kind: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise UserError(f"unknown {kind} {value!r}; allowed: {', '.join(allowed)}")
    return value  # type: ignore[return-value]
