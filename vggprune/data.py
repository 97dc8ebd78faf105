"""Datasets behind one function: :func:`load_data` returns train/val/test loaders and the class count.

* ``digits`` (the quick profile's default): scikit-learn's 1,797 embedded 8×8 handwritten digits, a
  fixed stratified train/val/test split, upsampled once to RGB tensors kept in memory, so an epoch
  costs only the model's compute and nothing is ever downloaded.
* ``flowers102``: torchvision's ``Flowers102`` (official train/val/test split) under ``data_root``;
  downloaded only when asked (``--download`` / ``VGGPRUNE_DOWNLOAD=1``).
* ``imagefolder``: ``data_root/{train,val,test}/<class>/<image>``.

Cheap questions (is the data there, how many classes, what identifies it for the checkpoint cache)
are answered by :func:`describe` without decoding an image, so a warm cache never touches the data.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler, TensorDataset

from vggprune.env import DATA_ROOT_ENV, DOWNLOAD_ENV, env_flag, env_value  # noqa: F401 (re-exported)
from vggprune.errors import UserError
from vggprune.profiles import AUGMENTS, split_augment

DATASETS = ("digits", "flowers102", "imagefolder")
SPLITS = ("train", "val", "test")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The digits split is fixed: its own seed, not the training seed, so every run and every training
# seed is scored on the same test images.
DIGITS_SPLIT_SEED = 0
DIGITS_VAL_FRACTION = 0.15
DIGITS_TEST_FRACTION = 0.20
# Training augmentation: each digit is shifted by up to this fraction of the image side (random,
# seeded). Real handwriting is not centred exactly; the shift is what lifts test accuracy clear of 0.97.
DIGITS_MAX_SHIFT = 1 / 16
# The crop augmentation of image files is the same shift: pad each side by this fraction of the side
# (replicating the edge, so a background stays a background) and crop back at random.
CROP_PADDING = DIGITS_MAX_SHIFT

FLOWERS_HOW = ("point --data-root PATH (or VGGPRUNE_DATA_ROOT) at a directory holding flowers-102/ "
               "(jpg/, imagelabels.mat, setid.mat), or pass --download (or set VGGPRUNE_DOWNLOAD=1) "
               "to fetch it (about 330 MB)")
IMAGEFOLDER_HOW = ("point --data-root PATH (or VGGPRUNE_DATA_ROOT) at a directory with train/, val/ and "
                   "test/ sub-folders, each holding one folder of images per class")


def default_data_root() -> Path:
    """``$XDG_DATA_HOME/vggprune`` (``~/.local/share/vggprune``): data is kept, unlike a cache."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "vggprune"


def resolve_data_root(data_root: str | os.PathLike | None) -> Path:
    """The explicit option wins, then ``VGGPRUNE_DATA_ROOT``, then :func:`default_data_root`."""
    if data_root:
        return Path(data_root).expanduser()
    env = env_value(DATA_ROOT_ENV)
    return Path(env).expanduser() if env else default_data_root()


@dataclass
class DataInfo:
    """What can be known about a dataset without loading it."""

    dataset: str
    root: Path | None
    num_classes: int | None  # None when the data is missing and the count cannot be known
    missing: str | None  # one line: what is missing and how to provide it; None when usable
    identity: dict[str, Any] = field(default_factory=dict)  # enters the checkpoint cache key
    train_images: int | None = None  # the training split's size, where it is known without decoding


