"""Miniature datasets on disk, in the exact layouts the real loaders read, for fast offline tests."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vggprune.profiles import Profile, get_profile


def _jpeg(path: Path, seed: int, size: int = 40) -> None:
    """A small random colour JPEG (the content does not matter, only that it decodes)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size + 6, 3), dtype=np.uint8)).save(path, "JPEG")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def make_flowers102(root: Path, classes: int = 3, per_split: int = 2) -> dict[str, tuple[int, ...]]:
    """Write ``root/flowers-102/`` as torchvision's Flowers102 lays it out on disk.

    ``jpg/image_NNNNN.jpg`` (1-based ids), ``imagelabels.mat`` (``labels``: one 1-based class per
    image) and ``setid.mat`` (``trnid``/``valid``/``tstid``: image ids per split). Labels use classes
    1..``classes`` of the 102. Returns the image ids of each split.
    """
    from scipy.io import savemat

    base = root / "flowers-102"
    labels: list[int] = []
    ids: dict[str, list[int]] = {"trnid": [], "valid": [], "tstid": []}
    for split in ids:
        for cls in range(1, classes + 1):
            for _ in range(per_split):
                labels.append(cls)
                ids[split].append(len(labels))
                _jpeg(base / "jpg" / f"image_{len(labels):05d}.jpg", seed=len(labels))
    savemat(base / "imagelabels.mat", {"labels": np.array(labels, dtype=np.uint8)})
    savemat(base / "setid.mat", {k: np.array(v, dtype=np.uint16) for k, v in ids.items()})
    return {"train": tuple(ids["trnid"]), "val": tuple(ids["valid"]), "test": tuple(ids["tstid"])}


def accept_miniature_flowers(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Make torchvision accept the miniature copy under ``root``.

    torchvision's Flowers102 refuses label files whose md5 differs from the official ones
    (``Flowers102._file_dict``), and our miniature files are of course different. Only that checksum
    table is patched, to the miniature files' own md5s; every other line of the real loading code
    (torchvision's and ours, which reads the same table) runs unchanged.
    """
    from torchvision.datasets import Flowers102

    base = root / "flowers-102"
    table = dict(Flowers102._file_dict)
    for key in ("label", "setid"):
        name = table[key][0]
        table[key] = (name, md5(base / name))
    monkeypatch.setattr(Flowers102, "_file_dict", table)


def make_imagefolder(root: Path, classes: tuple[str, ...] = ("ant", "bee", "cat"), per_class: int = 2) -> Path:
    """``root/{train,val,test}/<class>/<n>.jpg``."""
    n = 0
    for split in ("train", "val", "test"):
        for cls in classes:
            for i in range(per_class):
                n += 1
                _jpeg(root / split / cls / f"{i}.jpg", seed=1000 + n)
    return root


_QUICK = get_profile("quick")  # taken at import: tests may swap the registered profile for a tiny one


def tiny_profile(**changes) -> Profile:
    """The quick profile trimmed to seconds: one base epoch, one fine-tuning epoch."""
    return dataclasses.replace(_QUICK, **{"base_epochs": 1, "finetune_epochs": 1, **changes})
