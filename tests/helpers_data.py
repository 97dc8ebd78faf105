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


# --- learnable image folders that are not digits: glyphs rendered from fonts, and simple shapes -------

GLYPHS = "AEFGJKLPRS"  # ten letters, none of them a digit
SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond")
OWN_SPLITS = {"train": 60, "val": 12, "test": 24}  # images per class and split: the own-data measurement's


def _fonts(limit: int = 8) -> list:
    """Up to ``limit`` of the machine's TrueType fonts (sorted, so every run draws the same ones);
    without any, PIL's bundled default font at a few sizes."""
    from PIL import ImageFont

    found = sorted(p for d in ("/usr/share/fonts", "/usr/local/share/fonts", "/Library/Fonts",
                               "C:/Windows/Fonts") if Path(d).is_dir() for p in Path(d).rglob("*.ttf"))
    fonts = []
    for path in found[:limit]:
        try:
            fonts.append(lambda size, path=path: ImageFont.truetype(str(path), size))
        except OSError:
            continue
    return fonts or [lambda size: ImageFont.load_default(size=size)]


def _glyph(text: str, rng: np.random.Generator, fonts: list, size: int) -> Image.Image:
    """One letter in a random font, size, ink, position and tilt, on a light, slightly noisy background."""
    from PIL import ImageDraw

    scale = 3  # drawn large and reduced: smooth edges at 32 px
    side = size * scale
    bg = int(rng.integers(200, 256))
    img = Image.new("L", (side, side), bg)
    font = fonts[int(rng.integers(len(fonts)))](int(side * rng.uniform(0.55, 0.8)))
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = (side - (right - left)) / 2 - left + rng.uniform(-0.1, 0.1) * side
    y = (side - (bottom - top)) / 2 - top + rng.uniform(-0.1, 0.1) * side
    draw.text((x, y), text, fill=int(rng.integers(0, 90)), font=font)
    img = img.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR, fillcolor=bg)
    pixels = np.asarray(img.resize((size, size), Image.LANCZOS), dtype=np.float32)
    pixels += rng.normal(0, 6, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert("RGB")


def _shape(kind: str, rng: np.random.Generator, size: int) -> Image.Image:
    """One shape of random size, position, rotation and colours (foreground far from background)."""
    from PIL import ImageDraw

    scale = 3
    side = size * scale
    bg = rng.integers(0, 256, 3)
    fg = (bg + rng.integers(90, 166, 3)) % 256  # every channel far from the background's
    img = Image.new("RGB", (side, side), tuple(int(v) for v in bg))
    draw = ImageDraw.Draw(img)
    r = side * rng.uniform(0.2, 0.36)
    cx, cy = (side / 2 + rng.uniform(-1, 1) * (side / 2 - r - 2) for _ in range(2))
    turn = rng.uniform(0, 2 * np.pi)
    colour = tuple(int(v) for v in fg)

    def polygon(corners: int, radius: float, offset: float = 0.0) -> list[tuple[float, float]]:
        return [(cx + radius * np.cos(turn + offset + 2 * np.pi * k / corners),
                 cy + radius * np.sin(turn + offset + 2 * np.pi * k / corners)) for k in range(corners)]

    box = (cx - r, cy - r, cx + r, cy + r)
    if kind == "circle":
        draw.ellipse(box, fill=colour)
    elif kind == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(r / 3)))
    elif kind == "square":
        draw.polygon(polygon(4, r * 1.2), fill=colour)
    elif kind == "triangle":
        draw.polygon(polygon(3, r * 1.2), fill=colour)
    elif kind == "diamond":  # a thin rhombus: long and short diagonals
        a, b = r * 1.3, r * 0.55
        c, s = np.cos(turn), np.sin(turn)
        draw.polygon([(cx + a * c, cy + a * s), (cx - b * s, cy + b * c), (cx - a * c, cy - a * s),
                      (cx + b * s, cy - b * c)], fill=colour)
    elif kind == "cross":
        w = max(2, int(r / 2.5))
        for angle in (turn, turn + np.pi / 2):
            dx, dy = r * np.cos(angle), r * np.sin(angle)
            draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=colour, width=w)
    else:
        raise ValueError(f"unknown shape {kind!r}")
    return img.resize((size, size), Image.LANCZOS)


def make_own_folder(root: Path, kind: str = "glyphs", per_split: dict[str, int] | None = None, size: int = 32,
                    seed: int = 0, shuffle_labels: bool = False) -> Path:
    """``root/{train,val,test}/<class>/<n>.png`` of ``kind`` ``glyphs`` (letters in the machine's fonts)
    or ``shapes``; ``per_split`` images per class in each split (default :data:`OWN_SPLITS`).

    ``shuffle_labels``: each image's class folder is drawn independently of what it shows (balanced),
    so nothing can be learned that holds on the test split.
    """
    names = list(GLYPHS) if kind == "glyphs" else list(SHAPES) if kind == "shapes" else None
    if names is None:
        raise ValueError(f"unknown folder kind {kind!r}; allowed: glyphs, shapes")
    per_split = per_split or OWN_SPLITS
    rng = np.random.default_rng(seed)
    fonts = _fonts() if kind == "glyphs" else []
    for split, count in per_split.items():
        labels = np.repeat(np.arange(len(names)), count)
        shown = rng.permutation(labels) if shuffle_labels else labels
        for i, (label, content) in enumerate(zip(labels, shown)):
            img = _glyph(names[content], rng, fonts, size) if kind == "glyphs" else _shape(names[content], rng, size)
            path = root / split / names[label] / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            img.save(path)
    return root


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.helpers_data glyphs OUT``: write a folder for trying the own-data recipe by hand."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.helpers_data", description=main.__doc__)
    parser.add_argument("kind", choices=("glyphs", "shapes"))
    parser.add_argument("out", type=Path)
    for split, count in OWN_SPLITS.items():
        parser.add_argument(f"--{split}", type=int, default=count, help=f"images per class (default {count})")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shuffle-labels", action="store_true", help="labels independent of the images")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} exists and is not empty")
    make_own_folder(args.out, args.kind, {s: getattr(args, s) for s in OWN_SPLITS}, args.size, args.seed,
                    args.shuffle_labels)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
