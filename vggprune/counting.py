"""The one parameter and MAC counter used everywhere (CLI, harness, reports)."""

from __future__ import annotations

import torch

from vggprune.models import VGG11


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_params_macs(model: VGG11, input_size: int | None = None) -> tuple[int, int]:
    """(parameters, MACs for one image) of ``model`` at its spec's input size.

    MACs come from torch-pruning's op counter: conv and linear multiply-accumulates plus the
    element-wise ops of bias, BN, ReLU and pooling, all at batch size 1.
    """
    import torch_pruning as tp

    size = input_size or model.spec.input_size
    device = next(model.parameters()).device
    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, 3, size, size, device=device))
    return int(params), int(macs)
