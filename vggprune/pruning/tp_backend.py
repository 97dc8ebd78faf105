"""Pruning surgery by torch-pruning's DependencyGraph.

torch-pruning's high-level pruners keep floor(n·(1−r)) units and rank by group-averaged scores, so
they would not follow our rule. We hand the DependencyGraph the exact indices to remove from each
layer's outputs and let it propagate them (BN, the next conv's inputs, the flattened FC inputs).
"""

from __future__ import annotations

import copy

import torch

from vggprune.models import VGG11
from vggprune.pruning.plan import PruningPlan


def _removed(n: int, keep: torch.Tensor) -> list[int]:
    mask = torch.ones(n, dtype=torch.bool)
    mask[keep] = False
    return mask.nonzero().flatten().tolist()


def apply_torch_pruning(model: VGG11, plan: PruningPlan) -> VGG11:
    """Return a pruned deep copy of ``model``; ``model`` is left untouched."""
    import torch_pruning as tp  # imported here so loading saved models never needs it

    pruned = copy.deepcopy(model)
    # Tracing only needs the graph's shapes up to the adaptive pool, so a 32×32 input is enough
    # even for the 224×224 models and keeps graph building cheap.
    example = torch.zeros(1, 3, 32, 32)
    graph = tp.DependencyGraph().build_dependency(pruned, example_inputs=example, verbose=False)
    targets = [(c, k, tp.prune_conv_out_channels) for c, k in zip(pruned.conv_layers(), plan.conv_keep)]
    targets += [(f, k, tp.prune_linear_out_channels) for f, k in zip(pruned.fc_layers()[:-1], plan.fc_keep)]
    for layer, keep, prune_fn in targets:
        if keep is None:
            continue
        idxs = _removed(layer.weight.shape[0], keep)
        if not idxs:
            continue
        group = graph.get_pruning_group(layer, prune_fn, idxs=idxs)
        if not graph.check_pruning_group(group):
            raise RuntimeError(f"torch-pruning refused to prune {len(idxs)} units of {layer}")
        group.prune()
    pruned.spec = plan.spec
    return pruned
