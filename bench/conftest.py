"""The harness's wiring: cases from the options (pytest_generate_tests), one session-wide Harness,
the JSON's machine info, and the run's quietness summary. All the work is in vggprune.harness."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from vggprune.harness import Harness
from vggprune.machine import cpu_model, device_name, gpu_provenance, run_versions, strict_fp32
from vggprune.timing.allocator import steady_allocator

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


# pytest-benchmark's table shows ten columns by default, about 200 characters wide with our case ids;
# these fit 120 (the full evidence is in the JSON and `vggprune report`). A user's own choice wins.
TABLE_DEFAULTS = {"benchmark_columns": ("--benchmark-columns", ["median", "iqr", "rounds"]),
                  "benchmark_name": ("--benchmark-name", "short")}


def pytest_cmdline_main(config: pytest.Config) -> None:
    """Set the table defaults before any plugin's configure reads them."""
    given = " ".join(str(a) for a in config.invocation_params.args)
    for dest, (flag, value) in TABLE_DEFAULTS.items():
        if flag not in given and hasattr(config.option, dest):
            setattr(config.option, dest, value)


def pytest_configure(config: pytest.Config) -> None:
    from vggprune.errors import UserError

    # xdist workers share the cores: every timed round would wait for the others' threads.
    if os.environ.get("PYTEST_XDIST_WORKER") or getattr(config.option, "numprocesses", None):
        raise pytest.UsageError("pytest bench/ times inference and cannot run under pytest-xdist (-n): "
                                "workers contend for the same cores; run it without -n")

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
    strict_fp32()  # every case is a float32 case: no TF32 on the GPU (recorded in machine_info)
    config._vggprune_allocator = "glibc, mmap threshold pinned, forwards heap-only" if steady_allocator() else "default"


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


@pytest.fixture(autouse=True)
def _case_lifetime(request: pytest.FixtureRequest):
    """Each test's peak memory is its own, and a case frees every copy it made before the next starts."""
    harness = request.getfixturevalue("harness")
    harness.begin_case()
    yield
    harness.end_case()


@pytest.fixture(scope="session")
def harness(request: pytest.FixtureRequest):
    harness = Harness(request.config._vggprune_settings)
    request.config._vggprune_harness = harness  # for the terminal summary
    yield harness
    harness.timing.workers.close()  # the timing worker processes, if any were started


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    settings = config._vggprune_settings
    machine_info["vggprune"] = {
        **run_versions(),
        "threads": torch.get_num_threads(),
        # a CPU case's rounds came from this many processes, one block each (1: this one, in 5 blocks)
        "timing_processes": settings.processes,
        "profile": settings.profile.name,
        "cpu_model": cpu_model(),
        "allocator": getattr(config, "_vggprune_allocator", "default"),
        "devices": {d: device_name(d) for d in settings.devices},
        "cuda": torch.version.cuda,  # the CUDA torch was built with; the GPU's own stack is under "gpu"
        "gpu": gpu_provenance(),
        "peak_mem_mb": getattr(getattr(config, "_vggprune_harness", None), "run_peak_mb", None),
    }


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    harness = getattr(config, "_vggprune_harness", None)
    records = harness.timed if harness else []
    if not records:
        return
    contended = [r for r in records if r.contended]
    noisy = [r for r in records if r.noisy]
    tr = terminalreporter
    tr.section("vggprune timing")
    tr.write_line(f"{len(records)} case(s) timed, each paired round by round with its base.")
    if contended:
        worst = max(r.other_cpu_cores or 0 for r in contended)
        tr.write_line(f"{len(contended)} of {len(records)} case(s) were timed while other processes used the CPU "
                      f"(up to {worst:.2f} cores): their latency is marked 'contended' in the report. "
                      f"Rerun on a quiet machine for numbers to publish.", yellow=True)
    if noisy:
        tr.write_line(f"{len(noisy)} case(s) had IQR/median above 10 % and are marked noisy.", yellow=True)
    if not contended and not noisy:
        tr.write_line("The machine stayed quiet and no case was noisy.", green=True)
    if harness.run_peak_mb:
        tr.write_line(f"peak memory {harness.run_peak_mb / 1024:.1f} GiB (resident, this process and its workers)")
