"""vggprune: build VGG11, prune it exactly (torch-pruning or by hand), fine-tune, evaluate and time it.

The top-level names are imported on first use, so that reading results (``vggprune report``,
``vggprune compare``) never pays for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"VGG11": "vggprune.models", "VGGSpec": "vggprune.models", "build_from_spec": "vggprune.models",
         "build_vgg11": "vggprune.models", "prune": "vggprune.pruning"}

__all__ = sorted(_LAZY)
__version__ = "0.2.0"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vggprune' has no attribute {name!r}")
