"""`vggprune prepare`: serial and Ray preparation fill the same cache, a later harness run only loads,
and faults (a killed worker, a failing task, Ctrl-C, an unreachable cluster) are handled."""

from __future__ import annotations

import _thread
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from vggprune.checkpoint import load_model
from vggprune.cli import build_parser, main
from vggprune.options import HARNESS, OPTIONS, PREPARE, read_options
from vggprune.runtimes.base import model_fingerprint

REPO = Path(__file__).resolve().parent.parent
# A quick-profile subset: the base and two pruned models, trained for a few epochs only.
SUBSET = ["--rates", "0,0.5", "--scopes", "conv", "--methods", "by-hand,torch-pruning", "--epochs", "3",
          "--finetune-epochs", "1", "--threads", "1", "--devices", "cpu", "--runtimes", "eager,fused"]
BY_HAND, TORCH_PRUNING, BASE = ("quick-small-by-hand-conv-r0.50", "quick-small-torch-pruning-conv-r0.50",
                                "quick-small-base-r0.00")


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    for opt in OPTIONS.values():
        monkeypatch.delenv(opt.env, raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # prepare sets the run's threads, as the harness does


def settings_and_options(*args: str):
    from vggprune.prepare import resolve_prepare
    from vggprune.settings import resolve_settings

    ns = build_parser().parse_args(["prepare", *args])
    raw, _ = read_options(lambda dest: getattr(ns, dest, None), HARNESS + PREPARE)
    return resolve_settings(raw, False), resolve_prepare(raw)


def digests(cache: Path) -> dict[str, str]:
    """Label -> weights fingerprint of every checkpoint in a cache."""
    return {p.name.rsplit("-", 1)[0]: model_fingerprint(load_model(p)[0]) for p in (cache / "models").glob("*.pt")}


def worker_pids(title: str) -> list[int]:
    """Ray workers of this test's own cluster (descendants of this process) running ``title``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            if (Path("/proc") / str(pid) / "cmdline").read_bytes().startswith(f"ray::{title}".encode()):
                found.append(pid)
        except OSError:
            pass
    return found


@pytest.fixture(scope="module")
def serial_cache(tmp_path_factory) -> Path:
    """The subset prepared serially by the CLI in a fresh process, which must never import Ray."""
    cache = tmp_path_factory.mktemp("serial-cache")
    code = ("import sys; from vggprune.cli import main; rc = main(sys.argv[1:]); "
            "assert 'ray' not in sys.modules, 'the serial executor imported ray'; sys.exit(rc)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VGGPRUNE_")}
    done = subprocess.run([sys.executable, "-c", code, "prepare", *SUBSET, "--cache-dir", str(cache), "--no-progress"],
                          cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "3 model(s) trained here, 0 already in the cache, 0 failed; exports: 3 built" in done.stdout
    return cache


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[ray]' to run the Ray tests")
    from vggprune.prepare import connect

    connect(None, num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_cache(ray_cluster, tmp_path_factory) -> Path:
    from vggprune.prepare import prepare

    cache = tmp_path_factory.mktemp("ray-cache")
    settings, options = settings_and_options(*SUBSET, "--cache-dir", str(cache), "--executor", "ray")
    outcome = prepare(settings, options, progress=False)
    assert sorted(outcome.trained) == [BASE, BY_HAND, TORCH_PRUNING] and not outcome.failed
    assert outcome.exports_built == 3  # fused for the base and both top-rate models
    return cache


def with_base(serial_cache: Path, tmp_path: Path) -> Path:
    """A cache holding only the serial base, so a test's tasks are the two pruned models."""
    (tmp_path / "models").mkdir()
    for p in (serial_cache / "models").glob(f"{BASE}-*.pt"):
        shutil.copy(p, tmp_path / "models" / p.name)
    return tmp_path


@pytest.mark.slow  # a local Ray cluster takes about 25 s to start
def test_ray_preparation_has_the_serial_weights_and_says_where_it_trained(serial_cache, ray_cache):
    serial, on_ray = digests(serial_cache), digests(ray_cache)
    assert sorted(on_ray) == [BASE, BY_HAND, TORCH_PRUNING]
    assert on_ray == serial
    for path in (ray_cache / "models").glob("*.pt"):
        where = load_model(path)[1]["trained_on"]
        assert where["threads"] == 1 and where["device"] == "cpu" and where["hostname"] and where["cpu_model"]
    assert (ray_cache / "exports" / BASE / "fused" / "model.pt").is_file()


@pytest.mark.slow  # a local Ray cluster takes about 25 s to start
def test_a_harness_run_after_prepare_loads_every_model(ray_cache, pytester, monkeypatch):
    shutil.copy(REPO / "conftest.py", pytester.path / "conftest.py")
    shutil.copytree(REPO / "bench", pytester.path / "bench", ignore=shutil.ignore_patterns("__pycache__"))
    export = ray_cache / "exports" / BY_HAND / "fused" / "model.pt"
    exported_at = export.stat().st_mtime_ns
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # this checkout's vggprune, not another installed one
    json_path = pytester.path / "run.json"
    # Three epochs make a model that beats chance, not an accurate one: loading is what is tested here,
    # so the thresholds file is empty and any drop vs the base is allowed.
    ungated = pytester.path / "thresholds.json"
    ungated.write_text("{}")
    result = pytester.runpytest_subprocess("bench", *SUBSET, "--cache-dir", str(ray_cache), "--batch-sizes", "1",
                                           "--latency-rounds", "3", "--latency-warmup", "1", "-p", "no:cacheprovider",
                                           f"--thresholds={ungated}", "--max-accuracy-drop", "1",
                                           f"--benchmark-json={json_path}")
    result.assert_outcomes(passed=9)  # 3 accuracy gates (the base beat chance) + eager x 3 models + fused x 3
    cases = [b["extra_info"] for b in json.loads(json_path.read_text())["benchmarks"]]
    assert len(cases) == 6 and all(c["from_cache"] is True for c in cases)
    prepared = {label: digest[:16] for label, digest in digests(ray_cache).items()}
    for c in cases:
        label = f"quick-small-{'base-r0.00' if c['method'] == 'base' else c['method'] + '-conv-r0.50'}"
        assert c["weights_sha256"] == prepared[label]
        assert c["trained_on"]["threads"] == 1
    assert export.stat().st_mtime_ns == exported_at  # the export was reused, not rebuilt


@pytest.mark.slow  # a local Ray cluster takes about 25 s to start
def test_a_killed_worker_is_retried_and_nothing_partial_is_cached(ray_cluster, serial_cache, tmp_path):
    from vggprune.prepare import prepare

    cache = with_base(serial_cache, tmp_path)
    settings, options = settings_and_options(*SUBSET, "--cache-dir", str(cache), "--executor", "ray")
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(outcome=prepare(settings, options, progress=False)))
    runner.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and runner.is_alive() and time.monotonic() < deadline:
        pids = worker_pids("train_task")
        if pids:
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    runner.join(timeout=180)
    assert killed is not None, "no worker was seen running a task"
    outcome = result["outcome"]
    assert not outcome.failed and sorted(outcome.trained) == [BY_HAND, TORCH_PRUNING]
    assert digests(cache) == digests(serial_cache)
    assert not [p for p in (cache / "models").iterdir() if p.suffix not in (".pt", ".lock")]


