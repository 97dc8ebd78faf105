"""The pruning rule and its two backends: exact indices, exact counts, identical outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.arith import expected_params, kept, pruned_widths
from vggprune import build_vgg11, prune
from vggprune.counting import count_params
from vggprune.errors import UserError
from vggprune.pruning import kept_count

RATES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
METHODS = ("torch-pruning", "by-hand")


def expected_keep(weight: torch.Tensor, rate: float, criterion: str = "l2") -> np.ndarray:
    """The rule, re-derived with numpy: drop the floor(n·r) lowest-norm rows (ties: lower index first)."""
    w = weight.detach().double().numpy().reshape(weight.shape[0], -1)
    score = np.linalg.norm(w, axis=1) if criterion == "l2" else np.abs(w).sum(axis=1)
    order = np.argsort(score, kind="stable")
    n_keep = kept(len(score), rate)
    return np.sort(order[len(score) - n_keep:])


def assert_is_slice(orig: torch.Tensor, pruned: torch.Tensor, rows, cols=None) -> None:
    expect = orig.detach()[torch.as_tensor(rows)]
    if cols is not None:
        expect = expect[:, torch.as_tensor(cols)]
    assert pruned.shape == expect.shape
    assert torch.equal(pruned.detach(), expect)


def check_fc_surgery(base, pruned, rate, in_keep=None):
    """Every hidden FC layer holds exactly the rule's rows, and the next layer the matching columns."""
    fcs_base, fcs_pruned = base.fc_layers(), pruned.fc_layers()
    cols = in_keep
    for i, (fb, fp) in enumerate(zip(fcs_base, fcs_pruned)):
        last = i == len(fcs_base) - 1
        rows = np.arange(fb.out_features) if last else expected_keep(fb.weight, rate)
        assert_is_slice(fb.weight, fp.weight, rows, cols)
        assert_is_slice(fb.bias, fp.bias, rows)
        cols = rows


def outputs(model, size, seed=0):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return model(x)


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("scope", ["fc", "conv", "all"])
def test_small_backends_agree_with_rule_and_each_other(small_model, rate, scope):
    results = {m: prune(small_model, rate, method=m, scope=scope) for m in METHODS}
    base_out = outputs(small_model, 32)
    outs = {}
    for method, model in results.items():
        conv, fc = pruned_widths("small", rate, scope)
        assert model.spec.conv_widths == conv and model.spec.fc_widths == fc, method
        assert count_params(model) == expected_params("small", 10, rate, scope), method
        if scope == "fc":
            check_fc_surgery(small_model, model, rate)
        else:  # conv filters: the rule's filters, with the previous layer's kept input channels
            in_keep = np.arange(3)
            for cb, cp in zip(small_model.conv_layers(), model.conv_layers()):
                rows = expected_keep(cb.weight, rate)
                assert_is_slice(cb.weight, cp.weight, rows, in_keep)
                in_keep = rows
        outs[method] = outputs(model, 32)
    assert torch.allclose(outs["torch-pruning"], outs["by-hand"], rtol=0, atol=1e-5)
    assert base_out.abs().max() > 0.1  # outputs are not trivially small
    if rate == 0:
        assert torch.equal(outs["by-hand"], base_out)


@pytest.mark.slow
@pytest.mark.parametrize("rate", RATES)
def test_seed_fc_backends_agree(seed_model, rate):
    models = {m: prune(seed_model, rate, method=m, scope="fc") for m in METHODS}
    outs = {}
    for method, model in models.items():
        assert count_params(model) == expected_params("seed", 102, rate, "fc"), method
        check_fc_surgery(seed_model, model, rate)
        outs[method] = outputs(model, 224)
    assert torch.allclose(outs["torch-pruning"], outs["by-hand"], rtol=0, atol=1e-5)
    if rate == 0:
        assert torch.equal(outs["by-hand"], outputs(seed_model, 224))


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["conv", "all"])
def test_seed_conv_backends_agree(seed_model, scope):
    rate = 0.5
    models = {m: prune(seed_model, rate, method=m, scope=scope) for m in METHODS}
    for method, model in models.items():
        assert count_params(model) == expected_params("seed", 102, rate, scope), method
    # The first FC keeps a whole 7×7 block of inputs per kept channel of the last conv.
    last_keep = expected_keep(seed_model.conv_layers()[-1].weight, rate)
    cols = (last_keep[:, None] * 49 + np.arange(49)).reshape(-1)
    fc0 = models["torch-pruning"].fc_layers()[0]
    rows = np.arange(4096) if scope == "conv" else expected_keep(seed_model.fc_layers()[0].weight, rate)
    assert_is_slice(seed_model.fc_layers()[0].weight, fc0.weight, rows, cols)
    a, b = (outputs(models[m], 224) for m in METHODS)
    assert torch.allclose(a, b, rtol=0, atol=1e-5)


def test_seed_model_size_matches_the_study():
    # 132,970,942 is the figure DESIGN.md gives for vgg11_bn + Linear(1000, 102).
    assert expected_params("seed", 102, 0, "fc") == 132_970_942
    from torchvision.models import vgg11_bn

    tv = vgg11_bn(weights=None)
    assert count_params(tv) + 1000 * 102 + 102 == 132_970_942
    ours = build_vgg11("seed", num_classes=102)
    assert count_params(ours) == 132_970_942
    # ImageNet weights for vgg11_bn load by name into the seed model (all but the appended layer).
    missing, unexpected = ours.load_state_dict(tv.state_dict(), strict=False)
    assert unexpected == [] and sorted(missing) == ["classifier.7.bias", "classifier.7.weight"]


