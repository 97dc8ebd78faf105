"""Training and evaluation: top-k counting, determinism, val-picked weights, divergence, weights files."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vggprune import build_vgg11
from vggprune.checkpoint import save_model
from vggprune.data import load_data
from vggprune.errors import UserError
from vggprune.train import (
    DivergedError,
    evaluate,
    evaluate_images,
    fit,
    pinned_kernel_env,
    progress_enabled,
    recalibrate_batchnorm,
    topk_correct,
)
from vggprune.weights import load_weights_into, resolve_init


class FixedLogits(nn.Module):
    """A 'model' whose logits are given, so accuracies can be worked out by hand."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x.long().view(-1)]


def test_per_image_top1_is_in_order_and_top1_is_its_mean():
    # 5 items over batches of 2; hits at positions 0, 3 and 4 (argmax equals the target)
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, 2.0], [2.0, 0.0]])
    targets = torch.tensor([0, 1, 0, 1, 0])
    loader = DataLoader(TensorDataset(torch.arange(5).float(), targets), batch_size=2)
    result = evaluate_images(FixedLogits(logits), loader)
    assert result.correct == "10011" and result.top1 == 3 / 5 and result.top5 == 1.0


def test_empty_split_is_a_user_error():
    loader = DataLoader(TensorDataset(torch.zeros(0), torch.zeros(0, dtype=torch.long)), batch_size=2)
    with pytest.raises(UserError, match="empty split"):
        evaluate_images(FixedLogits(torch.zeros(1, 2)), loader)


def test_topk_counts_by_hand():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.2], [0.3, 0.2, 0.5]])
    targets = torch.tensor([1, 2, 1])
    # row 0: top-1 hit; row 1: target is 2nd; row 2: target is last (3rd)
    assert topk_correct(logits, targets, (1, 2, 5)) == [1, 2, 3]  # k above the class count is capped


def test_evaluate_matches_hand_count():
    ranked = torch.tensor([0.6, 0.5, 0.4, 0.3, 0.2, 0.1])  # class 0 first … class 5 last, no ties
    logits = torch.cat([torch.eye(6) + 0.01 * ranked, ranked.repeat(3, 1)])
    targets = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 5])
    # items 0-6 are top-1 hits; item 7 (class 1, ranked 2nd) is a top-5 hit only; item 8 (ranked 6th) misses
    loader = DataLoader(TensorDataset(torch.arange(9).float(), targets), batch_size=4)
    top1, top5, loss = evaluate(FixedLogits(logits), loader)
    assert (top1, top5) == (7 / 9, 8 / 9)
    per_image = evaluate_images(FixedLogits(logits), loader)
    assert per_image.correct == "111111100" and per_image.n == 9  # in loader order, across batches
    assert (per_image.top1, per_image.top5, per_image.loss) == (top1, top5, loss)
    expected_loss = nn.functional.cross_entropy(logits, targets).item()
    assert loss == pytest.approx(expected_loss, rel=1e-6)


