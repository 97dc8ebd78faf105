"""Save and load models as spec + state_dict: no pickled modules, no torch-pruning needed to load.

:func:`model_from_payload` is the one validator of a model file's contents, used for ``--input``,
``--checkpoint``, ``--weights`` and cache entries alike: anything but the exact layout is refused as
"not a vggprune model file" with one line, never a KeyError or TypeError from deep inside.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from vggprune.atomic import atomic_file, deferred_signals, write_failure
from vggprune.errors import UserError
from vggprune.models import VARIANTS, VGG11, VGGSpec, check_vgg11

FORMAT = "vggprune-model/1"
_PAYLOAD_KEYS = {"format", "spec", "state_dict", "extra"}
# spec field -> (type check, what it must be)
_SPEC_FIELDS: dict[str, tuple[Any, str]] = {
    "variant": (lambda v: v in VARIANTS, f"one of {', '.join(VARIANTS)}"),
    "num_classes": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "conv_widths": (lambda v: _int_list(v), "a list of positive integers"),
    "fc_widths": (lambda v: _int_list(v, allow_empty=True), "a list of positive integers"),
    "pool_size": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "input_size": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "dropout": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1, "in [0, 1)"),
    "fc_activations": (lambda v: isinstance(v, list) and all(isinstance(a, bool) for a in v), "a list of bools"),
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_list(v: Any, allow_empty: bool = False) -> bool:
    return isinstance(v, list) and (allow_empty or bool(v)) and all(_is_int(w) and w >= 1 for w in v)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically: readers and concurrent runs never see half a checkpoint.

    SIGINT/SIGTERM wait for the write to end (then interrupt), so neither a RuntimeError from inside
    torch's writer nor a half-written temporary file is left behind. A failed write (a full disk) is
    raised as its OSError, naming ``path``, not as the RuntimeError torch's writer wraps it in.
    """
    try:
        with deferred_signals(), atomic_file(path) as f:
            torch.save(obj, f)
    except RuntimeError as exc:
        failure = write_failure(exc)
        if failure is None:
            raise
        raise OSError(failure.errno, failure.strerror, str(path)) from None
    return Path(path)


def model_payload(model: VGG11, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    check_vgg11(model)
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"format": FORMAT, "spec": model.spec.to_dict(), "state_dict": sd, "extra": extra or {}}


def save_model(model: VGG11, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (any pruned or unpruned VGG11 of ours) so :func:`load_model` can rebuild it.

    A write failure is a UserError naming the path (callers check the path first: check_output_file).
    """
    try:
        return atomic_torch_save(model_payload(model, extra), path)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


def check_payload(payload: Any, source: str = "checkpoint") -> VGGSpec:
    """The payload's spec if it is exactly a vggprune model file, else one UserError saying why not."""
    def refuse(why: str) -> UserError:
        return UserError(f"{source} is not a vggprune model file ({FORMAT}): {why}")

    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise refuse("no format tag")
    keys = set(payload)
    if keys - {"extra"} != _PAYLOAD_KEYS - {"extra"} or keys - _PAYLOAD_KEYS:
        raise refuse(f"top-level keys {sorted(map(str, keys))}, expected {sorted(_PAYLOAD_KEYS)}")
    spec, sd = payload["spec"], payload["state_dict"]
    if not isinstance(payload.get("extra", {}), dict):
        raise refuse("'extra' is not a dict")
    if not isinstance(spec, dict) or set(spec) - set(_SPEC_FIELDS) or \
            set(_SPEC_FIELDS) - {"dropout", "fc_activations"} - set(spec):
        raise refuse(f"its spec must be a dict with keys {', '.join(_SPEC_FIELDS)}")
    for name, value in spec.items():
        ok, what = _SPEC_FIELDS[name]
        if not ok(value):
            raise refuse(f"spec.{name} = {str(value)[:60]!r} is not {what}")
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                     for k, v in sd.items()):
        raise refuse("its state_dict is not a non-empty dict of tensors")
    bad = [k for k, v in sd.items() if not k.endswith("num_batches_tracked") and not v.is_floating_point()]
    if bad:
        raise refuse(f"non-float tensors in its state_dict ({', '.join(bad[:3])})")
    try:
        return VGGSpec.from_dict(spec)
    except (UserError, TypeError, ValueError) as exc:
        raise refuse(f"its spec is inconsistent: {exc}") from None


def model_from_payload(payload: Any, source: str = "checkpoint") -> VGG11:
    spec = check_payload(payload, source)
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
        # torch's message suggests weights_only=False, i.e. running the file's code: never pass that on.
        raise UserError(f"cannot read model file {path}: it is not a vggprune model file "
                        f"({type(exc).__name__} when read safely)") from None
    return model_from_payload(payload, str(path)), payload.get("extra", {})