@dataclass
class DataBundle:
    """The three splits. ``train`` shuffles and augments; ``val`` and ``test`` do neither.

    Every access to ``train`` gives a loader freshly seeded with ``seed``: a fine-tuning run then sees
    the same batches whatever ran before it in the process, so cached weights depend on their key only.
    """

    datasets: dict[str, Dataset]
    num_classes: int
    info: DataInfo
    batch_size: int
    eval_batch_size: int
    seed: int
    num_workers: int = 0
    max_shift: int = 0  # in-memory tensors only: random shift augmentation, in pixels
    flip: bool = False  # in-memory tensors only: random horizontal flips

    @property
    def in_memory(self) -> bool:
        return isinstance(self.datasets["train"], TensorDataset)

    @property
    def train(self) -> DataLoader:
        return self.train_loader(self.seed)

    @property
    def val(self) -> DataLoader:
        return self._eval_loader("val")

    @property
    def test(self) -> DataLoader:
        return self._eval_loader("test")

    def fingerprint(self, split: str = "test") -> str:
        """:func:`labels_fingerprint` of one split: tells whether two runs scored the same images."""
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
        return labels_fingerprint(split_labels(self.datasets[split]))

    def loader(self, split: str) -> DataLoader:
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
        return getattr(self, split)

    def train_loader(self, seed: int) -> DataLoader:
        """A shuffling, augmenting loader whose order and augmentation are fixed by ``seed``."""
        ds = self.datasets["train"]
        gen = torch.Generator().manual_seed(seed)
        drop_last = len(ds) > self.batch_size  # a last batch of one would trip BatchNorm
        if self.in_memory:  # whole batches by fancy indexing: no per-item collate
            if self.max_shift or self.flip:
                ds = RandomShiftBatches(*ds.tensors, self.max_shift, seed, self.flip)
            sampler = BatchSampler(RandomSampler(ds, generator=gen), self.batch_size, drop_last)
            return DataLoader(ds, batch_size=None, sampler=sampler)
        return _ImageLoader(ds, batch_size=self.batch_size, shuffle=True, generator=gen, drop_last=drop_last,
                            num_workers=self.num_workers)

    def _eval_loader(self, split: str) -> DataLoader:
        ds = self.datasets[split]
        if self.in_memory:
            return DataLoader(ds, batch_size=None,
                              sampler=BatchSampler(SequentialSampler(ds), self.eval_batch_size, False))
        return _ImageLoader(ds, batch_size=self.eval_batch_size, shuffle=False, num_workers=self.num_workers)


class ImageDecodeError(UserError):
    """An image file that cannot be decoded; the message names the file."""


class _ImageLoader(DataLoader):
    """A DataLoader for image files whose failures are one line and never leave workers behind.

    An exception in a worker comes back as a multi-line "Caught ... in DataLoader worker" message,
    and the iterator (with its live worker processes) stays referenced by the traceback; here the
    workers are shut down at once and an undecodable image is re-raised with just its own message.
    """

    def __iter__(self):  # type: ignore[override]
        it = super().__iter__()
        try:
            yield from it
        except Exception as exc:
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            if isinstance(exc, ImageDecodeError):
                lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
                last = lines[-1] if lines else str(exc)
                raise ImageDecodeError(last.split("ImageDecodeError: ", 1)[-1]) from None
            raise


def _open_image(path: str):
    """ImageFolder's loader, but an undecodable file is an ImageDecodeError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(f"cannot decode image {path}: {type(exc).__name__}: {str(exc)[:120]}") from None


def _check_image_header(path: Path) -> str | None:
    """None if PIL recognises the file's header, else why not (cheap: no pixels are decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.size  # noqa: B018 - parsed from the header
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        return f"{type(exc).__name__}: {str(exc)[:120]}"
    return None


def split_labels(ds: Dataset) -> list[int]:
    """A split's labels in its (evaluation) order, read without decoding images where possible."""
    if isinstance(ds, TensorDataset):
        return [int(v) for v in ds.tensors[1].tolist()]
    for attr in ("targets", "_labels"):  # ImageFolder, Flowers102
        labels = getattr(ds, attr, None)
        if labels is not None:
            return [int(v) for v in labels]
    return [int(ds[i][1]) for i in range(len(ds))]  # any other dataset: slow but right


def labels_fingerprint(labels: list[int]) -> str:
    """16 hex digits of SHA-256 over the label count and the labels in order (int64, little-endian).

    Per-image results from two runs can only be paired when both scored the same images in the same
    order; equal fingerprints are the cheap check for that (a different split, size or order differs).
    """
    digest = hashlib.sha256(f"{len(labels)}:".encode())
    digest.update(b"".join(int(v).to_bytes(8, "little", signed=True) for v in labels))
    return digest.hexdigest()[:16]


def check_dataset(name: str) -> str:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    return name


