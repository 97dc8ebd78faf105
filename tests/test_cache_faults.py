"""The cache's fault policy, for checkpoints and exports alike: a damaged entry is one CacheWarning and
rebuilt; a cache that refuses a write (not a directory, full) is one warning, then the run goes on
uncached with exports in a private temporary directory; results and reports on a full disk keep the
earlier complete file. Harness-level runs of the same faults are in test_harness.py."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from tests.conftest import fill
from vggprune.cache import CacheWarning, CheckpointCache, is_private, published_dir
from vggprune.runtimes import get_runtime

REPO = Path(__file__).resolve().parent.parent
FIXTURE_RUN = REPO / "tests" / "fixtures" / "run_cpu.json"
BATCH = torch.randn(1, 3, 32, 32)


def cache_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, CacheWarning)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, small_model) -> Path:
    """One real ONNX export of the small model, copied by each test before it damages it."""
    pytest.importorskip("onnxruntime")
    from vggprune.runtimes.onnx import export_onnx

    root = tmp_path_factory.mktemp("export")
    export_onnx(small_model, BATCH, root)
    return root / "onnx"


def truncate(d: Path) -> tuple[Path, str]:
    with open(d / "model.onnx", "r+b") as f:
        f.truncate(100)
    return d / "model.onnx", "100 bytes where"


def garbage(d: Path) -> tuple[Path, str]:
    size = (d / "model.onnx.data").stat().st_size
    (d / "model.onnx.data").write_bytes(os.urandom(size))  # the same size: only the digest can tell
    return d / "model.onnx.data", "SHA-256 differs"


def drop_data(d: Path) -> tuple[Path, str]:
    (d / "model.onnx.data").unlink()  # what ORT and OpenVINO need beside the graph
    return d / "model.onnx.data", "it is missing"


def garble_meta(d: Path) -> tuple[Path, str]:
    (d / "meta.json").write_text("{")
    return d / "meta.json", "JSONDecodeError"


@pytest.mark.parametrize("damage", [truncate, garbage, drop_data, garble_meta])
def test_a_damaged_export_is_one_warning_and_rebuilt(tmp_path, exported, small_model, damage):
    import onnxruntime

    from vggprune.runtimes.onnx import export_onnx

    shutil.copytree(exported, tmp_path / "onnx")
    bad, why = damage(tmp_path / "onnx")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        files, reused = export_onnx(small_model, BATCH, tmp_path)
        again, reused_again = export_onnx(small_model, BATCH, tmp_path)  # the rebuilt entry is whole: no warning
    [warning] = cache_warnings(record)
    assert f"cache file {bad} is unreadable" in warning and why in warning
    assert not reused and reused_again and again == files
    session = onnxruntime.InferenceSession(str(files[0]), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": BATCH.numpy()})[0]
    with torch.inference_mode():
        torch.testing.assert_close(torch.from_numpy(logits), small_model(BATCH), rtol=1e-4, atol=1e-4)
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["meta.json", "model.onnx", "model.onnx.data"]
    assert [p.name for p in tmp_path.iterdir()] == ["onnx"]  # no temporary or set-aside directory left


def test_a_cache_that_is_a_file_is_one_warning_and_exports_go_private(tmp_path, small_model):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache directory should be")
    cache = CheckpointCache(blocker)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert cache.store({"k": 1}, "base", small_model, {}) is None
        runner = get_runtime("fused").prepare(small_model, "cpu", "contiguous", BATCH, blocker / "exports" / "base")
        assert cache.store({"k": 2}, "case", small_model, {}) is None
    [warning] = cache_warnings(record)
    assert f"cannot write cache file {cache.path_for({'k': 1}, 'base')} (not a directory)" in warning
    assert runner.files == [] and runner.size_bytes > 0  # like an uncached prepare: the files go at exit
    with torch.inference_mode():
        torch.testing.assert_close(runner(BATCH), small_model(BATCH), rtol=1e-4, atol=1e-4)
    assert blocker.read_text() == "a file where the cache directory should be"


def test_a_full_disk_while_exporting_is_one_warning_and_leaves_nothing(tmp_path, small_model):
    cache = CheckpointCache(tmp_path / "cache")
    final = cache.root / "exports" / "base" / "onnx"
    calls = []

    def build(tmp: Path) -> None:  # a writer that fills the disk half-way through its first file
        calls.append(tmp)
        with open(tmp / "model.onnx", "wb") as f:
            f.write(b"half a model")
            if len(calls) == 1:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        where, reused = published_dir(final, {"k": 1}, build)
        assert cache.store({"k": 1}, "base", small_model, {}) is None  # the cache stays off for this run
        again, reused_again = published_dir(final, {"k": 1}, build)
    [warning] = cache_warnings(record)
    assert f"cannot write cache file {final} (no space left on device)" in warning
    assert is_private(where) and not reused and (where / "model.onnx").read_bytes() == b"half a model"
    assert again == where and reused_again and len(calls) == 2
    assert [p for p in cache.root.rglob("*") if p.is_file()] == []  # no partial file in the cache


def test_the_private_export_directory_is_removed_at_exit(tmp_path):
    code = ("import sys, torch; from vggprune.cache import published_dir\n"
            "where, _ = published_dir(__import__('pathlib').Path(sys.argv[1]) / 'x' / 'onnx', {'k': 1},"
            " lambda d: (d / 'f').write_text('x'))\n"
            "print(where)\n")
    (tmp_path / "file").write_text("not a directory")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code, str(tmp_path / "file")], capture_output=True,
                         text=True, env={**os.environ, "TMPDIR": str(tmp_path)}, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    where = Path(out.stdout.strip())
    assert where.name == "onnx" and tmp_path in where.parents
    assert not where.exists() and [p.name for p in tmp_path.iterdir()] == ["file"]


def test_a_full_tmpfs_is_one_warning_then_uncached(full_disk, small_model):
    cache = CheckpointCache(full_disk)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert cache.store({"k": 1}, "base", small_model, {}) is None  # the small model is ~3.6 MB
        runner = get_runtime("fused").prepare(small_model, "cpu", "contiguous", BATCH, full_disk / "exports" / "b")
    [warning] = cache_warnings(record)
    assert "no space left on device" in warning and str(cache.path_for({"k": 1}, "base")) in warning
    assert runner.files == [] and runner.size_bytes > 0
    assert [p for p in full_disk.rglob("*") if p.is_file()] == []  # the atomic writer removed its temp file


# --- results and reports on a full disk --------------------------------------------------------------------

def report(capsys, out: Path) -> tuple[int, str]:
    from vggprune.cli import main

    code = main(["report", str(FIXTURE_RUN), "--out", str(out), "--no-plots", "--format", "plain"])
    return code, capsys.readouterr().err


def check_report_kept(capsys, out: Path, before: dict[str, bytes]) -> None:
    code, err = report(capsys, out)
    assert code == 2 and err.count("\n") == 1, err
    assert f"{out / 'summary.md'}" in err and "No space left on device" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "filler"} == before  # no temp file either


def test_a_report_on_a_full_disk_is_one_line_and_keeps_the_earlier_files(tmp_path, capsys, monkeypatch):
    out = tmp_path / "rep"
    assert report(capsys, out)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full(fd: int) -> None:  # the data reaches the disk at fsync, and the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    check_report_kept(capsys, out, before)


def test_a_report_on_a_full_tmpfs_is_one_line_and_keeps_the_earlier_files(full_disk, capsys):
    out = full_disk / "rep"
    assert report(capsys, out)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    fill(full_disk)
    check_report_kept(capsys, out, before)


FAKE_FULL = """
import errno, os
from pytest_benchmark.session import BenchmarkSession