@pytest.fixture(scope="module")
def digits_small():
    """A few hundred digits: enough to learn something in one epoch, fast enough for a unit test."""
    bundle = load_data("digits", image_size=32, batch_size=32, eval_batch_size=128, seed=0)
    x, y = bundle.datasets["train"].tensors
    train = DataLoader(TensorDataset(x[:320], y[:320]), batch_size=32, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    return train, bundle.val


def _train(digits_small, seed: int, epochs: int = 1, lr: float = 0.05):
    train, val = digits_small
    torch.manual_seed(seed)
    model = build_vgg11("small", 10)
    train.generator.manual_seed(seed)
    result = fit(model, train, val, epochs=epochs, lr=lr, schedule="onecycle", seed=seed, progress=False)
    return model, result


def test_same_seed_gives_identical_weights_and_accuracy(digits_small):
    a, ra = _train(digits_small, seed=3)
    b, rb = _train(digits_small, seed=3)
    assert ra.best_val_top1 == rb.best_val_top1
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    c, _ = _train(digits_small, seed=4)
    assert not torch.equal(a.classifier[0].weight, c.classifier[0].weight)


def test_fit_keeps_the_weights_with_the_best_val_score(digits_small):
    model, result = _train(digits_small, seed=0, epochs=2)
    scores = [(h["val_top1"], -h["val_loss"]) for h in result.history]
    assert result.best_epoch == result.history[scores.index(max(scores))]["epoch"]
    top1, _, _ = evaluate(model, digits_small[1])  # the model holds exactly those weights
    assert top1 == result.best_val_top1
    assert not model.training and next(model.parameters()).device.type == "cpu"


def test_zero_epochs_leaves_weights_untouched(digits_small):
    torch.manual_seed(0)
    model = build_vgg11("small", 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fit(model, digits_small[0], digits_small[1], epochs=0, lr=0.1, progress=False)
    assert result.best_epoch == 0 and result.epochs == 0 and len(result.history) == 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_nan_loss_stops_the_run_with_a_clear_message(digits_small):
    x = torch.full((8, 3, 32, 32), float("nan"))
    bad = DataLoader(TensorDataset(x, torch.zeros(8, dtype=torch.long)), batch_size=4)
    with pytest.raises(DivergedError, match=r"diverged \(loss nan\) at epoch 1/2, step 1/2; lower the learning"):
        fit(build_vgg11("small", 10), bad, digits_small[1], epochs=2, lr=0.01, progress=False)


def test_a_huge_learning_rate_is_caught(digits_small):
    train, val = digits_small
    with pytest.raises(DivergedError, match="diverged"):
        fit(build_vgg11("small", 10), train, val, epochs=1, lr=1e12, schedule="cosine", progress=False)


def test_progress_is_quiet_in_ci_unless_asked(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert progress_enabled(None) is False
    assert progress_enabled(True) is True
    monkeypatch.delenv("CI")
    assert progress_enabled(False) is False


def test_unknown_schedule_is_a_user_error(digits_small):
    with pytest.raises(UserError, match="unknown schedule 'linear'"):
        fit(build_vgg11("small", 10), *digits_small, epochs=1, lr=0.1, schedule="linear")


# --- starting weights -----------------------------------------------------------------------------

def test_a_fitting_weights_file_loads_exactly(tmp_path):
    torch.manual_seed(1)
    source = build_vgg11("small", 10)
    path = save_model(source, tmp_path / "w.pt")
    torch.manual_seed(2)
    target = build_vgg11("small", 10)
    assert load_weights_into(target, path) == []
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


def test_a_weights_file_that_does_not_fit_names_the_keys(tmp_path):
    path = save_model(build_vgg11("small", 7), tmp_path / "seven.pt")
    with pytest.raises(UserError) as err:
        load_weights_into(build_vgg11("small", 10), path)
    msg = str(err.value)
    assert "\n" not in msg and "does not fit the small model (10 classes)" in msg
    assert "classifier.6.weight [7, 512] vs [10, 512]" in msg and "classifier.6.bias [7] vs [10]" in msg


def test_a_plain_state_dict_may_lack_only_the_head(tmp_path):
    """Like ImageNet weights for a new task: the backbone must fit, the final classifier may not."""
    torch.manual_seed(1)
    sd = build_vgg11("small", 1000).state_dict()  # a 1000-way head, as torchvision's files have
    torch.save(sd, tmp_path / "backbone.pth")
    target = build_vgg11("small", 10)
    skipped = load_weights_into(target, tmp_path / "backbone.pth")
    assert skipped == ["classifier.6.bias", "classifier.6.weight"]
    assert torch.equal(target.features[0].weight, sd["features.0.weight"])
    del sd["features.4.weight"], sd["classifier.6.weight"]
    sd["extra.layer"] = torch.zeros(1)
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(UserError, match="missing keys features.4.weight; unexpected keys extra.layer"):
        load_weights_into(build_vgg11("small", 10), tmp_path / "broken.pth")


def test_unreadable_weights_file_is_a_user_error(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="cannot read weights file"):
        load_weights_into(build_vgg11("small", 10), tmp_path / "junk.pt")


def test_imagenet_unavailable_falls_back_to_a_seeded_random_init(tmp_path, monkeypatch):
    import vggprune.weights as W

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    class Offline:
        url = "https://example.invalid/vgg11_bn-6002323d.pth"

        def get_state_dict(self, **kwargs):
            raise OSError("Name or service not known")

    monkeypatch.setattr(W, "_imagenet_weights", lambda: Offline())
    monkeypatch.delenv(W.WEIGHTS_ENV, raising=False)
    source = resolve_init("seed", seed=5)
    assert source.kind == "random" and source.identity == {"kind": "random", "seed": 5}
    assert "could not be fetched" in source.note and "--weights PATH" in source.note
    assert resolve_init("small").note == ""  # never tried for the small model


def test_pinned_kernel_env_caps_every_library_to_one_instruction_set():
    assert pinned_kernel_env() == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}


def test_recalibrate_batchnorm_sets_running_stats_to_the_batches_statistics():
    model = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2), nn.Dropout(0.5))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
    model[1].running_mean.fill_(7.0)  # stale, as after pruning the layer before
    x = torch.arange(8.0).view(2, 1, 2, 2) + 1  # image 1 holds 1..4, image 2 holds 5..8
    loader = DataLoader(TensorDataset(x, torch.zeros(2)), batch_size=1)  # two batches of one image
    recalibrate_batchnorm(model, loader, batches=2)
    # channel c scales by (c + 1): the average of the two batches' means and unbiased variances
    # (2.5 and 6.5 for images 1..4 and 5..8, each with variance 5/3)
    assert torch.allclose(model[1].running_mean, torch.tensor([4.5, 9.0]))
    assert torch.allclose(model[1].running_var, torch.tensor([5 / 3, 4 * 5 / 3]))
    assert not model.training and model[1].momentum == 0.1 and model[0].weight.grad is None
