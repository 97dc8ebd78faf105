"""The harness's wiring: cases from the options (pytest_generate_tests), one session-wide Harness,
and the JSON's machine info. All the work is in vggprune.harness; see bench/test_bench.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from vggprune.harness import Harness, device_name, library_versions

HERE = Path(__file__).resolve().parent
# The committed gate files; the library never locates them itself (--thresholds/--expected-params override).
THRESHOLDS = HERE / "thresholds.json"
EXPECTED_PARAMS = HERE / "expected_params.json"


def check_inputs(settings) -> None:
    """Every input file the harness will read, checked now: a usage error here, not an ERROR per test."""
    from vggprune.data import describe
    from vggprune.gates import ExpectedParams, Thresholds
    from vggprune.weights import read_state_dict

    ExpectedParams.load(settings.expected_params_file)
    Thresholds.load(settings.thresholds_file)
    if settings.weights is not None:
        read_state_dict(settings.weights)
    describe(settings.profile.dataset, settings.data_root)  # raises on e.g. mismatched class folders


def pytest_configure(config: pytest.Config) -> None:
    from vggprune.errors import UserError

    settings = dataclasses.replace(
        config._vggprune_settings,
        thresholds_file=config._vggprune_settings.thresholds_file or THRESHOLDS,
        expected_params_file=config._vggprune_settings.expected_params_file or EXPECTED_PARAMS)
    try:
        check_inputs(settings)
    except UserError as exc:
        raise pytest.UsageError(str(exc)) from None
    except OSError as exc:  # e.g. an unreadable folder under --data-root
        raise pytest.UsageError(f"cannot read {exc.filename or 'an input'}: {exc.strerror or exc}") from None
    config._vggprune_settings = settings
    torch.set_num_threads(settings.threads)  # fixed for the run, and recorded


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    settings = metafunc.config._vggprune_settings
    if "case" in metafunc.fixturenames:
        cases = settings.cases()
        metafunc.parametrize("case", cases, ids=[c.id for c in cases])
    if "model_key" in metafunc.fixturenames:
        keys = settings.model_keys()
        metafunc.parametrize("model_key", keys, ids=[f"{settings.profile.name}-{k.label()}" for k in keys])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Model-major: each model's accuracy gate, then its timing cases, so a model is built once.
    keys = config._vggprune_settings.model_keys()

    def order(item: pytest.Item) -> tuple[int, int]:
        params = getattr(item, "callspec", None)
        params = params.params if params else {}
        if "model_key" in params:
            return keys.index(params["model_key"]), 0
        if "case" in params:
            return keys.index(params["case"].model), 1
        return -1, 0

    items.sort(key=order)


@pytest.fixture(scope="session")
def harness(request: pytest.FixtureRequest) -> Harness:
    return Harness(request.config._vggprune_settings)


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    settings = config._vggprune_settings
    machine_info["vggprune"] = {
        **library_versions(),
        "threads": torch.get_num_threads(),
        "profile": settings.profile.name,
        "devices": {d: device_name(d) for d in settings.devices},
        "cuda": torch.version.cuda,
    }
