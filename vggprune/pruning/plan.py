"""The pruning rule, computed once and shared by both backends.

A plan says, for every layer in scope, which output units survive. Both backends apply the same plan,
so "same rule" is true by construction and the tests can focus on whether each backend's surgery is
exact (same shapes, same outputs). All layers are ranked on the *unpruned* model's weights (one-shot):
ranking a later layer after its inputs were cut would make the result depend on pruning order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch

# The choices and their checks live in vggprune.choices (no torch), so the CLI can offer them cheaply.
from vggprune.choices import CRITERIA, METHODS, SCOPES, check_choice, check_rate, parse_rates  # noqa: F401
from vggprune.errors import UserError
from vggprune.identity import BASE, ModelKey
from vggprune.models import VGG11, VGGSpec, check_vgg11


def check_round_to(round_to: object) -> int:
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise UserError(f"round_to must be a positive integer, got {round_to!r}")
    return round_to


def kept_count(n: int, rate: float, round_to: int = 1) -> int:
    """Units kept of ``n`` at ``rate``: n − floor(n·rate), optionally rounded down to a multiple.

    The floor is taken on the rate's decimal value (``Fraction(repr(rate))``), so 0.57 of 100
    removes 57 even though ``100 * 0.57 == 56.99999999999999`` in binary floating point.
    Rounding to a multiple never keeps fewer than ``min(n, round_to)`` units.
    """
    kept = n - math.floor(Fraction(repr(float(rate))) * n)
    if round_to > 1:
        kept = max((kept // round_to) * round_to, min(n, round_to))
    return kept


def unit_scores(weight: torch.Tensor, criterion: str, seed: int, layer_index: int) -> torch.Tensor:
    """One score per output unit (row of a Linear, filter of a conv); lowest is pruned first."""
    flat = weight.detach().reshape(weight.shape[0], -1).to(torch.float64)
    if criterion == "l2":
        return flat.norm(p=2, dim=1)
    if criterion == "l1":
        return flat.abs().sum(dim=1)
    # Seeded random baseline, independent per layer and of the weights' values.
    gen = torch.Generator().manual_seed(seed * 1009 + layer_index)
    return torch.rand(flat.shape[0], generator=gen, dtype=torch.float64)


def keep_indices(scores: torch.Tensor, kept: int) -> torch.Tensor:
    """Indices of the ``kept`` highest-scoring units, ascending.

    A stable sort on the scores makes ties deterministic: among equal scores the lower index is
    ranked lower and so goes first.
    """
    order = torch.sort(scores, stable=True).indices
    return torch.sort(order[len(scores) - kept:]).values


@dataclass(frozen=True)
class PruningPlan:
    """Kept output indices per layer (``None`` = layer untouched) and the spec of the result."""

    conv_keep: tuple[torch.Tensor | None, ...]
    fc_keep: tuple[torch.Tensor | None, ...]  # hidden FC layers only; the classifier is never pruned
    spec: VGGSpec


def make_plan(model: VGG11, rate: float, scope: str = "fc", criterion: str = "l2",
              round_to: int = 1, seed: int = 0) -> PruningPlan:
    """Apply the rule to ``model``: which units of each in-scope layer survive."""
    check_vgg11(model)
    rate = check_rate(rate)
    check_choice("scope", scope, SCOPES)
    check_choice("criterion", criterion, CRITERIA)
    check_round_to(round_to)

    def keep_for(layers: list[torch.nn.Module], in_scope: bool, offset: int) -> tuple:
        if not in_scope:
            return (None,) * len(layers)
        out = []
        for i, layer in enumerate(layers):
            n = layer.weight.shape[0]
            out.append(keep_indices(unit_scores(layer.weight, criterion, seed, offset + i),
                                    kept_count(n, rate, round_to)))
        return tuple(out)

    convs, fcs = model.conv_layers(), model.fc_layers()[:-1]
    conv_keep = keep_for(convs, scope in ("conv", "all"), 0)
    fc_keep = keep_for(fcs, scope in ("fc", "all"), len(convs))
    spec = model.spec.with_widths(
        tuple(len(k) if k is not None else c.out_channels for k, c in zip(conv_keep, convs)),
        tuple(len(k) if k is not None else f.out_features for k, f in zip(fc_keep, fcs)),
    )
    return PruningPlan(conv_keep, fc_keep, spec)


def model_key(method: str, scope: str, rate: float, criterion: str = "l2", round_to: int = 1) -> ModelKey:
    """The checked name of one model (the one place case axes are validated); rate 0 is the base."""
    check_choice("method", method, METHODS)
    check_choice("scope", scope, SCOPES)
    check_choice("criterion", criterion, CRITERIA)
    check_round_to(round_to)
    rate = check_rate(rate)
    return BASE if rate == 0.0 else ModelKey(method, scope, rate, criterion, round_to)