@pytest.mark.parametrize("n, rate, removed", [(100, 0.57, 57), (100, 0.29, 29), (4096, 0.3, 1228),
                                              (1000, 0.1, 100), (10, 0.99, 9), (7, 0.5, 3)])
def test_floor_is_robust_to_float_error(n, rate, removed):
    assert kept_count(n, rate) == n - removed


def test_naive_floor_is_the_trap():
    assert math.floor(100 * 0.57) == 56  # why kept_count does not use n * rate directly


def test_round_to_multiple():
    model = build_vgg11("small", num_classes=10)
    pruned = prune(model, 0.3, method="by-hand", scope="all", round_to=8)
    assert pruned.spec.conv_widths == pruned_widths("small", 0.3, "all", round_to=8)[0] == (8, 16, 40, 40,
                                                                                           88, 88, 88, 88)
    assert all(w % 8 == 0 for w in pruned.spec.conv_widths + pruned.spec.fc_widths)
    a, b = (prune(model, 0.3, method=m, scope="all", round_to=8) for m in METHODS)
    assert count_params(a) == count_params(b) == expected_params("small", 10, 0.3, "all", round_to=8)


def test_ties_break_by_lower_index_first():
    model = build_vgg11("small", num_classes=10)
    fc = model.fc_layers()[0]
    with torch.no_grad():
        fc.weight.fill_(1.0)  # every row has the same norm
    pruned = prune(model, 0.25, method="by-hand", scope="fc")
    n = fc.out_features
    assert torch.equal(pruned.fc_layers()[0].bias, fc.bias[n // 4:])
    assert torch.equal(pruned.fc_layers()[0].weight, fc.weight[n // 4:])


@pytest.mark.parametrize("criterion", ["l1", "random"])
def test_other_criteria_agree_across_backends(small_model, criterion):
    a, b = (prune(small_model, 0.4, method=m, scope="all", criterion=criterion, seed=3) for m in METHODS)
    assert torch.allclose(outputs(a, 32), outputs(b, 32), rtol=0, atol=1e-5)
    if criterion == "l1":
        rows = expected_keep(small_model.fc_layers()[1].weight, 0.4, "l1")
        assert_is_slice(small_model.fc_layers()[1].bias, a.fc_layers()[1].bias, rows)
    else:  # seeded: same seed → same units, another seed → (almost surely) other units
        again = prune(small_model, 0.4, method="by-hand", scope="all", criterion="random", seed=3)
        other = prune(small_model, 0.4, method="by-hand", scope="all", criterion="random", seed=4)
        assert torch.equal(again.fc_layers()[0].bias, b.fc_layers()[0].bias)
        assert not torch.equal(other.fc_layers()[0].bias, b.fc_layers()[0].bias)


def test_input_model_is_left_untouched(small_model):
    before = {k: v.clone() for k, v in small_model.state_dict().items()}
    for method in METHODS:
        prune(small_model, 0.5, method=method, scope="all")
    after = small_model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert small_model.spec.fc_widths == (512, 512)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan"), float("inf"), "0.3", None, True, [0.1]])
def test_bad_rate_is_a_clear_value_error(small_model, rate):
    with pytest.raises(ValueError, match=r"rate must be a number in \[0, 1\), got"):
        prune(small_model, rate)


@pytest.mark.parametrize("kwargs, words", [
    ({"method": "nni"}, ["method 'nni'", "torch-pruning", "by-hand"]),
    ({"scope": "head"}, ["scope 'head'", "fc", "conv", "all"]),
    ({"criterion": "taylor"}, ["criterion 'taylor'", "l2", "l1", "random"]),
    ({"round_to": 0}, ["round_to", "0"]),
])
def test_bad_choice_names_value_and_allowed(small_model, kwargs, words):
    with pytest.raises(ValueError) as info:
        prune(small_model, 0.1, **kwargs)
    assert all(w in str(info.value) for w in words)


def test_unknown_model_and_foreign_model():
    with pytest.raises(ValueError, match="unknown model 'vgg16'; allowed: seed, torchvision, small"):
        build_vgg11("vgg16")
    from torchvision.models import vgg11_bn

    with pytest.raises(ValueError, match="expected a vggprune VGG11.*got VGG"):
        prune(vgg11_bn(weights=None), 0.1)
    assert issubclass(UserError, ValueError)


def test_counting_matches_the_counter_on_the_weights_and_leaves_no_copy_behind(small_model):
    """torch-pruning's counter deep-copies what it counts into a reference cycle; counting the spec's
    weightless twin gives its figures on the real model and leaves no copy of the weights for gc to find."""
    import gc

    import torch_pruning as tp

    from vggprune.counting import count_params_macs

    model = prune(small_model, 0.5, method="by-hand", scope="all")
    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, 3, 32, 32))
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        counted = count_params_macs(model)
        gc.collect()
        left = [o for o in gc.garbage if isinstance(o, torch.Tensor) and o.device.type != "meta"]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert counted == (int(params), int(macs))
    assert left == []
