"""Hostile inputs get one line and the right exit code before any work; nothing is lost, left behind,
hung or silently disabled."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers_data import make_imagefolder
from vggprune.atomic import (
    atomic_file,
    check_output_dir,
    check_output_file,
    deferred_signals,
    sweep_stale_temps,
    write_atomic,
)
from vggprune.cache import CacheWarning, CheckpointCache
from vggprune.checkpoint import FORMAT, atomic_torch_save, load_model, model_payload, save_model
from vggprune.errors import UserError

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vggprune", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


# --- output paths are checked before any work -------------------------------------------------------

def test_output_file_checks_name_the_path(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    for path, why in [(tmp_path / "dir", "is a directory, not a file"),
                      (tmp_path / "file" / "x.pt", "is a file, not a directory"),
                      (Path("/proc/vggprune-x.pt"), "is not writable")]:
        with pytest.raises(UserError, match=why):
            check_output_file(path, "--out")
    assert check_output_file(tmp_path / "new" / "deeper" / "m.pt") == tmp_path / "new" / "deeper" / "m.pt"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    with pytest.raises(UserError, match="exists and is not a directory"):
        check_output_dir(tmp_path / "file", "--out")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_directory_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(UserError, match="is not writable"):
        check_output_file(ro / "m.pt")


def run_main(capsys, *args: str) -> tuple[int, str]:
    from vggprune.cli import main

    code = main(list(args))
    return code, capsys.readouterr().err


def test_train_with_a_bad_out_fails_before_training(tmp_path, capsys):
    code, err = run_main(capsys, "train", "--out", "/proc/x.pt", "--cache-dir", str(tmp_path / "cache"))
    assert code == 2 and err.count("\n") == 1 and "--out: cannot write /proc/x.pt" in err, err
    assert not (tmp_path / "cache").exists()  # nothing was trained or cached


def test_prune_and_report_refuse_bad_outputs(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, err = run_main(capsys, "prune", "--model", "small", "--rate", "0.1", "--out", str(tmp_path))
    assert code == 2 and "is a directory, not a file" in err
    code, err = run_main(capsys, "report", str(tmp_path / "run.json"), "--out", str(tmp_path / "file"))
    assert code == 2 and "--out:" in err and "not a directory" in err


def test_write_errors_left_after_the_checks_are_one_line(tmp_path, small_model, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(UserError, match=f"cannot write {tmp_path / 'm.pt'}: No space left on device"):
        save_model(small_model, tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


# --- one validator for every model file -------------------------------------------------------------

@pytest.mark.parametrize("mutate, why", [
    (lambda p: p.pop("spec"), "top-level keys"),
    (lambda p: p.update(junk=1), "top-level keys"),
    (lambda p: p.update(spec="small"), "its spec must be a dict"),
    (lambda p: p["spec"].update(num_classes="10"), "spec.num_classes = '10' is not a positive integer"),
    (lambda p: p["spec"].update(conv_widths=[1, 2]), "its spec is inconsistent"),
    (lambda p: p["spec"].update(extra_field=1), "its spec must be a dict"),
    (lambda p: p.update(state_dict=[1, 2]), "state_dict is not a non-empty dict of tensors"),
    (lambda p: p["state_dict"].update({"features.0.weight": 3}), "state_dict is not a non-empty dict"),
    (lambda p: p["state_dict"].update({"features.0.weight": torch.zeros(1, dtype=torch.int64)}),
     "non-float tensors"),
    (lambda p: p.update(extra=[1]), "'extra' is not a dict"),
])
def test_malformed_model_files_are_refused_everywhere_with_one_line(tmp_path, small_model, mutate, why):
    from vggprune.weights import read_state_dict

    payload = model_payload(small_model)
    mutate(payload)
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    for load in (load_model, read_state_dict):
        with pytest.raises(UserError) as info:
            load(path)
        assert "is not a vggprune model file" in str(info.value) and why in str(info.value)
    cache = CheckpointCache(tmp_path / "cache")
    key = {"k": 1}
    dest = cache.path_for(key, "x")
    dest.parent.mkdir(parents=True)
    torch.save(payload, dest)
    with pytest.warns(CacheWarning, match="not a vggprune model file"):
        assert cache.load(key, "x") is None


def test_pickled_objects_are_refused_without_the_weights_only_hint(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "spec": Path("x")}, path)  # a pickled object: weights_only refuses it
    out = cli("prune", "--input", str(path), "--rate", "0.1", "--out", str(tmp_path / "o.pt"))  # a real process
    assert out.returncode == 2 and "is not a vggprune model file" in out.stderr
    assert "weights_only" not in out.stderr and "Traceback" not in out.stderr


# --- undecodable images -----------------------------------------------------------------------------

def test_corrupt_image_is_named_before_training(tmp_path):
    from vggprune.data import ImageDecodeError, describe

    root = make_imagefolder(tmp_path / "imgs")
    bad = root / "val" / "bee" / "0.jpg"
    bad.write_bytes(b"\xff\xd8garbage")
    with pytest.raises(ImageDecodeError, match="cannot decode val/bee/0.jpg"):
        describe("imagefolder", root)


def test_decode_error_in_a_worker_is_one_line_and_workers_stop(tmp_path):
    from vggprune.data import ImageDecodeError, describe, load_data

    root = make_imagefolder(tmp_path / "imgs")
    data = load_data("imagefolder", root, image_size=32, batch_size=2, eval_batch_size=2, seed=0,
                     num_workers=1, info=describe("imagefolder", root))
    # Truncated after describe() looked at it: only a worker finds out.
    victim = root / "test" / "ant" / "0.jpg"
    victim.write_bytes(victim.read_bytes()[:200])
    it = iter(data.test)
    with pytest.raises(ImageDecodeError) as info:
        for _ in it:
            pass
    assert "\n" not in str(info.value) and str(victim) in str(info.value)
    import multiprocessing

    deadline = time.time() + 10
    while multiprocessing.active_children() and time.time() < deadline:
        time.sleep(0.1)
    assert not multiprocessing.active_children()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork-only semantics")
def test_cache_lock_is_not_held_by_forked_children(tmp_path):
    cache = CheckpointCache(tmp_path)
    key = {"k": 1}
    lock_path = cache.path_for(key, "x").with_suffix(".lock")
    with cache.lock(key, "x"):
        child = os.fork()
        if child == 0:  # a DataLoader worker that outlives the error that should have ended it
            time.sleep(5)
            os._exit(0)
    try:
        probe = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
                 "fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')")
        out = subprocess.run([sys.executable, "-c", probe, str(lock_path)], capture_output=True, text=True,
                             timeout=30)
        assert out.stdout.strip() == "free", out.stderr
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


# --- an interrupted bench never replaces a complete report -------------------------------------------

def test_interrupted_run_writes_beside_the_complete_report(pytester: pytest.Pytester):
    import shutil

    shutil.copy(REPO / "conftest.py", pytester.path / "conftest.py")
    pytester.makepyfile(test_it="""
        def test_a(benchmark):
            benchmark(lambda: None)

        def test_b():
            raise KeyboardInterrupt
    """)
    complete = pytester.path / "run.json"
    complete.write_text('{"complete": true}')
    result = pytester.runpytest_subprocess("--benchmark-json", str(complete), "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert complete.read_text() == '{"complete": true}'
    assert (pytester.path / "run.partial.json").is_file()
    assert "run.partial.json" in result.stdout.str()
    assert not list(pytester.path.glob(".run.json.*.tmp"))


def test_bad_benchmark_json_path_is_a_usage_error(pytester: pytest.Pytester):
    import shutil

    shutil.copy(REPO / "conftest.py", pytester.path / "conftest.py")
    pytester.makepyfile(test_it="def test_a():\n    pass\n")
    (pytester.path / "afile").write_text("x")
    result = pytester.runpytest("--benchmark-json", str(pytester.path / "afile" / "x.json"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--benchmark-json: cannot create" in result.stderr.str()
    assert "INTERNALERROR" not in result.stderr.str() + result.stdout.str()


# --- signals while a checkpoint is written; stale temporary files ------------------------------------

def test_sigterm_during_a_save_finishes_the_file_then_interrupts(tmp_path, small_model, monkeypatch):
    real_save = torch.save

    def save_and_get_killed(obj, f):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-write
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", save_and_get_killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save(model_payload(small_model), tmp_path / "m.pt")
    assert load_model(tmp_path / "m.pt")[0].spec == small_model.spec  # complete, not half a file
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_deferred_signals_restore_the_previous_handlers():
    before = signal.getsignal(signal.SIGINT)
    with deferred_signals():
        pass
    assert signal.getsignal(signal.SIGINT) is before


def test_cli_sigterm_exits_130_saying_interrupted(monkeypatch, capsys):
    from vggprune import cli
    from vggprune.cli import prune as cli_prune

    def killed(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        return 0

    monkeypatch.setattr(cli_prune, "run_params", killed)
    monkeypatch.setattr(signal, "getsignal", lambda sig: signal.SIG_DFL)  # as in a fresh process
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        assert cli.main(["params"]) == 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert "interrupted" in capsys.readouterr().err


def test_stale_temp_files_of_dead_processes_are_swept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".m.pt.{dead}.abc123.tmp"
    live = tmp_path / f".m.pt.{os.getppid()}.abc123.tmp"
    other = tmp_path / "m.pt"
    for p in (stale, live, other):
        p.write_text("x")
    assert sweep_stale_temps(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and other.exists()


def test_cache_sweeps_before_storing(tmp_path, small_model):
    cache = CheckpointCache(tmp_path)
    (tmp_path / "models").mkdir()
    stale = tmp_path / "models" / ".x.pt.999999999.abc.tmp"  # beyond pid_max: never alive
    stale.write_text("x")
    with pytest.warns(CacheWarning, match="removed 1 temporary file"):
        cache.store({"k": 1}, "x", small_model, {})
    assert not stale.exists()


# --- files respect the umask ------------------------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        target = tmp_path / "f.txt"
        write_atomic(target, "a")
        assert stat.S_IMODE(target.stat().st_mode) == mode
        with atomic_file(target) as f:  # overwriting keeps the umask's mode, not 0600
            f.write(b"b")
        assert stat.S_IMODE(target.stat().st_mode) == mode
    finally:
        os.umask(old)


# --- a checkpoint for another model variant or input size -------------------------------------------

def test_evaluating_another_variant_or_input_size_is_refused():
    from types import SimpleNamespace

    from vggprune.models import spec_for
    from vggprune.pipeline import Pipeline
    from vggprune.profiles import get_profile

    pipe = Pipeline(get_profile("quick"), use_cache=False, device="cpu")
    seed_on_digits = SimpleNamespace(spec=spec_for("seed", 10))  # the check comes before any compute
    with pytest.raises(UserError, match="is a seed model for 224-px images but profile quick uses the small "
                                        "model at 32 px"):
        pipe.evaluate(seed_on_digits)  # type: ignore[arg-type]


# --- the harness's input files are checked at configure time (exit 4), not in every test ----------

@pytest.fixture
def bench_copy(pytester: pytest.Pytester, tmp_path, monkeypatch) -> pytest.Pytester:
    import shutil

    shutil.copy(REPO / "conftest.py", pytester.path / "conftest.py")
    shutil.copytree(REPO / "bench", pytester.path / "bench", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("VGGPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    return pytester


def test_bad_harness_inputs_are_usage_errors_at_configure(bench_copy, tmp_path):
    nan = tmp_path / "nan.json"
    nan.write_text('{"quick": {"base_min_top1": NaN}}')
    garbage = tmp_path / "w.pth"
    garbage.write_bytes(b"not a torch file")
    folder = make_imagefolder(tmp_path / "imgs")
    (folder / "test" / "ant").rename(folder / "test" / "ants")
    for args, message in [([f"--thresholds={nan}"], "base_min_top1 = nan is not a number in [0, 1]"),
                          ([f"--expected-params={nan}"], "has no 'counts' object"),
                          ([f"--weights={garbage}"], "is neither a state dict nor a vggprune model file"),
                          (["--profile=imagefolder", f"--data-root={folder}"], "classes differ from train/'s"),
                          (["--data-root", str(tmp_path / "typo")], "--data-root: "),
                          (["--criterion", "l2,l1"], "--criterion: takes one value")]:
        result = bench_copy.runpytest("bench", "--collect-only", *args)
        assert result.ret == pytest.ExitCode.USAGE_ERROR, args
        assert message in result.stderr.str(), (args, result.stderr.str())


def test_stale_benchmark_json_temp_is_swept_at_configure(bench_copy, tmp_path):
    out = tmp_path / "reports"
    out.mkdir()
    stale = out / ".run.json.999999999.bench.tmp"
    stale.write_text("{")
    result = bench_copy.runpytest("bench", "--collect-only", f"--benchmark-json={out / 'run.json'}")
    assert result.ret == pytest.ExitCode.OK and not stale.exists()


# --- Also: a user's own small images run through the whole harness on a laptop ------------------------

def test_imagefolder_of_noise_is_gated_without_a_threshold_entry_and_not_timed(bench_copy, tmp_path):
    folder = make_imagefolder(tmp_path / "imgs", per_class=4)  # random pixels: nothing to learn
    out = tmp_path / "run.json"
    result = bench_copy.runpytest_subprocess(
        "bench", "--profile", "imagefolder", f"--data-root={folder}", "--model", "small", "--image-size", "32",
        "--epochs", "1", "--finetune-epochs", "0", "--rates", "0,0.5", "--methods", "by-hand", "--scopes", "fc",
        "--batch-sizes", "2", "--latency-rounds", "2", "--latency-warmup", "0", "--devices", "cpu",
        "--threads", "1", "--runtimes", "eager", f"--benchmark-json={out}", "-p", "no:cacheprovider")
    # no committed thresholds for imagefolder, yet the base is gated: it must beat chance (or, on 12
    # test images, the split is too small to show it) and nothing from it is published as a timing
    result.assert_outcomes(failed=4)
    result.stdout.re_match_lines([r"E +AssertionError: imagefolder base-r0\.00: "
                                  r"(the base did not learn|the test split \(12 images)"])
    assert not out.exists() or not json.loads(out.read_text())["benchmarks"]
