"""A benchmark run's settings and the cases they expand to.

The harness's options arrive as strings (command line or environment); :func:`resolve_settings`
checks each against what is allowed, fills the rest from the profile, and raises one UserError naming
the bad value. :meth:`RunSettings.cases` expands the axes into cases with stable, readable ids.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from vggprune.errors import UserError
from vggprune.identity import BASE, Case, ModelKey
from vggprune.profiles import PROFILE_NAMES, Profile, get_profile
from vggprune.pruning import CRITERIA, METHODS, SCOPES, parse_rates

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cpu,cuda")
# channels_last by default: oneDNN and cuDNN run VGG convs fastest in NHWC (measured in the README).
MEMORY_FORMATS = ("channels_last", "contiguous")


@dataclass(frozen=True)
class RunSettings:
    profile: Profile
    devices: tuple[str, ...]
    data_root: Path | None = None
    download: bool = False
    weights: Path | None = None
    cache_dir: Path | None = None
    use_cache: bool = True
    threads: int = 1
    memory_format: str = "channels_last"
    thresholds_file: Path | None = None
    expected_params_file: Path | None = None

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

    def cases(self) -> list[Case]:
        # Model-major order, so each model is built once and then timed on every device/batch size.
        return [Case(self.profile.name, key, device, bs, variant=self.profile.model)
                for key in self.model_keys() for device in self.devices for bs in self.profile.batch_sizes]


def _split(text: str) -> list[str]:
    return [s.strip() for s in str(text).split(",") if s.strip()]


def _choices(option: str, text: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    items = _split(text)
    bad = [i for i in items if i not in allowed]
    if bad or not items:
        raise UserError(f"{option}: unknown value {', '.join(bad) or repr(text)}; allowed: {', '.join(allowed)}")
    return tuple(dict.fromkeys(items))


def _positive_ints(option: str, text: str, allow_zero: bool = False) -> tuple[int, ...]:
    out = []
    for item in _split(text) or [repr(text)]:
        try:
            value = int(item)
        except ValueError:
            value = -1
        if value < (0 if allow_zero else 1):
            kind = "non-negative" if allow_zero else "positive"
            raise UserError(f"{option}: {item!r} is not a {kind} integer")
        out.append(value)
    return tuple(out)


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


def _existing_path(option: str, text: str | None) -> Path | None:
    if not text:
        return None
    path = Path(text).expanduser()
    if not path.exists():
        raise UserError(f"{option}: {path} does not exist")
    return path


def resolve_settings(raw: dict[str, str | bool | None], cuda_available: bool) -> RunSettings:
    """Turn option strings (``None`` = not given) into checked settings over the profile's defaults."""
    name = raw.get("profile") or "quick"
    if name not in PROFILE_NAMES:
        raise UserError(f"--profile: unknown value {name!r}; allowed: {', '.join(PROFILE_NAMES)}")
    profile = get_profile(str(name))
    changes: dict = {}
    if raw.get("rates"):
        changes["rates"] = _rates(str(raw["rates"]))
    if raw.get("methods"):
        changes["methods"] = _choices("--methods", str(raw["methods"]), METHODS)
    if raw.get("scope"):
        changes["scopes"] = _choices("--scope", str(raw["scope"]), SCOPES)
    if raw.get("criterion"):
        changes["criterion"] = _choices("--criterion", str(raw["criterion"]), CRITERIA)[0]
    if raw.get("round_to"):
        changes["round_to"] = _positive_ints("--round-to", str(raw["round_to"]))[0]
    if raw.get("batch_sizes"):
        changes["batch_sizes"] = _positive_ints("--batch-sizes", str(raw["batch_sizes"]))
    if raw.get("latency_rounds"):
        changes["latency_rounds"] = _positive_ints("--latency-rounds", str(raw["latency_rounds"]))[0]
    if raw.get("latency_warmup") not in (None, ""):
        changes["latency_warmup"] = _positive_ints("--latency-warmup", str(raw["latency_warmup"]),
                                                   allow_zero=True)[0]
    if raw.get("threads"):
        threads = _positive_ints("--threads", str(raw["threads"]))[0]
    else:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return RunSettings(
        profile=replace(profile, **changes),
        devices=resolve_devices(str(raw.get("devices") or "auto"), cuda_available),
        data_root=Path(str(raw["data_root"])).expanduser() if raw.get("data_root") else None,
        download=bool(raw.get("download")),
        weights=_existing_path("--weights", raw.get("weights")),  # type: ignore[arg-type]
        cache_dir=Path(str(raw["cache_dir"])).expanduser() if raw.get("cache_dir") else None,
        use_cache=not raw.get("no_cache"),
        threads=threads,
        memory_format=_choices("--memory-format", str(raw.get("memory_format") or "channels_last"),
                               MEMORY_FORMATS)[0],
        thresholds_file=_existing_path("--thresholds", raw.get("thresholds")),  # type: ignore[arg-type]
        expected_params_file=_existing_path("--expected-params", raw.get("expected_params")),  # type: ignore[arg-type]
    )
