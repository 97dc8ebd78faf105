"""Root pytest options shared by bench/ and tests/: every knob of a benchmark run.

The options are defined once in vggprune/options.py (the CLI declares the same ones); each has an
environment-variable twin (the option wins when both are given). Values are checked once in
``pytest_configure``, before any work: a bad one stops the run with a ``pytest.UsageError`` naming
the value and what is allowed. Defaults come from the chosen profile (see vggprune/profiles.py).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from vggprune.options import HARNESS, add_options, read_options

PARTIAL = "partial"  # an interrupted run's JSON is written beside the target as NAME.partial.json


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vggprune", "vggprune benchmark run (each option also reads the env var shown)")
    add_options(group.addoption, HARNESS)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (a CI cancel, `timeout`) ends the run like Ctrl-C: cleaned up, reported


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    from vggprune.atomic import check_output_file
    from vggprune.errors import UserError
    from vggprune.settings import resolve_settings

    try:
        import torch

        raw, notes = read_options(config.getoption, HARNESS)
        raw["_notes"] = notes
        config._vggprune_settings = resolve_settings(raw, torch.cuda.is_available())
        target = getattr(config.option, "benchmark_json", None)
        if target:
            target = check_output_file(target, "--benchmark-json")
    except UserError as exc:
        raise pytest.UsageError(str(exc)) from None
    for note in notes:
        config.issue_config_time_warning(pytest.PytestDeprecationWarning(note), stacklevel=2)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    # Results are written atomically: pytest-benchmark writes to a temporary file beside the target,
    # which replaces the target only once the run is complete (see pytest_unconfigure).
    if target:
        from vggprune.atomic import sweep_stale_temps

        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_temps(target.parent)  # what killed (SIGKILL) runs left there
        config._vggprune_json_target = target
        # named like atomic.py's temporary files (.NAME.<pid>.<tag>.tmp), so a later run can sweep it
        config.option.benchmark_json = target.with_name(f".{target.name}.{os.getpid()}.bench.tmp")


def pytest_sessionstart(session: pytest.Session) -> None:
    bench = getattr(session.config, "_benchmarksession", None)
    if getattr(session.config, "_vggprune_json_target", None) is None or not hasattr(bench, "save_json"):
        return
    save_json = bench.save_json

    def save_or_note_the_failure(output_json) -> None:
        # A full disk while pytest-benchmark writes the temporary file must not end the run in a
        # traceback, nor leave half a JSON to be moved into place: note it for pytest_unconfigure.
        try:
            save_json(output_json)
        except OSError as exc:
            session.config._vggprune_json_failure = exc

    bench.save_json = save_or_note_the_failure


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config._vggprune_exitstatus = exitstatus
    if getattr(session.config, "_vggprune_json_failure", None) is not None and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED  # the run's results were lost: not a success


def partial_path(target: Path) -> Path:
    return target.with_name(f"{target.stem}.{PARTIAL}{target.suffix}")


def pytest_unconfigure(config: pytest.Config) -> None:
    target = getattr(config, "_vggprune_json_target", None)
    if target is None:
        return
    tmp = Path(config.option.benchmark_json)
    failure = getattr(config, "_vggprune_json_failure", None)
    if failure is not None:
        tmp.unlink(missing_ok=True)
        print(f"vggprune: cannot write {target}: {(failure.strerror or str(failure)).lower()} "
              f"({'it was left as it was' if target.exists() else 'no results were written'})")
        return
    if not tmp.exists():
        return
    status = getattr(config, "_vggprune_exitstatus", pytest.ExitCode.INTERRUPTED)
    # An interrupted run must never replace a complete report: it goes beside it, named as partial.
    final = partial_path(target) if status == pytest.ExitCode.INTERRUPTED else target
    try:
        os.replace(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        print(f"vggprune: cannot write {final}: {exc.strerror or exc}")
        return
    if final != target:
        print(f"vggprune: the run was interrupted; its results are in {final} ({target} was left as it was)")