def describe(dataset: str, data_root: str | os.PathLike | None = None) -> DataInfo:
    """Where the data is, whether it is complete, its class count and identity; never decodes images."""
    check_dataset(dataset)
    if dataset == "digits":
        return _describe_digits()
    root = resolve_data_root(data_root)
    if dataset == "flowers102":
        return _describe_flowers(root)
    return _describe_imagefolder(root)


def load_data(dataset: str, data_root: str | os.PathLike | None = None, *, image_size: int,
              batch_size: int, eval_batch_size: int, seed: int, num_workers: int | None = None,
              info: DataInfo | None = None, augment: str = "crop") -> DataBundle:
    """Train/val/test loaders and the class count, or a :class:`UserError` saying what is missing.

    ``seed`` fixes the training shuffle and augmentation, so a run is repeatable. ``num_workers``
    applies to the image-file datasets (default: up to 4, one per core); digits live in memory.
    ``augment`` is one of :data:`~vggprune.profiles.AUGMENTS` (see :func:`image_transforms`).
    """
    if augment not in AUGMENTS:
        raise UserError(f"--augment: unknown value {augment!r}; allowed: {', '.join(AUGMENTS)}")
    info = info or describe(dataset, data_root)
    if info.missing:
        raise UserError(info.missing)
    if dataset == "digits":
        kind, flip = split_augment(augment)
        if kind == "imagenet":
            raise UserError("--augment: the quick profile's in-memory digits take crop, crop+flip or none "
                            "(ImageNet's random resized crop is for large images)")
        splits: dict[str, Dataset] = {s: TensorDataset(*_digits_tensors(image_size, s)) for s in SPLITS}
        shift = round(DIGITS_MAX_SHIFT * image_size) if kind == "crop" else 0
        return DataBundle(splits, 10, info, batch_size, eval_batch_size, seed, max_shift=shift, flip=flip)
    train_tf, eval_tf = image_transforms(image_size, augment)
    assert info.root is not None
    if dataset == "flowers102":
        from torchvision.datasets import Flowers102

        try:
            splits = {s: Flowers102(info.root, split=s, transform=train_tf if s == "train" else eval_tf)
                      for s in SPLITS}
        except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
            raise UserError(f"Flowers102 under {info.root} cannot be read ({exc}); {FLOWERS_HOW}") from None
    else:
        splits = _imagefolder_splits(info.root, train_tf, eval_tf)
    workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
    assert info.num_classes is not None
    return DataBundle(splits, info.num_classes, info, batch_size, eval_batch_size, seed, workers)


def download_flowers102(data_root: str | os.PathLike | None = None) -> str | None:
    """Fetch Flowers102 into the data root (torchvision skips what is already there).

    Returns None on success, else one line saying why it failed, so a caller that must not crash
    (the benchmark harness) can report it the same way as missing data.
    """
    from torchvision.datasets import Flowers102

    root = resolve_data_root(data_root)
    try:
        Flowers102(root, split="train", download=True)
    except Exception as exc:  # network errors come in many types (URLError, OSError, RuntimeError)
        return (f"downloading Flowers102 into {root} failed ({type(exc).__name__}: {str(exc)[:160]}); "
                f"copy it there by hand or point --data-root PATH (or VGGPRUNE_DATA_ROOT) at a copy")
    return None




def image_transforms(image_size: int, augment: str = "imagenet+flip") -> tuple[Callable, Callable]:
    """(train, eval) transforms for image files.

    ``imagenet``: random resized crop for training, resize to 256/224 of the side + centre crop for
    evaluation (ImageNet's recipe, what pretrained weights expect). ``crop`` and ``none``: the whole
    image (short side resized, centre-cropped square) for evaluation; ``crop`` trains on it padded by
    :data:`CROP_PADDING` and cropped back at random, ``none`` on it as is. ``+flip`` adds random
    horizontal flips to training.
    """
    from torchvision import transforms as T

    if augment not in AUGMENTS:
        raise UserError(f"--augment: unknown value {augment!r}; allowed: {', '.join(AUGMENTS)}")
    kind, flip = split_augment(augment)
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    whole = [T.Resize(image_size), T.CenterCrop(image_size)]
    if kind == "imagenet":
        evaluate = T.Compose([T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size), T.ToTensor(), norm])
        steps = [T.RandomResizedCrop(image_size)]
    else:
        evaluate = T.Compose([*whole, T.ToTensor(), norm])
        pad = max(1, round(CROP_PADDING * image_size))
        steps = whole + ([T.RandomCrop(image_size, padding=pad, padding_mode="edge")] if kind == "crop" else [])
    train = T.Compose([*steps, *([T.RandomHorizontalFlip()] if flip else []), T.ToTensor(), norm])
    return train, evaluate