def save_json(self, output_json):  # half the file reaches the disk, then it is full
    with open(self.json, "wb") as f:
        f.write(b'{"machine_info": ')
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


BenchmarkSession.save_json = save_json
"""


def benchmark_json_run(pytester: pytest.Pytester, target: Path, *args: str) -> pytest.RunResult:
    shutil.copy(REPO / "conftest.py", pytester.path / "conftest.py")
    pytester.makepyfile(test_it="""
        def test_a(benchmark):
            benchmark.extra_info["pad"] = "x" * 300_000  # more than the small tmpfs holds
            benchmark(lambda: None)
    """)
    target.write_text('{"complete": true}')
    return pytester.runpytest_subprocess("--benchmark-json", str(target), "-p", "no:cacheprovider", *args)


def check_json_kept(result: pytest.RunResult, target: Path) -> None:
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED and "Traceback" not in out and "INTERNALERROR" not in out
    result.stdout.fnmatch_lines([f"vggprune: cannot write {target}: no space left on device (it was left as it was)"])
    assert target.read_text() == '{"complete": true}'
    assert sorted(p.name for p in target.parent.iterdir() if p.name.startswith(("run.", ".run."))) == ["run.json"]


def test_benchmark_json_on_a_full_disk_is_one_line_and_keeps_the_complete_file(pytester):
    pytester.makepyfile(fakefull=FAKE_FULL)
    target = pytester.path / "run.json"
    check_json_kept(benchmark_json_run(pytester, target, "-p", "fakefull"), target)


def test_benchmark_json_on_a_full_tmpfs_is_one_line_and_keeps_the_complete_file(pytester, full_disk):
    target = full_disk / "run.json"
    check_json_kept(benchmark_json_run(pytester, target), target)
