"""Named experiment set-ups: which data, which model, how to train, and the harness's default axes.

A profile is the single upstream source of settings; the harness overrides single fields with
``dataclasses.replace`` from its command-line options, and everything that affects a trained
checkpoint is part of the cache key via :meth:`Profile.training_key`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

PROFILE_NAMES = ("quick", "seed", "imagefolder")
RATES_0_TO_50 = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


@dataclass(frozen=True)
class Profile:
    name: str
    dataset: str  # digits | flowers102 | imagefolder
    model: str  # a vggprune.models variant
    num_classes: int | None  # None: taken from the data
    image_size: int
    # harness axes (defaults; each has a command-line option)
    rates: tuple[float, ...] = RATES_0_TO_50
    methods: tuple[str, ...] = ("torch-pruning", "by-hand")
    scopes: tuple[str, ...] = ("fc",)
    criterion: str = "l2"
    round_to: int = 1
    batch_sizes: tuple[int, ...] = (1, 8)
    latency_rounds: int = 20
    latency_warmup: int = 3
    # training
    base_epochs: int = 10
    finetune_epochs: int = 2
    lr: float = 0.01
    finetune_lr: float = 0.005
    momentum: float = 0.9
    schedule: str = "cosine"  # per-step learning-rate schedule: cosine | onecycle (warm-up, then anneal)
    weight_decay: float = 5e-4
    train_batch_size: int = 32
    eval_batch_size: int = 64
    seed: int = 0

    def training_key(self) -> dict:
        """The fields that change trained weights (harness-only axes excluded)."""
        d = asdict(self)
        for k in ("rates", "methods", "scopes", "batch_sizes", "latency_rounds", "latency_warmup",
                  "criterion", "round_to", "eval_batch_size"):
            d.pop(k)
        return d


PROFILES: dict[str, Profile] = {
    # Offline, minutes on a laptop CPU: real handwritten digits, the small VGG11 from scratch.
    "quick": Profile(
        name="quick", dataset="digits", model="small", num_classes=10, image_size=32,
        scopes=("fc", "conv"), batch_sizes=(1, 64), latency_rounds=30, latency_warmup=5,
        base_epochs=20, finetune_epochs=3, lr=0.05, finetune_lr=0.01, train_batch_size=64,
        eval_batch_size=256, schedule="onecycle",
    ),
    # The student study: seed VGG11 on Flowers102 from ImageNet weights, FC pruning 0–50 %.
    "seed": Profile(
        name="seed", dataset="flowers102", model="seed", num_classes=102, image_size=224,
        batch_sizes=(1, 8), latency_rounds=10, latency_warmup=2,
        base_epochs=10, finetune_epochs=2, lr=0.01, finetune_lr=0.005, train_batch_size=32,
    ),
    # Any local train/val/test folder of class folders, torchvision-style head.
    "imagefolder": Profile(
        name="imagefolder", dataset="imagefolder", model="torchvision", num_classes=None, image_size=224,
        batch_sizes=(1, 8), latency_rounds=10, latency_warmup=2,
    ),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; allowed: {', '.join(PROFILE_NAMES)}")
    return PROFILES[name]