# --- digits ----------------------------------------------------------------------------------------

def _describe_digits() -> DataInfo:
    from importlib.metadata import version

    # The installed version without importing sklearn (and scipy): describe() runs at pytest configure.
    identity = {"dataset": "digits", "sklearn": version("scikit-learn"), "split_seed": DIGITS_SPLIT_SEED,
                "val_fraction": DIGITS_VAL_FRACTION, "test_fraction": DIGITS_TEST_FRACTION,
                "max_shift": DIGITS_MAX_SHIFT, "upsample": "bilinear"}
    return DataInfo("digits", None, 10, None, identity)


@functools.lru_cache(maxsize=1)
def digits_split_indices() -> dict[str, tuple[int, ...]]:
    """Indices into ``load_digits()`` of each split: stratified by class and fixed by a constant seed."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    y = load_digits().target
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=DIGITS_TEST_FRACTION, stratify=y,
                                  random_state=DIGITS_SPLIT_SEED)
    val_share = DIGITS_VAL_FRACTION / (1 - DIGITS_TEST_FRACTION)
    train, val = train_test_split(rest, test_size=val_share, stratify=y[rest], random_state=DIGITS_SPLIT_SEED)
    return {"train": tuple(sorted(train.tolist())), "val": tuple(sorted(val.tolist())),
            "test": tuple(sorted(test.tolist()))}


@functools.lru_cache(maxsize=2)
def _digits_all(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as normalised ``N×3×S×S`` float tensors, upsampled once per process."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixel values are 0..16
    x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear",
                                        align_corners=False)
    train = torch.tensor(digits_split_indices()["train"])
    mean, std = x[train].mean(), x[train].std()  # training statistics only: no test leakage
    x = ((x - mean) / std).expand(-1, 3, -1, -1).contiguous()
    return x, torch.tensor(digits.target, dtype=torch.long)


def _digits_tensors(image_size: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _digits_all(image_size)
    idx = torch.tensor(digits_split_indices()[split])
    return x[idx], y[idx]


class RandomShiftBatches(Dataset):
    """In-memory images indexed a batch at a time, each image shifted by a random whole-pixel offset
    (and, with ``flip``, mirrored left-right at random).

    The padding is the images' own background value, and a private generator seeded once makes the
    sequence of shifts repeatable. Cost: one gather per batch, nothing per item.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, max_shift: int, seed: int, flip: bool = False) -> None:
        self.x, self.y, self.max_shift, self.flip = x, y, int(max_shift), flip
        self.background = float(x.amin())
        self.gen = torch.Generator().manual_seed(seed + 1)  # +1: not the same stream as the shuffle

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, s = self.x[index], self.y[index], self.max_shift
        n, c, h, w = x.shape
        padded = torch.nn.functional.pad(x, (s, s, s, s), value=self.background)
        dy, dx = torch.randint(0, 2 * s + 1, (2, n, 1), generator=self.gen)
        rows = (dy + torch.arange(h))[:, None, :, None]
        cols = (dx + torch.arange(w))[:, None, None, :]
        if self.flip:  # mirrored images read their columns right to left
            mirrored = torch.rand(n, generator=self.gen) < 0.5
            cols = torch.where(mirrored[:, None, None, None], cols.flip(-1), cols)
        return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols], y


# --- Flowers102 ------------------------------------------------------------------------------------

