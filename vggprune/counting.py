"""The one parameter and MAC counter used everywhere (CLI, harness, reports)."""

from __future__ import annotations

import torch

from vggprune.models import VGG11


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_params_macs(model: VGG11, input_size: int | None = None) -> tuple[int, int]:
    """(parameters, MACs for one image) of ``model`` at its spec's input size.

    MACs come from torch-pruning's op counter: conv and linear multiply-accumulates plus the
    element-wise ops of bias, BN, ReLU and pooling, all at batch size 1. It counts a deep copy of what
    it is given, and the copy outlives the call in a reference cycle (the counter binds methods to it),
    so it is given a weightless twin built from the spec on the meta device: the same shapes, no memory
    (a 0.5 GB heap of garbage for the seed model otherwise, until the next full collection).
    """
    import torch_pruning as tp

    size = input_size or model.spec.input_size
    with torch.device("meta"):
        twin = VGG11(model.spec).eval()
    macs, params = tp.utils.count_ops_and_params(twin, torch.zeros(1, 3, size, size, device="meta"))
    if int(params) != count_params(model):
        raise ValueError(f"the model's spec describes {int(params)} parameters but it has {count_params(model)}")
    return int(params), int(macs)
