"""Pruning surgery with no pruning package: slice every tensor the plan touches.

The pruned model is rebuilt from the plan's spec on the meta device (no throw-away initialisation of
a 133M-parameter model) and given the sliced tensors, so its layout always agrees with its spec.
"""

from __future__ import annotations

import torch

from vggprune.models import VGG11
from vggprune.pruning.plan import PruningPlan


def _rows(t: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    return t if keep is None else t.index_select(0, keep)


def _cols(t: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    return t if keep is None else t.index_select(1, keep)


def apply_by_hand(model: VGG11, plan: PruningPlan) -> VGG11:
    """Return a new model with the plan applied; ``model`` is left untouched."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    convs = [i for i, m in enumerate(model.features) if isinstance(m, torch.nn.Conv2d)]
    in_keep: torch.Tensor | None = None  # kept input channels of the current layer
    for conv_idx, keep in zip(convs, plan.conv_keep):
        w, b = f"features.{conv_idx}.weight", f"features.{conv_idx}.bias"
        sd[w] = _rows(_cols(sd[w], in_keep), keep)
        sd[b] = _rows(sd[b], keep)
        bn = f"features.{conv_idx + 1}"  # BatchNorm2d always follows its conv
        for name in ("weight", "bias", "running_mean", "running_var"):
            sd[f"{bn}.{name}"] = _rows(sd[f"{bn}.{name}"], keep)
        in_keep = keep

    # The first FC layer sees the flattened (channel, h, w) map: a kept channel c keeps the whole
    # block of pool_size² inputs starting at c·pool_size².
    if in_keep is not None:
        block = model.spec.pool_size ** 2
        in_keep = (in_keep[:, None] * block + torch.arange(block)).reshape(-1)
    fcs = [i for i, m in enumerate(model.classifier) if isinstance(m, torch.nn.Linear)]
    for fc_idx, keep in zip(fcs, list(plan.fc_keep) + [None]):
        w, b = f"classifier.{fc_idx}.weight", f"classifier.{fc_idx}.bias"
        sd[w] = _rows(_cols(sd[w], in_keep), keep)
        sd[b] = _rows(sd[b], keep)
        in_keep = keep

    with torch.device("meta"):
        pruned = VGG11(plan.spec)
    pruned.load_state_dict({k: v.contiguous() for k, v in sd.items()}, assign=True)
    return pruned.train(model.training)