def _describe_flowers(root: Path) -> DataInfo:
    from torchvision.datasets import Flowers102
    from torchvision.datasets.utils import check_integrity

    base = root / "flowers-102"
    files = Flowers102._file_dict  # (file name, md5) of the official label files
    absent = [f"{base.name}/jpg/"] if not (base / "jpg").is_dir() else []
    absent += [f"{base.name}/{files[k][0]}" for k in ("label", "setid") if not (base / files[k][0]).is_file()]
    if absent:
        return DataInfo("flowers102", root, 102,
                        f"Flowers102 not found under {root}: missing {', '.join(absent)}; {FLOWERS_HOW}")
    for k in ("label", "setid"):
        name, md5 = files[k]
        if not check_integrity(str(base / name), md5):
            return DataInfo("flowers102", root, 102,
                            f"Flowers102 under {root} is incomplete: {base.name}/{name} does not match "
                            f"the official file (md5 differs; truncated or replaced?); {FLOWERS_HOW}")
    import numpy as np
    from scipy.io import loadmat

    setid = loadmat(base / files["setid"][0], squeeze_me=True)
    ids = sorted({int(i) for key in ("trnid", "valid", "tstid") for i in setid[key].ravel()})
    lacking = [i for i in ids if not (base / "jpg" / f"image_{i:05d}.jpg").is_file()]
    if lacking:
        return DataInfo("flowers102", root, 102,
                        f"Flowers102 under {root} is incomplete: {base.name}/jpg/ lacks {len(lacking)} of the "
                        f"{len(ids)} images setid.mat lists (e.g. image_{lacking[0]:05d}.jpg); {FLOWERS_HOW}")
    # The label files are checked against their md5s, so those identify the data wherever it lives.
    identity = {"dataset": "flowers102", "labels_md5": files["label"][1], "setid_md5": files["setid"][1],
                "images": len(ids)}
    return DataInfo("flowers102", root, 102, None, identity, train_images=int(np.asarray(setid["trnid"]).size))


# --- imagefolder -----------------------------------------------------------------------------------

def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _describe_imagefolder(root: Path) -> DataInfo:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    if not root.is_dir():
        return DataInfo("imagefolder", root, None, f"image folder {root} does not exist; {IMAGEFOLDER_HOW}")
    absent = [f"{s}/" for s in SPLITS if not (root / s).is_dir()]
    if absent:
        return DataInfo("imagefolder", root, None,
                        f"image folder {root} is incomplete: missing {', '.join(absent)}; {IMAGEFOLDER_HOW}")
    classes = _class_dirs(root / "train")
    if not classes:
        return DataInfo("imagefolder", root, None,
                        f"image folder {root} is incomplete: train/ has no class folders; {IMAGEFOLDER_HOW}")
    digest, empty, train_images = hashlib.sha256(), [], 0
    for split in SPLITS:
        found = _class_dirs(root / split)
        if found != classes:
            lost, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
            raise UserError(f"image folder {root}: {split}/ classes differ from train/'s "
                            f"(missing {lost or 'none'}, extra {extra or 'none'}); every split needs the same "
                            f"class folders or labels would silently shift")
        for cls in classes:
            images = sorted(p for p in (root / split / cls).rglob("*")
                            if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
            if not images:
                empty.append(f"{split}/{cls}/")
            train_images += len(images) if split == "train" else 0
            for p in images:  # names and sizes: identifies the data without reading every byte
                digest.update(f"{p.relative_to(root).as_posix()}\0{p.stat().st_size}\n".encode())
                why = _check_image_header(p)  # before any training, not in a worker mid-epoch
                if why:
                    raise ImageDecodeError(f"image folder {root}: cannot decode {p.relative_to(root)} ({why}); "
                                           f"remove or replace it")
    if empty:
        return DataInfo("imagefolder", root, len(classes),
                        f"image folder {root} is incomplete: no images in {', '.join(empty[:5])}"
                        f"{' …' if len(empty) > 5 else ''}; {IMAGEFOLDER_HOW}")
    identity = {"dataset": "imagefolder", "classes": classes, "files_sha256": digest.hexdigest()}
    return DataInfo("imagefolder", root, len(classes), None, identity, train_images=train_images)


def _imagefolder_splits(root: Path, train_tf: Callable, eval_tf: Callable) -> dict[str, Dataset]:
    from torchvision.datasets import ImageFolder

    return {s: ImageFolder(str(root / s), transform=train_tf if s == "train" else eval_tf, loader=_open_image)
            for s in SPLITS}
