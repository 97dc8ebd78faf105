"""Root pytest options shared by bench/ and tests/: every knob of a benchmark run.

Each option has an environment-variable twin (the option wins when both are given). Values are
checked once in ``pytest_configure``; a bad one stops the run with a ``pytest.UsageError`` naming the
value and what is allowed. Defaults come from the chosen profile (see vggprune/profiles.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# (option, env var, help); every value is a string, checked in vggprune.settings.resolve_settings.
VALUE_OPTIONS = [
    ("--profile", "VGGPRUNE_PROFILE", "quick (default: digits, small VGG11, offline) | seed (the study: "
                                      "Flowers102, 133M-param VGG11) | imagefolder (your train/val/test folders)"),
    ("--rates", "VGGPRUNE_RATES", "comma-separated pruning rates in [0, 1) (default 0,0.1,...,0.5)"),
    ("--methods", "VGGPRUNE_METHODS", "torch-pruning,by-hand (default both)"),
    ("--scope", "VGGPRUNE_SCOPE", "comma-separated scopes: fc, conv, all (default: the profile's)"),
    ("--criterion", "VGGPRUNE_CRITERION", "unit ranking: l2 (default), l1, random"),
    ("--round-to", "VGGPRUNE_ROUND_TO", "round kept widths down to a multiple (default 1)"),
    ("--devices", "VGGPRUNE_DEVICES", "auto (default: cpu, plus cuda when present) | cpu | cuda | cpu,cuda"),
    ("--batch-sizes", "VGGPRUNE_BATCH_SIZES", "comma-separated inference batch sizes (default: the profile's)"),
    ("--data-root", "VGGPRUNE_DATA_ROOT", "where datasets live (Flowers102, imagefolder)"),
    ("--weights", "VGGPRUNE_WEIGHTS", "a local ImageNet vgg11_bn state_dict for the seed/torchvision models"),
    ("--cache-dir", "VGGPRUNE_CACHE_DIR", "checkpoint cache (default $XDG_CACHE_HOME/vggprune)"),
    ("--latency-rounds", "VGGPRUNE_LATENCY_ROUNDS", "timed batches per case (default: the profile's)"),
    ("--latency-warmup", "VGGPRUNE_LATENCY_WARMUP", "untimed warm-up batches per case (default: the profile's)"),
    ("--memory-format", "VGGPRUNE_MEMORY_FORMAT", "layout for timing: channels_last (default) | contiguous"),
    ("--threads", "VGGPRUNE_THREADS", "torch CPU threads, fixed for the run (default: cores available)"),
    ("--thresholds", "VGGPRUNE_THRESHOLDS", "accuracy gates file (default bench/thresholds.json)"),
    ("--expected-params", "VGGPRUNE_EXPECTED_PARAMS", "exact parameter counts file "
                                                      "(default bench/expected_params.json)"),
]
FLAG_OPTIONS = [
    ("--download", "VGGPRUNE_DOWNLOAD", "download Flowers102 if it is missing under --data-root"),
    ("--no-cache", "VGGPRUNE_NO_CACHE", "neither read nor write the checkpoint cache"),
]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vggprune", "vggprune benchmark run (each option also reads the env var shown)")
    for flag, env, text in VALUE_OPTIONS:
        group.addoption(flag, default=None, help=f"{text} [env {env}]")
    for flag, env, text in FLAG_OPTIONS:
        group.addoption(flag, action="store_true", default=False, help=f"{text} [env {env}=1]")


def raw_options(config: pytest.Config) -> dict:
    """Option values as strings, falling back to the environment."""
    raw: dict = {}
    for flag, env, _ in VALUE_OPTIONS:
        dest = flag.lstrip("-").replace("-", "_")
        raw[dest] = config.getoption(dest) or os.environ.get(env) or None
    for flag, env, _ in FLAG_OPTIONS:
        dest = flag.lstrip("-").replace("-", "_")
        raw[dest] = config.getoption(dest) or os.environ.get(env, "").lower() in ("1", "true", "yes")
    return raw


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    from vggprune.errors import UserError
    from vggprune.settings import resolve_settings

    try:
        import torch

        config._vggprune_settings = resolve_settings(raw_options(config), torch.cuda.is_available())
    except UserError as exc:
        raise pytest.UsageError(str(exc)) from None
    # Results are written atomically: pytest-benchmark writes to a temporary file beside the target,
    # which replaces the target only once complete (see pytest_unconfigure). reports/ is created.
    target = getattr(config.option, "benchmark_json", None)
    if target:
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        config._vggprune_json_target = target
        config.option.benchmark_json = target.with_name(f".{target.name}.{os.getpid()}.tmp")


def pytest_unconfigure(config: pytest.Config) -> None:
    target = getattr(config, "_vggprune_json_target", None)
    if target is None:
        return
    tmp = Path(config.option.benchmark_json)
    if tmp.exists():
        os.replace(tmp, target)
