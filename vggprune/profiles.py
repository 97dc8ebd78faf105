"""Named experiment set-ups, split in two: what defines a trained checkpoint and what selects cases.

* :class:`TrainingConfig` is everything that changes trained weights (data, model, schedule, seed…).
  The checkpoint cache key is derived from *all* of its fields, so a new training setting is keyed
  the moment it is added; there is no exclusion list to keep in step. Its ``base`` part defines the
  base model; ``finetune`` only the pruned cases (changing it never retrains the base).
* :class:`SweepAxes` only chooses which cases run and how they are measured (rates, methods, batch
  sizes, timing rounds): changing them reuses every cached checkpoint.

A :class:`Profile` is a name plus one of each. For reading, ``profile.base_epochs`` etc. still work
(each field name lives in exactly one part), and ``dataclasses.replace(profile, seed=1)`` routes a
field to its part, so callers need not know the split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

PROFILE_NAMES = ("quick", "seed", "imagefolder")
RATES_0_TO_50 = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)

# --- the training recipe: augmentation, rates and schedule follow the model's starting point --------
SCHEDULES = ("cosine", "onecycle")
# imagenet: random resized crop (ImageNet's recipe, for pretrained weights at >= 224 px); crop: pad by an
# eighth of the side and crop back at random (a few pixels of shift, for small images from scratch);
# none: the evaluation transform. "+flip" adds random horizontal flips: opt-in, since text, digits and
# many industrial images are not mirror-symmetric.
AUGMENTS = ("imagenet", "imagenet+flip", "crop", "crop+flip", "none")
PRETRAINED_MIN_IMAGE = 224  # below this, ImageNet's random resized crop keeps too few pixels to learn from
# Fine-tuning ImageNet weights (the seed study's rates) vs training from scratch (the quick profile's,
# which reaches 98 % on digits): a fine-tuning rate leaves a from-scratch model near chance.
FINETUNE_RECIPE = {"lr": 0.01, "schedule": "cosine", "train_batch_size": 32, "base_epochs": 10,
                   "finetune_epochs": 2, "finetune_lr": 0.005}
# From scratch the batch is None: sized to the training split by scratch_batch_size().
SCRATCH_RECIPE = {"lr": 0.05, "schedule": "onecycle", "train_batch_size": None, "base_epochs": 20,
                  "finetune_epochs": 3, "finetune_lr": 0.01}
SCRATCH_MAX_BATCH, SCRATCH_STEPS_PER_EPOCH, MIN_TRAIN_BATCH = 64, 20, 8


def scratch_batch_size(train_images: int | None) -> int:
    """From scratch, what counts is the number of steps: the quick profile takes about 400 (20 epochs of
    ~20 batches of 64); a folder of a few hundred images gets the same count from smaller batches (with
    batches of 64 a 300-image folder gets 80 steps and stays at chance)."""
    if not train_images:
        return SCRATCH_MAX_BATCH
    return max(MIN_TRAIN_BATCH, min(SCRATCH_MAX_BATCH, train_images // SCRATCH_STEPS_PER_EPOCH))


def starts_pretrained(model: str) -> bool:
    """The seed and torchvision variants start from ImageNet weights (when they can be had); small never."""
    return model != "small"


def recipe_for(model: str, image_size: int) -> dict[str, Any]:
    """The default recipe for a model and image size: rates from the starting point, augmentation from
    the size (ImageNet's crop only where the image is as large as ImageNet's)."""
    recipe = dict(FINETUNE_RECIPE if starts_pretrained(model) else SCRATCH_RECIPE)
    recipe["augment"] = "imagenet" if image_size >= PRETRAINED_MIN_IMAGE else "crop"
    return recipe


def split_augment(augment: str) -> tuple[str, bool]:
    """``"crop+flip"`` → ``("crop", True)``."""
    kind, _, flip = augment.partition("+")
    return kind, flip == "flip"


@dataclass(frozen=True)
class BaseTraining:
    """Defines the trained base model (and, through it, every pruned case)."""

    dataset: str  # digits | flowers102 | imagefolder
    model: str  # a vggprune.models variant
    num_classes: int | None  # None: taken from the data
    image_size: int
    base_epochs: int = 10
    lr: float = 0.01
    momentum: float = 0.9
    schedule: str = "cosine"  # per-step learning-rate schedule: cosine | onecycle (warm-up, then anneal)
    weight_decay: float = 5e-4
    train_batch_size: int | None = 32  # None: scratch_batch_size() of the training split (resolved by the pipeline)
    augment: str = "imagenet+flip"  # one of AUGMENTS: the training split's augmentation
    # The stored top-1 is measured at training time, so its batch size is part of what is cached.
    eval_batch_size: int = 64
    seed: int = 0


@dataclass(frozen=True)
class FineTuning:
    """Defines a pruned case's fine-tuning (0 epochs = one-shot pruning)."""

    finetune_epochs: int = 2
    finetune_lr: float = 0.005


