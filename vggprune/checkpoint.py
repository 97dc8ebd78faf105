"""Save and load models as spec + state_dict: no pickled modules, no torch-pruning needed to load."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from vggprune.atomic import atomic_file
from vggprune.errors import UserError
from vggprune.models import VGG11, VGGSpec, check_vgg11

FORMAT = "vggprune-model/1"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically: readers and concurrent runs never see half a checkpoint."""
    with atomic_file(path) as f:
        torch.save(obj, f)
    return Path(path)


def model_payload(model: VGG11, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    check_vgg11(model)
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"format": FORMAT, "spec": model.spec.to_dict(), "state_dict": sd, "extra": extra or {}}


def save_model(model: VGG11, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (any pruned or unpruned VGG11 of ours) so :func:`load_model` can rebuild it."""
    return atomic_torch_save(model_payload(model, extra), path)


def model_from_payload(payload: Any, source: str = "checkpoint") -> VGG11:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{source} is not a vggprune model file (expected format {FORMAT})")
    spec = VGGSpec.from_dict(payload["spec"])
    with torch.device("meta"):
        model = VGG11(spec)
    try:
        model.load_state_dict(payload["state_dict"], assign=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise UserError(f"{source} does not fit its own spec: {' '.join(first[:3])}") from None
    return model.eval()


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[VGG11, dict]:
    """Load a file written by :func:`save_model`; returns ``(model, extra)``. Safe: ``weights_only``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or holds pickled objects
        raise UserError(f"cannot read model file {path}: {type(exc).__name__}: {str(exc)[:200]}") from None
    return model_from_payload(payload, str(path)), payload.get("extra", {})
