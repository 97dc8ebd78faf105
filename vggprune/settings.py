"""A benchmark run's settings and the cases they expand to.

The harness's options arrive as strings (command line or environment); :func:`resolve_settings`
checks each against what is allowed, fills the rest from the profile, and raises one UserError naming
the bad value. :meth:`RunSettings.cases` expands the axes into cases with stable, readable ids.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vggprune.errors import UserError
from vggprune.identity import BASE, DEFAULT_RUNTIME, Case, ModelKey
from vggprune.limits import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_IMAGE,
    MAX_PROCESSES,
    MAX_ROUND_TO,
    MAX_ROUNDS,
    MAX_SEED,
    MIN_IMAGE,
    RUN_SPREAD,
    TIMING_PROCESSES,
    available_cores,
    check_batch_fits,
    float_in_range,
    inference_bytes_per_image,
    int_in_range,
    max_threads,
)
from vggprune.models import VARIANTS, VGG11_CFG, VGGSpec, spec_for
from vggprune.profiles import (
    AUGMENTS,
    PROFILE_NAMES,
    SCHEDULES,
    Profile,
    SweepAxes,
    TrainingConfig,
    get_profile,
    recipe_for,
)
from vggprune.pruning import CRITERIA, METHODS, SCOPES, parse_rates
from vggprune.timing.pairing import MEMORY_FORMATS

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cpu,cuda")
MAX_LR = 10.0  # beyond this SGD diverges on any of these models; a typo (50 for 0.05) is caught at once
# channels_last by default: oneDNN and cuDNN run VGG convs fastest in NHWC (measured in the README).


@dataclass(frozen=True)
class RunSettings:
    """A checked harness run: the profile (``profile.training`` defines checkpoints, ``profile.axes``
    selects cases) plus where things are and how timing runs."""

    profile: Profile
    devices: tuple[str, ...]
    data_root: Path | None = None
    download: bool = False
    weights: Path | None = None
    cache_dir: Path | None = None
    use_cache: bool = True
    train_device: str | None = None  # None: CUDA when available (vggprune.train.resolve_device)
    fixed_rounds: int | None = None  # --latency-rounds: exactly these rounds; None: sized per case
    threads: int = 1
    processes: int = 1  # processes a CPU case's rounds are timed in; 1 = no worker processes
    run_spread: float = RUN_SPREAD  # between-run SD (log scale) the speed-up intervals allow for
    memory_format: str = "channels_last"
    # None: the caller (bench/conftest.py) supplies its committed files; the library never guesses.
    thresholds_file: Path | None = None
    expected_params_file: Path | None = None
    max_accuracy_drop: float | None = None  # None: the thresholds file's max_drop, else the gates' default
    notes: tuple[str, ...] = ()  # deprecation warnings for the caller to show

    @property
    def training(self) -> TrainingConfig:
        return self.profile.training

    @property
    def axes(self) -> SweepAxes:
        return self.profile.axes

    def model_keys(self) -> list[ModelKey]:
        """The base once, then every (scope, method, rate > 0) the profile asks for."""
        p = self.profile
        keys = [BASE]
        for scope in p.scopes:
            for rate in p.rates:
                if rate == 0:
                    continue  # rate 0 is the base model: one case, not one per method
                keys += [ModelKey(m, scope, rate, p.criterion, p.round_to) for m in p.methods]
        return keys

    def runtimes_for(self, key: ModelKey) -> tuple[str, ...]:
        """Eager for every model; the other runtimes for the deploy candidates only: the base and the
        largest rate of each scope (what a user would ship, and what fits the time budget)."""
        top = max(self.profile.rates, default=0.0)
        if key.is_base or key.rate == top:
            return self.profile.runtimes
        return tuple(r for r in self.profile.runtimes if r == DEFAULT_RUNTIME)

    def cases(self) -> list[Case]:
        # Model-major order, so each model is built once and then timed in every runtime/device/batch size.
        return [Case(self.profile.name, key, device, bs, runtime, variant=self.profile.model)
                for key in self.model_keys() for runtime in self.runtimes_for(key)
                for device in self.devices for bs in self.profile.batch_sizes]


def _split(text: str) -> list[str]:
    return [s.strip() for s in str(text).split(",") if s.strip()]


def _choices(option: str, text: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    items = _split(text)
    bad = [i for i in items if i not in allowed]
    if bad or not items:
        raise UserError(f"{option}: unknown value {', '.join(bad) or repr(text)}; allowed: {', '.join(allowed)}")
    return tuple(dict.fromkeys(items))


def _choice(option: str, text: str, allowed: tuple[str, ...]) -> str:
    return _choices(option, text, allowed)[0]  # options.read_options already refused lists


def _ints(option: str, text: str, low: int, high: int) -> tuple[int, ...]:
    items = _split(text)
    if not items:
        raise UserError(f"{option}: expected a comma-separated list of integers, got {text!r}")
    return tuple(dict.fromkeys(int_in_range(option, item, low, high) for item in items))


def _rates(text: str) -> tuple[float, ...]:
    try:
        return tuple(sorted(set(parse_rates(text))))
    except UserError as exc:
        raise UserError(f"--rates: {exc}") from None


def resolve_devices(text: str, cuda_available: bool) -> tuple[str, ...]:
    choice = ",".join(_split(text))
    if choice not in DEVICE_CHOICES and choice != "cuda,cpu":
        raise UserError(f"--devices: unknown value {text!r}; allowed: {', '.join(DEVICE_CHOICES)}")
    if choice == "auto":
        return ("cpu", "cuda") if cuda_available else ("cpu",)
    devices = tuple(sorted(_split(choice)))  # cpu before cuda
    if "cuda" in devices and not cuda_available:
        raise UserError("--devices: CUDA was asked for but torch.cuda.is_available() is False on this machine")
    return devices


def resolve_train_device(text: str | None, cuda_available: bool) -> str | None:
    """None (auto: CUDA when present), "cpu" or "cuda"; CUDA asked for without one is refused now."""
    if not text or text == "auto":
        return None
    device = _choice("--train-device", text, ("auto", "cpu", "cuda"))
    if device == "cuda" and not cuda_available:
        raise UserError("--train-device: cuda was asked for but torch.cuda.is_available() is False on this machine")
    return device


def existing_file(option: str, text: str | None) -> Path | None:
    if not text:
        return None
    path = Path(text).expanduser()
    if not path.exists():
        raise UserError(f"{option}: {path} does not exist")
    if not path.is_file():
        raise UserError(f"{option}: {path} is not a file")
    return path


def check_data_root(text: str | None) -> Path | None:
    """An explicit data root must be a non-empty directory: a typo must not quietly skip the accuracy gate."""
    if not text:
        return None
    path = Path(text).expanduser()
    if not path.exists():
        raise UserError(f"--data-root: {path} does not exist")
    if not path.is_dir():
        raise UserError(f"--data-root: {path} is not a directory")
    try:
        empty = not any(path.iterdir())
    except OSError as exc:
        raise UserError(f"--data-root: {path} cannot be read ({exc.strerror or exc})") from None
    if empty:
        raise UserError(f"--data-root: {path} is empty")
    return path


def resolve_profile(raw: dict[str, Any]) -> Profile:
    """The named profile with the training options applied (shared by the harness and the CLI)."""
    name = raw.get("profile") or "quick"
    if name not in PROFILE_NAMES:
        raise UserError(f"--profile: unknown value {name!r}; allowed: {', '.join(PROFILE_NAMES)}")
    profile = get_profile(str(name))
    changes: dict[str, Any] = {}
    for option in ("model", "image_size"):
        if raw.get(option) and profile.dataset != "imagefolder":
            raise UserError(f"--{option.replace('_', '-')}: only the imagefolder profile takes it "
                            f"(profile {profile.name} is fixed to model {profile.model}, {profile.image_size} px)")
    if raw.get("model"):
        changes["model"] = _choice("--model", raw["model"], VARIANTS)
    if raw.get("image_size"):
        changes["image_size"] = int_in_range("--image-size", raw["image_size"], MIN_IMAGE, MAX_IMAGE)
    if profile.dataset == "imagefolder":  # the recipe follows the model's starting point; options override it
        changes.update(recipe_for(changes.get("model", profile.model), changes.get("image_size", profile.image_size)))
    changes.update(_recipe_options(raw))
    if raw.get("epochs"):
        changes["base_epochs"] = int_in_range("--epochs", raw["epochs"], 1, MAX_EPOCHS)
    if raw.get("finetune_epochs"):
        changes["finetune_epochs"] = int_in_range("--finetune-epochs", raw["finetune_epochs"], 0, MAX_EPOCHS)
    if raw.get("seed"):
        changes["seed"] = int_in_range("--seed", raw["seed"], 0, MAX_SEED)
    return replace(profile, **changes)


def _recipe_options(raw: dict[str, Any]) -> dict[str, Any]:
    """The recipe options a user gave (--augment, --lr, --train-batch-size, --schedule), checked."""
    changes: dict[str, Any] = {}
    if raw.get("augment"):
        changes["augment"] = _choice("--augment", raw["augment"], AUGMENTS)
    if raw.get("lr"):
        changes["lr"] = float_in_range("--lr", raw["lr"], 0.0, MAX_LR)
        if changes["lr"] == 0:
            raise UserError("--lr: '0' is not a number in (0, 10]: a zero learning rate trains nothing")
    if raw.get("train_batch_size"):
        changes["train_batch_size"] = int_in_range("--train-batch-size", raw["train_batch_size"], 2, MAX_BATCH)
    if raw.get("schedule"):
        changes["schedule"] = _choice("--schedule", raw["schedule"], SCHEDULES)
    return changes


def check_inference_batch(option: str, model: str, spec: VGGSpec, image_size: int, batch: int) -> None:
    """Refuse (one line) a batch of ``image_size`` images whose activations cannot fit in memory now."""
    pools = [c == "M" for c in VGG11_CFG]
    pool_after = tuple(pools[i + 1] for i, c in enumerate(VGG11_CFG) if c != "M")
    per_image = inference_bytes_per_image(spec.conv_widths, pool_after, image_size)
    model_bytes = 4 * (sum(spec.conv_widths) * 9 * 512 + 25088 * 4096 * 2)  # generous: two model copies
    check_batch_fits(option, batch, per_image, model_bytes, f"{image_size}-px images for the {model} model")


def _check_batches(profile: Profile, batch_sizes: tuple[int, ...]) -> None:
    check_inference_batch("--batch-sizes", profile.model, spec_for(profile.model, profile.num_classes or 1000),
                          profile.image_size, max(batch_sizes))


def resolve_settings(raw: dict[str, Any], cuda_available: bool) -> RunSettings:
    """Turn option strings (``None`` = not given) into checked settings over the profile's defaults."""
    profile = resolve_profile(raw)
    axes: dict[str, Any] = {}
    if raw.get("rates") is not None:
        axes["rates"] = _rates(str(raw["rates"]))
    if raw.get("methods") is not None:
        axes["methods"] = _choices("--methods", str(raw["methods"]), METHODS)
    scopes = raw.get("scopes") if raw.get("scopes") is not None else raw.get("scope")  # "scope": old key
    if scopes is not None:
        axes["scopes"] = _choices("--scopes", str(scopes), SCOPES)
    if raw.get("criterion"):
        axes["criterion"] = _choice("--criterion", str(raw["criterion"]), CRITERIA)
    if raw.get("round_to"):
        axes["round_to"] = int_in_range("--round-to", raw["round_to"], 1, MAX_ROUND_TO)
    if raw.get("batch_sizes") is not None:
        axes["batch_sizes"] = _ints("--batch-sizes", str(raw["batch_sizes"]), 1, MAX_BATCH)
    if raw.get("runtimes") is not None:
        from vggprune.runtimes import RUNTIMES

        axes["runtimes"] = _choices("--runtimes", str(raw["runtimes"]), RUNTIMES)
    if raw.get("latency_rounds"):
        axes["latency_rounds"] = int_in_range("--latency-rounds", raw["latency_rounds"], 1, MAX_ROUNDS)
    if raw.get("latency_warmup") not in (None, ""):
        axes["latency_warmup"] = int_in_range("--latency-warmup", raw["latency_warmup"], 0, MAX_ROUNDS)
    profile = replace(profile, **axes)
    _check_batches(profile, profile.batch_sizes)
    threads = (int_in_range("--threads", raw["threads"], 1, max_threads()) if raw.get("threads")
               else available_cores())
    return RunSettings(
        profile=profile,
        devices=resolve_devices(str(raw.get("devices") or "auto"), cuda_available),
        data_root=check_data_root(raw.get("data_root")),
        download=bool(raw.get("download")),
        weights=existing_file("--weights", raw.get("weights")),
        cache_dir=Path(str(raw["cache_dir"])).expanduser() if raw.get("cache_dir") else None,
        use_cache=not raw.get("no_cache"),
        train_device=resolve_train_device(raw.get("train_device"), cuda_available),
        fixed_rounds=profile.latency_rounds if raw.get("latency_rounds") else None,
        threads=threads,
        processes=(int_in_range("--timing-processes", raw["timing_processes"], 1, MAX_PROCESSES)
                   if raw.get("timing_processes") else TIMING_PROCESSES),
        run_spread=(float_in_range("--run-spread", raw["run_spread"], 0.0, 1.0)
                    if raw.get("run_spread") not in (None, "") else RUN_SPREAD),
        memory_format=_choice("--memory-format", str(raw.get("memory_format") or "channels_last"),
                              tuple(MEMORY_FORMATS)),
        thresholds_file=existing_file("--thresholds", raw.get("thresholds")),
        expected_params_file=existing_file("--expected-params", raw.get("expected_params")),
        max_accuracy_drop=(float_in_range("--max-accuracy-drop", raw["max_accuracy_drop"], 0.0, 1.0)
                           if raw.get("max_accuracy_drop") not in (None, "") else None),
        notes=tuple(raw.get("_notes", ())),
    )