@dataclass(frozen=True)
class TrainingConfig:
    base: BaseTraining
    finetune: FineTuning = field(default_factory=FineTuning)

    def base_key(self) -> dict[str, Any]:
        """Every field that defines the base checkpoint."""
        return asdict(self.base)

    def key(self) -> dict[str, Any]:
        """Every field that defines a fine-tuned case's checkpoint (the base's included)."""
        return asdict(self)


@dataclass(frozen=True)
class SweepAxes:
    """Which cases a run selects and how it times them; never part of a cache key."""

    rates: tuple[float, ...] = RATES_0_TO_50
    methods: tuple[str, ...] = ("torch-pruning", "by-hand")
    scopes: tuple[str, ...] = ("fc",)
    criterion: str = "l2"
    round_to: int = 1
    batch_sizes: tuple[int, ...] = (1, 8)
    # eager everywhere; the others at the deploy candidates (the base and each scope's largest rate),
    # which keeps `make bench` in budget (compile is opt-in: slow to build, no faster on a CPU)
    runtimes: tuple[str, ...] = ("eager", "fused", "onnxruntime", "openvino")
    latency_rounds: int = 20  # used as given only with --latency-rounds; otherwise sized per case
    latency_warmup: int = 3
    latency_budget_s: float = 2.0  # timed forwards per case at most, when rounds are sized (vggprune.timing.evidence)


_PARTS = {"base": BaseTraining, "finetune": FineTuning, "axes": SweepAxes}
# field name -> which part holds it (names are unique across parts: tests/test_profiles.py checks)
FIELD_PART = {f.name: part for part, cls in _PARTS.items() for f in fields(cls)}


@dataclass(frozen=True, init=False)
class Profile:
    name: str
    training: TrainingConfig
    axes: SweepAxes

    def __init__(self, name: str, training: TrainingConfig | None = None, axes: SweepAxes | None = None,
                 **flat: Any) -> None:
        """``Profile(name, dataset=..., model=..., rates=...)``: flat fields are routed to their part."""
        unknown = sorted(set(flat) - set(FIELD_PART))
        if unknown:
            raise TypeError(f"Profile has no field {', '.join(unknown)}")
        by_part: dict[str, dict[str, Any]] = {p: {} for p in _PARTS}
        for key, value in flat.items():
            by_part[FIELD_PART[key]][key] = value
        if training is None:
            base = BaseTraining(**by_part["base"])
            training = TrainingConfig(base, FineTuning(**by_part["finetune"]))
        else:
            training = TrainingConfig(replace(training.base, **by_part["base"]),
                                      replace(training.finetune, **by_part["finetune"]))
        axes = replace(axes or SweepAxes(), **by_part["axes"])
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "training", training)
        object.__setattr__(self, "axes", axes)

    def __getattr__(self, item: str) -> Any:
        # Only called for names that are not attributes: the flat, read-only view of the parts.
        part = FIELD_PART.get(item)
        if part is None:
            raise AttributeError(item)
        holder = self.axes if part == "axes" else getattr(self.training, part)
        return getattr(holder, item)


PROFILES: dict[str, Profile] = {
    # Offline, minutes on a laptop CPU: real handwritten digits, the small VGG11 from scratch.
    "quick": Profile(
        name="quick", dataset="digits", model="small", num_classes=10, image_size=32,
        scopes=("fc", "conv"), batch_sizes=(1, 64), latency_rounds=30, latency_warmup=5, latency_budget_s=0.35,
        base_epochs=20, finetune_epochs=3, lr=0.05, finetune_lr=0.01, train_batch_size=64,
        eval_batch_size=256, schedule="onecycle", augment="crop",
    ),
    # The student study: seed VGG11 on Flowers102 from ImageNet weights, FC pruning 0–50 %.
    "seed": Profile(
        name="seed", dataset="flowers102", model="seed", num_classes=102, image_size=224,
        batch_sizes=(1, 8), latency_rounds=10, latency_warmup=2, latency_budget_s=8.0,
        base_epochs=10, finetune_epochs=2, lr=0.01, finetune_lr=0.005, train_batch_size=32,
        augment="imagenet+flip",  # flowers are mirror-symmetric; the study's recipe
    ),
    # Any local train/val/test folder of class folders, torchvision-style head (--model, --image-size
    # make it laptop-sized: e.g. --model small --image-size 32, which switches to the from-scratch recipe).
    "imagefolder": Profile(
        name="imagefolder", dataset="imagefolder", model="torchvision", num_classes=None, image_size=224,
        batch_sizes=(1, 8), latency_rounds=10, latency_warmup=2, **recipe_for("torchvision", 224),
    ),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; allowed: {', '.join(PROFILE_NAMES)}")
    return PROFILES[name]