def test_a_failing_task_is_one_line_and_the_others_are_kept(ray_cluster, serial_cache, tmp_path, monkeypatch, capsys):
    import vggprune.prepare as prep

    real = prep.train_task

    def failing(recipe, key, start):
        if key.method == "by-hand":
            raise RuntimeError("out of memory while fine-tuning")
        return real(recipe, key, start)

    monkeypatch.setattr(prep, "train_task", failing)
    cache = with_base(serial_cache, tmp_path)
    code = main(["prepare", *SUBSET, "--cache-dir", str(cache), "--executor", "ray", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"vggprune prepare: {BY_HAND} failed: RuntimeError: out of memory while fine-tuning\n" in err
    assert err.rstrip().endswith(f"vggprune prepare: failed: {BY_HAND}")
    assert "Traceback" not in err
    kept = digests(cache)
    assert sorted(kept) == [BASE, TORCH_PRUNING] and kept[TORCH_PRUNING] == digests(serial_cache)[TORCH_PRUNING]


def test_ctrl_c_cancels_the_outstanding_tasks_and_keeps_the_finished(ray_cluster, serial_cache, tmp_path):
    import vggprune.prepare as prep

    real = prep.train_task

    def stuck(recipe, key, start):
        if key.method == "by-hand":
            time.sleep(600)
        return real(recipe, key, start)

    cache = with_base(serial_cache, tmp_path)
    settings, options = settings_and_options(*SUBSET, "--cache-dir", str(cache), "--executor", "ray")

    def interrupt_once_one_is_stored():
        deadline = time.monotonic() + 120
        while not list((cache / "models").glob(f"{TORCH_PRUNING}-*.pt")) and time.monotonic() < deadline:
            time.sleep(0.05)
        _thread.interrupt_main()

    lines: list[str] = []
    threading.Thread(target=interrupt_once_one_is_stored, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(settings, options, progress=False, task=stuck, write=lines.append)
    assert lines == ["vggprune prepare: interrupted: 1 model(s) stored, 1 task(s) cancelled"]
    assert sorted(digests(cache)) == [BASE, TORCH_PRUNING]
    deadline = time.monotonic() + 30
    while worker_pids("stuck") and time.monotonic() < deadline:  # the cancelled task's worker is gone
        time.sleep(0.1)
    assert not worker_pids("stuck")


def test_an_unreachable_cluster_is_one_line_and_exit_2(tmp_path, capsys):
    pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[ray]' to run the Ray tests")
    code = main(["prepare", *SUBSET, "--cache-dir", str(tmp_path), "--executor", "ray", "--ray-address",
                 "127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "--ray-address 127.0.0.1:1: cannot reach a Ray cluster there" in err
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("args, message", [
    (["--ray-address", "auto"], "--ray-address: only used with --executor ray"),
    (["--executor", "dask"], "--executor: unknown value 'dask'; allowed: serial, ray"),
    (["--executor", "ray", "--gpus-per-task", "-1"], "--gpus-per-task: '-1' is not a number"),
    (["--no-cache"], "--no-cache: prepare only fills the checkpoint cache"),
])
def test_bad_prepare_options_are_one_line_and_exit_2(args, message, tmp_path, capsys):
    assert main(["prepare", "--cache-dir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
