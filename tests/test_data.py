"""Datasets: the digits split, seeded loaders, Flowers102 on a miniature copy, imagefolder, bad roots."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from tests.helpers_data import accept_miniature_flowers, make_flowers102, make_imagefolder
from vggprune import data as D
from vggprune.errors import UserError

LOAD = {"image_size": 32, "batch_size": 4, "eval_batch_size": 5, "seed": 0}


# --- digits ---------------------------------------------------------------------------------------

def test_digits_split_is_disjoint_complete_and_stratified():
    from sklearn.datasets import load_digits

    y = load_digits().target
    split = D.digits_split_indices()
    all_ids = [i for ids in split.values() for i in ids]
    assert len(all_ids) == len(set(all_ids)) == len(y) == 1797
    sizes = {k: len(v) for k, v in split.items()}
    assert sizes["test"] == pytest.approx(0.20 * 1797, abs=1)
    assert sizes["val"] == pytest.approx(0.15 * 1797, abs=1)
    overall = Counter(y.tolist())
    for name, ids in split.items():
        counts = Counter(y[list(ids)].tolist())
        for cls, n in overall.items():  # each class in the same proportion as in the whole set (±1 image)
            assert abs(counts[cls] - n * len(ids) / len(y)) <= 1, (name, cls)


def test_digits_split_is_the_same_on_every_run():
    first = D.digits_split_indices.__wrapped__()  # bypass the in-process cache: recompute from scratch
    np.random.seed(123)  # the split must not depend on global random state either
    torch.manual_seed(123)
    second = D.digits_split_indices.__wrapped__()
    assert first == second == D.digits_split_indices()


def test_digits_tensors_are_normalised_rgb_at_the_requested_size():
    bundle = D.load_data("digits", **LOAD)
    x, y = bundle.datasets["train"].tensors
    assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey replicated to RGB
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3  # train statistics
    assert bundle.num_classes == 10 and set(y.tolist()) == set(range(10))
    sizes = {s: sum(len(b[1]) for b in bundle.loader(s)) for s in ("val", "test")}
    assert sizes == {s: len(D.digits_split_indices()[s]) for s in ("val", "test")}


def _first_batches(loader, n=3):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_train_loader_is_seeded_and_fresh_on_every_access():
    bundle = D.load_data("digits", **LOAD)
    a, b = _first_batches(bundle.train), _first_batches(bundle.train)
    for (xa, ya), (xb, yb) in zip(a, b):  # the same batches, whatever was drawn before
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other = _first_batches(D.load_data("digits", **{**LOAD, "seed": 1}).train)
    assert not all(torch.equal(ya, yo) for (_, ya), (_, yo) in zip(a, other))


def test_random_shift_moves_content_by_at_most_the_limit():
    x = torch.zeros(8, 3, 12, 12)
    x[:, :, 6, 6] = 1.0
    shifted, _ = D.RandomShiftBatches(x, torch.arange(8), max_shift=2, seed=0)[list(range(8))]
    assert shifted.shape == x.shape
    offsets = set()
    for img in shifted:
        pos = (img[0] == 1).nonzero().tolist()
        assert len(pos) == 1 and float(img.sum()) == 3.0  # the pixel moved, nothing else appeared
        dy, dx = pos[0][0] - 6, pos[0][1] - 6
        assert abs(dy) <= 2 and abs(dx) <= 2
        offsets.add((dy, dx))
    assert len(offsets) > 1  # it does shift, and not all by the same amount


# --- Flowers102 -----------------------------------------------------------------------------------

def test_flowers102_miniature_loads_through_torchvision(tmp_path, monkeypatch):
    ids = make_flowers102(tmp_path, classes=3, per_split=2)
    accept_miniature_flowers(monkeypatch, tmp_path)
    info = D.describe("flowers102", tmp_path)
    assert info.missing is None and info.num_classes == 102
    bundle = D.load_data("flowers102", tmp_path, num_workers=0, **LOAD)
    assert len(bundle.datasets["train"]) == len(ids["train"]) == 6
    x, y = next(iter(bundle.test))
    assert x.shape == (5, 3, 32, 32)
    assert set(y.tolist()) <= {0, 1, 2}  # 1-based labels in the .mat file become 0-based
    assert abs(float(x.mean())) < 3  # ImageNet-normalised, not raw 0..255


def test_flowers102_missing_says_what_and_both_ways_to_get_it(tmp_path):
    reason = D.describe("flowers102", tmp_path).missing
    assert reason and "\n" not in reason
    for needed in ("flowers-102/jpg/", "imagelabels.mat", "setid.mat", "--data-root", "VGGPRUNE_DATA_ROOT",
                   "--download", "VGGPRUNE_DOWNLOAD=1", str(tmp_path)):
        assert needed in reason
    with pytest.raises(UserError, match="Flowers102 not found"):
        D.load_data("flowers102", tmp_path, **LOAD)


def test_flowers102_incomplete_copies_are_named(tmp_path, monkeypatch):
    make_flowers102(tmp_path)
    # Untouched checksum table: the miniature label files are not the official ones.
    assert "imagelabels.mat does not match the official file" in D.describe("flowers102", tmp_path).missing
    accept_miniature_flowers(monkeypatch, tmp_path)
    (tmp_path / "flowers-102" / "jpg" / "image_00004.jpg").unlink()
    reason = D.describe("flowers102", tmp_path).missing
    assert "lacks 1 of the 18 images" in reason and "image_00004.jpg" in reason


def test_flowers102_download_failure_is_reported_not_raised(tmp_path, monkeypatch):
    from torchvision.datasets import Flowers102

    def offline(self):
        raise OSError("network unreachable")

    monkeypatch.setattr(Flowers102, "download", offline)
    reason = D.download_flowers102(tmp_path)
    assert reason and "network unreachable" in reason and "--data-root" in reason


# --- imagefolder ----------------------------------------------------------------------------------

def test_imagefolder_loads_classes_from_folders(tmp_path):
    make_imagefolder(tmp_path, classes=("ant", "bee", "cat"), per_class=2)
    info = D.describe("imagefolder", tmp_path)
    assert info.missing is None and info.num_classes == 3 and info.identity["classes"] == ["ant", "bee", "cat"]
    bundle = D.load_data("imagefolder", tmp_path, num_workers=0, **LOAD)
    x, y = next(iter(bundle.val))
    assert x.shape == (5, 3, 32, 32) and set(y.tolist()) <= {0, 1, 2}
    # The identity (part of the cache key) changes when the files do.
    (tmp_path / "train" / "ant" / "extra.jpg").write_bytes((tmp_path / "train" / "ant" / "0.jpg").read_bytes())
    assert D.describe("imagefolder", tmp_path).identity != info.identity


def test_imagefolder_missing_split_or_empty_class_is_named(tmp_path):
    assert "does not exist" in D.describe("imagefolder", tmp_path / "nope").missing
    make_imagefolder(tmp_path)
    for f in (tmp_path / "test" / "bee").iterdir():
        f.unlink()
    assert "no images in test/bee/" in D.describe("imagefolder", tmp_path).missing
    import shutil

    shutil.rmtree(tmp_path / "val")
    reason = D.describe("imagefolder", tmp_path).missing
    assert "missing val/" in reason and "--data-root" in reason


def test_imagefolder_splits_with_different_classes_are_refused(tmp_path):
    make_imagefolder(tmp_path)
    (tmp_path / "val" / "cat").rename(tmp_path / "val" / "cow")
    with pytest.raises(UserError, match=r"val/ classes differ.*missing \['cat'\], extra \['cow'\]"):
        D.describe("imagefolder", tmp_path)


# --- choices and roots ----------------------------------------------------------------------------

def test_unknown_dataset_is_a_user_error():
    with pytest.raises(UserError, match="unknown dataset 'mnist'; allowed: digits, flowers102, imagefolder"):
        D.describe("mnist")


def test_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv(D.DATA_ROOT_ENV, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert D.resolve_data_root(None) == tmp_path / "xdg" / "vggprune"
    monkeypatch.setenv(D.DATA_ROOT_ENV, str(tmp_path / "env"))
    assert D.resolve_data_root(None) == tmp_path / "env"
    assert D.resolve_data_root(tmp_path / "opt") == tmp_path / "opt"


# --- the training augmentation: what each --augment value does ------------------------------------

def _marked_image(path, size=32):
    """A light image with one dark pixel left of centre: where it lands shows the shift and the flip."""
    from PIL import Image

    pixels = np.full((size, size, 3), 230, dtype=np.uint8)
    pixels[16, 10] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return Image.open(path).convert("RGB")


def _dark(t):
    return [tuple(p) for p in (t[0] < t[0].max() - 1).nonzero().tolist()]


def test_crop_keeps_the_whole_small_image_and_shifts_it_a_little_without_flipping(tmp_path):
    img = _marked_image(tmp_path / "a.png")
    train, evaluate = D.image_transforms(32, "crop")
    assert _dark(evaluate(img)) == [(16, 10)]  # evaluation sees the whole 32-px image, not a centre crop
    pad = round(D.CROP_PADDING * 32)
    torch.manual_seed(0)
    seen = {_dark(train(img))[0] for _ in range(40)}
    assert len(seen) > 1 and all(abs(r - 16) <= pad and abs(c - 10) <= pad for r, c in seen)
    assert all(c < 16 for _, c in seen)  # never mirrored: the mark stays left of centre
    torch.manual_seed(0)
    flipped = {_dark(D.image_transforms(32, "crop+flip")[0](img))[0][1] for _ in range(40)}
    assert min(flipped) < 16 < max(flipped)  # +flip mirrors some
    assert _dark(D.image_transforms(32, "none")[0](img)) == [(16, 10)]  # none: as evaluated


def test_imagenet_augment_is_the_random_resized_crop_with_imagenet_evaluation():
    train, evaluate = D.image_transforms(224, "imagenet+flip")
    names = [type(t).__name__ for t in train.transforms]
    assert names[:2] == ["RandomResizedCrop", "RandomHorizontalFlip"]
    assert [type(t).__name__ for t in D.image_transforms(224, "imagenet")[0].transforms][:2] == [
        "RandomResizedCrop", "ToTensor"]
    assert evaluate.transforms[0].size == 256  # resize to 256/224 of the side, then the centre crop
    with pytest.raises(UserError, match="--augment: unknown value 'mixup'"):
        D.image_transforms(32, "mixup")


def test_digits_take_crop_none_and_flip_but_not_imagenet():
    crop = D.load_data("digits", **LOAD, augment="crop")
    assert crop.max_shift == 2 and not crop.flip  # the quick profile's own shift, 1/16 of 32 px
    none = D.load_data("digits", **LOAD, augment="none")
    assert none.max_shift == 0 and isinstance(none.train.dataset, torch.utils.data.TensorDataset)
    flip = D.load_data("digits", **LOAD, augment="crop+flip")
    assert flip.flip and isinstance(flip.train.dataset, D.RandomShiftBatches)
    with pytest.raises(UserError, match="in-memory digits take crop, crop\\+flip or none"):
        D.load_data("digits", **LOAD, augment="imagenet")


def test_random_flip_mirrors_some_images_only():
    x = torch.zeros(16, 3, 8, 8)
    x[:, :, 4, 1] = 1.0
    out, _ = D.RandomShiftBatches(x, torch.arange(16), max_shift=0, seed=0, flip=True)[list(range(16))]
    columns = {int((img[0] == 1).nonzero()[0][1]) for img in out}
    assert columns == {1, 6}
