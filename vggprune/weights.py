"""Where a base model's starting weights come from: ImageNet, a local file, or a seeded random init.

The ``seed`` and ``torchvision`` variants use torchvision's module names, so torchvision's ImageNet
``vgg11_bn`` weights load straight in; only the task head (the final classifier) keeps its fresh init.
The weights are fetched through torchvision's weights API (cached by torch hub) when they can be had;
offline, or for the ``small`` variant, the model starts from a seeded random init instead, and the
reason is recorded so nobody mistakes a random model for a pretrained one.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vggprune.checkpoint import FORMAT, check_payload
from vggprune.env import WEIGHTS_ENV, env_value
from vggprune.errors import UserError
from vggprune.models import VGG11, VGGSpec, build_from_spec

PRETRAINABLE = ("seed", "torchvision")  # variants laid out exactly like torchvision's vgg11_bn
_SHOWN_KEYS = 5


@dataclass(frozen=True)
class InitSource:
    """How to initialise a base model; ``identity`` goes into the checkpoint cache key."""

    kind: str  # "random" | "imagenet" | "file"
    identity: dict[str, Any]
    path: Path | None = None
    note: str = ""  # why ImageNet weights were not used, when they were wanted


def resolve_weights_path(weights: str | os.PathLike | None) -> Path | None:
    """The explicit ``--weights`` option wins, then ``VGGPRUNE_WEIGHTS``; a path given must exist."""
    value = weights or env_value(WEIGHTS_ENV)
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise UserError(f"weights file not found: {path} (from --weights / {WEIGHTS_ENV})")
    return path


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _imagenet_weights():
    from torchvision.models import VGG11_BN_Weights

    return VGG11_BN_Weights.IMAGENET1K_V1


def imagenet_weights_file() -> Path:
    """Where torch hub keeps the ImageNet ``vgg11_bn`` file once downloaded."""
    url = _imagenet_weights().url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def fetch_imagenet_weights(progress: bool = False) -> str | None:
    """Make sure the ImageNet file is in the torch hub cache; None on success, else why not (one line)."""
    if imagenet_weights_file().is_file():
        return None
    try:
        _imagenet_weights().get_state_dict(progress=progress, check_hash=True, weights_only=True)
    except Exception as exc:  # offline: URLError/OSError; a bad download: RuntimeError
        return (f"torchvision's ImageNet vgg11_bn weights could not be fetched "
                f"({type(exc).__name__}: {str(exc)[:120]}); pass --weights PATH (or {WEIGHTS_ENV}) "
                f"with a local copy")
    return None


def resolve_init(variant: str, weights: str | os.PathLike | None = None, seed: int = 0,
                 try_imagenet: bool = True) -> InitSource:
    """Decide the starting weights without building the model (so a warm cache costs nothing).

    A local file wins; pretrainable variants then try ImageNet (downloading through torch hub if
    needed); otherwise, and as the fallback, a random init seeded by ``seed``.
    """
    path = resolve_weights_path(weights)
    if path is not None:
        return InitSource("file", {"kind": "file", "sha256": file_sha256(path)}, path=path)
    random_init = {"kind": "random", "seed": seed}
    if variant not in PRETRAINABLE or not try_imagenet:
        return InitSource("random", random_init)
    why = fetch_imagenet_weights()
    if why:
        return InitSource("random", random_init, note=why)
    w = _imagenet_weights()
    return InitSource("imagenet", {"kind": "imagenet", "url": w.url}, path=imagenet_weights_file())


def build_initial_model(spec: VGGSpec, source: InitSource, seed: int = 0) -> VGG11:
    """A fresh model of ``spec``: seeded random init, then the source's weights loaded over it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_from_spec(spec)
    if source.path is not None:
        load_weights_into(model, source.path, lenient_head=True)
    return model.eval()


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], bool]:
    """Tensors from a weights file, safely (``weights_only``); also whether it is a vggprune model file.

    Accepts our own model files, plain state dicts (torchvision's ``.pth``) and the common
    ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers; strips a DataParallel ``module.`` prefix.
    """
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # torch's hint to disable weights_only would mean running the file's code: not passed on.
        raise UserError(f"cannot read weights file {path}: it is neither a state dict nor a vggprune model "
                        f"file ({type(exc).__name__} when read safely)") from None
    ours = isinstance(obj, dict) and obj.get("format") == FORMAT
    if ours:
        check_payload(obj, f"weights file {path}")  # the same validator as every other model file
    if isinstance(obj, dict) and not ours:
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    sd = obj["state_dict"] if ours else obj
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                     for k, v in sd.items()):
        raise UserError(f"weights file {path} holds no state dict of tensors")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd, ours


def load_weights_into(model: VGG11, path: str | os.PathLike, lenient_head: bool = True) -> list[str]:
    """Load a weights file into ``model`` or raise one line naming the keys that do not fit.

    With ``lenient_head``, a plain state dict (not one of our model files) may lack the final
    classifier or have it for another class count, as when starting a 102-class head from ImageNet
    weights: those keys keep their fresh init and are returned. Everything else must match exactly.
    """
    sd, ours = read_state_dict(path)
    own = model.state_dict()
    head = {f"classifier.{len(model.classifier) - 1}.{p}" for p in ("weight", "bias")}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    skipped: list[str] = []
    if lenient_head and not ours:
        skipped = sorted(k for k in head if k in missing or k in shapes)
        missing = [k for k in missing if k not in head]
        shapes = [k for k in shapes if k not in head]
    if missing or unexpected or shapes:
        raise UserError(f"weights file {path} does not fit the {model.spec.variant} model "
                        f"({model.spec.num_classes} classes): {_describe_misfit(missing, unexpected, shapes, sd, own)}")
    model.load_state_dict({k: v for k, v in sd.items() if k not in skipped}, strict=not skipped)
    return skipped


def _describe_misfit(missing: list[str], unexpected: list[str], shapes: list[str],
                     sd: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> str:
    def some(keys: list[str]) -> str:
        more = f" (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
        return ", ".join(keys[:_SHOWN_KEYS]) + more

    parts = []
    if shapes:
        shown = [f"{k} {list(sd[k].shape)} vs {list(own[k].shape)}" for k in shapes[:_SHOWN_KEYS]]
        more = f" (+{len(shapes) - _SHOWN_KEYS} more)" if len(shapes) > _SHOWN_KEYS else ""
        parts.append(f"shape mismatch (file vs model) {', '.join(shown)}{more}")
    if missing:
        parts.append(f"missing keys {some(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {some(unexpected)}")
    return "; ".join(parts)
