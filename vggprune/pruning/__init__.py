"""One entry point, :func:`prune`, over two interchangeable surgery backends."""

from __future__ import annotations

from vggprune.models import VGG11, check_vgg11
from vggprune.pruning.by_hand import apply_by_hand
from vggprune.pruning.plan import (
    CRITERIA,
    METHODS,
    SCOPES,
    PruningPlan,
    check_choice,
    check_rate,
    kept_count,
    make_plan,
    model_key,
    parse_rates,
)
from vggprune.pruning.tp_backend import apply_torch_pruning

__all__ = ["CRITERIA", "METHODS", "SCOPES", "PruningPlan", "check_rate", "kept_count", "make_plan", "model_key",
           "parse_rates", "prune"]

_BACKENDS = {"torch-pruning": apply_torch_pruning, "by-hand": apply_by_hand}


def prune(model: VGG11, rate: float, method: str = "torch-pruning", scope: str = "fc",
          criterion: str = "l2", round_to: int = 1, seed: int = 0) -> VGG11:
    """Return a new model with ``floor(n·rate)`` units removed from every in-scope layer.

    ``scope``: ``fc`` (hidden FC layers, never the classifier), ``conv`` (conv channels, with BN and
    downstream inputs following) or ``all``. ``criterion`` ranks units: ``l2``/``l1`` norm of the
    unit's own weights, or a ``random`` baseline seeded by ``seed``. ``round_to`` rounds kept widths
    down to a multiple. The input model is not modified.
    """
    check_choice("method", method, METHODS)
    plan = make_plan(model, rate, scope=scope, criterion=criterion, round_to=round_to, seed=seed)
    return check_vgg11(_BACKENDS[method](model, plan))
