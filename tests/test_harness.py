"""The benchmark harness itself, run with pytester on a copy of bench/ and the root conftest."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from tests.arith import expected_params
from vggprune.results.record import SCHEMA

REPO = Path(__file__).resolve().parent.parent
# A small but complete quick run: base + one pruned rate, both methods, two batch sizes.
SMALL_RUN = ["--rates", "0,0.5", "--runtimes", "eager", "--scope", "fc", "--batch-sizes", "1,4",
             "--latency-rounds", "3", "--latency-warmup", "1", "--devices", "cpu", "--threads", "1",
             "-p", "no:cacheprovider"]
CONTRACT = {"schema", "profile", "model", "method", "scope", "rate", "runtime", "device", "batch_size", "params",
            "macs", "accuracy", "accuracy_ci", "latency_p50_ms", "latency_q1_ms", "latency_q3_ms", "images_per_s",
            "base_times_s", "measured_speedup", "measured_speedup_ci", "other_cpu_cores", "contended"}


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One checkpoint cache for all harness runs here, so the quick base trains once per test session."""
    return tmp_path_factory.mktemp("vggprune-cache")


# Runs that execute cases use a subprocess: an in-process run would re-import numpy/torch modules.
@pytest.fixture
def bench(pytester: pytest.Pytester, shared_cache: Path, monkeypatch) -> pytest.Pytester:
    shutil.copy(REPO / "conftest.py", pytester.path / "conftest.py")
    shutil.copytree(REPO / "bench", pytester.path / "bench", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("VGGPRUNE_CACHE_DIR", str(shared_cache))
    for var in ("VGGPRUNE_PROFILE", "VGGPRUNE_RATES", "VGGPRUNE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)
    return pytester


def test_help_lists_every_option_with_its_env_var(bench):
    out = bench.runpytest("bench", "--help").stdout.str()
    for flag, env in [("--profile", "VGGPRUNE_PROFILE"), ("--rates", "VGGPRUNE_RATES"),
                      ("--methods", "VGGPRUNE_METHODS"), ("--scope", "VGGPRUNE_SCOPE"),
                      ("--devices", "VGGPRUNE_DEVICES"), ("--batch-sizes", "VGGPRUNE_BATCH_SIZES"),
                      ("--data-root", "VGGPRUNE_DATA_ROOT"), ("--download", "VGGPRUNE_DOWNLOAD"),
                      ("--weights", "VGGPRUNE_WEIGHTS"), ("--latency-rounds", "VGGPRUNE_LATENCY_ROUNDS"),
                      ("--latency-warmup", "VGGPRUNE_LATENCY_WARMUP"), ("--threads", "VGGPRUNE_THREADS"),
                      ("--no-cache", "VGGPRUNE_NO_CACHE")]:
        assert flag in out and env in out, flag


@pytest.mark.parametrize("args, message", [
    (["--rates", "0,1.5"], "--rates: rate must be a number in [0, 1), got 1.5"),
    (["--profile", "imagenet"], "--profile: unknown value 'imagenet'; allowed: quick, seed, imagefolder"),
    (["--devices", "tpu"], "--devices: unknown value 'tpu'"),
    (["--methods", "magic"], "--methods: unknown value magic; allowed: torch-pruning, by-hand"),
])
def test_bad_option_is_a_usage_error(bench, args, message):
    result = bench.runpytest("bench", "--collect-only", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error; this machine has CUDA")
def test_devices_cuda_without_cuda_is_a_usage_error(bench):
    result = bench.runpytest("bench", "--collect-only", "--devices", "cuda")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "CUDA was asked for but torch.cuda.is_available() is False" in result.stderr.str()


def test_case_ids_are_readable_and_env_vars_work(bench, monkeypatch):
    monkeypatch.setenv("VGGPRUNE_RATES", "0,0.3")
    monkeypatch.setenv("VGGPRUNE_BATCH_SIZES", "64")
    result = bench.runpytest("bench", "--collect-only", "-q", "--scope", "fc", "--devices", "cpu",
                             "--runtimes", "eager")
    lines = [line.split("::")[-1] for line in result.stdout.lines if "::" in line]
    assert lines == ["test_accuracy[quick-base-r0.00]", "test_inference[quick-base-r0.00-cpu-b64]",
                     "test_accuracy[quick-torch-pruning-fc-r0.30]",
                     "test_inference[quick-torch-pruning-fc-r0.30-cpu-b64]",
                     "test_accuracy[quick-by-hand-fc-r0.30]", "test_inference[quick-by-hand-fc-r0.30-cpu-b64]"]


def test_quick_run_writes_every_case_with_the_contract_fields(bench):
    json_path = bench.path / "new-dir" / "run.json"  # the directory does not exist yet
    result = bench.runpytest_subprocess("bench", *SMALL_RUN, f"--benchmark-json={json_path}")
    result.assert_outcomes(passed=3 + 6)
    # what a terminal shows fits 120 columns: pytest-benchmark's table too (the JSON keeps every field)
    table = [line for line in result.outlines if "inference[" in line or line.startswith("Name (time")]
    assert table and max(len(line) for line in table) <= 120, max(table, key=len)
    run = json.loads(json_path.read_text())
    assert not list(json_path.parent.glob(".*.tmp"))  # the temporary file was renamed into place
    entries = {b["extra_info"]["case_id"]: b["extra_info"] for b in run["benchmarks"]}
    rounds = {b["extra_info"]["case_id"]: b["stats"]["data"] for b in run["benchmarks"]}
    assert sorted(entries) == sorted(f"quick-{m}-cpu-b{b}" for b in (1, 4)
                                     for m in ("base-r0.00", "torch-pruning-fc-r0.50", "by-hand-fc-r0.50"))
    for info in entries.values():
        assert CONTRACT <= info.keys()
        assert info["params"] == expected_params("small", 10, info["rate"], "fc")
        assert 0.9 < info["accuracy"] <= 1 and info["latency_p50_ms"] > 0
        assert info["latency_q1_ms"] <= info["latency_p50_ms"] <= info["latency_q3_ms"]
        # paired timing: one base round per case round, both kept as evidence
        assert len(info["base_times_s"]) == len(rounds[info["case_id"]]) == 3 and info["schema"] == SCHEMA
        low, high = info["measured_speedup_ci"]
        assert low <= info["measured_speedup"] <= high
        assert info["run_spread"] == 0.05  # the default between-run allowance, the base's A/A pair included
        assert info["images_per_s"] == pytest.approx(info["batch_size"] / info["latency_p50_ms"] * 1e3, rel=1e-3)
        assert info["threads"] == 1
        assert info["trained_on"]["threads"] == 1 and isinstance(info["from_cache"], bool)
    versions = run["machine_info"]["vggprune"]
    assert versions["torch"] == torch.__version__ and "torch_pruning" in versions and versions["threads"] == 1
    # by-hand and torch-pruning kept the same units into the same weights: one model, timed once per batch size
    for b in (1, 4):
        tp, hand = (f"quick-{m}-fc-r0.50-cpu-b{b}" for m in ("torch-pruning", "by-hand"))
        assert entries[hand]["weights_sha256"] == entries[tp]["weights_sha256"]
        assert (entries[tp]["timed_with"], entries[hand]["timed_with"]) == (None, tp)
        assert rounds[hand] == rounds[tp] and entries[hand]["base_times_s"] == entries[tp]["base_times_s"]
        assert entries[hand]["method"] == "by-hand" and entries[f"quick-base-r0.00-cpu-b{b}"]["timed_with"] is None


def test_threshold_above_measured_accuracy_fails_with_measured_vs_required(bench):
    strict = bench.path / "strict.json"
    strict.write_text(json.dumps({"quick": {"base_min_top1": 0.9999, "scopes": {}}}))
    result = bench.runpytest_subprocess("bench", *SMALL_RUN, "--rates", "0", f"--thresholds={strict}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(failed=3)  # the accuracy gate and, before timing, both batch sizes
    result.stdout.re_match_lines([r".*quick base-r0.00: top-1 0\.9\d+ < required 0\.9999.*"])


def test_wrong_expected_param_count_fails_before_timing(bench):
    table = json.loads((REPO / "bench" / "expected_params.json").read_text())
    table["counts"]["small-10"]["fc"]["0.50"] += 1
    wrong = bench.path / "wrong.json"
    wrong.write_text(json.dumps(table))
    result = bench.runpytest_subprocess("bench", *SMALL_RUN, "--methods", "by-hand", "--batch-sizes", "1",
                             f"--expected-params={wrong}")
    result.assert_outcomes(passed=3, failed=1)
    n = expected_params("small", 10, 0.5, "fc")
    result.stdout.fnmatch_lines([f"*quick-by-hand-fc-r0.50-cpu-b1: parameter count {n:,} != expected {n + 1:,}*"])


@pytest.mark.slow
def test_seed_profile_without_data_times_but_skips_accuracy_with_how_to(bench, tmp_path):
    json_path = tmp_path / "seed.json"
    (tmp_path / "no-flowers").mkdir()  # an explicit --data-root must exist and not be empty
    (tmp_path / "no-flowers" / "notes.txt").write_text("no Flowers102 here")
    result = bench.runpytest_subprocess("bench", "--profile", "seed", "--rates", "0", "--batch-sizes", "1",
                                        "--runtimes", "eager",
                             "--latency-rounds", "1", "--latency-warmup", "0", "--devices", "cpu",
                             f"--data-root={tmp_path / 'no-flowers'}", "-rs", f"--benchmark-json={json_path}")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*accuracy not measured*--data-root*--download*"])
    (info,) = [b["extra_info"] for b in json.loads(json_path.read_text())["benchmarks"]]
    assert info["params"] == 132_970_942 and info["accuracy"] is None and "--download" in info["accuracy_reason"]
    assert info["image_size"] == 224 and info["latency_p50_ms"] > 0


# A pytest plugin that runs the harness's CUDA path on this CPU-only machine with a device that behaves
# like one (tests/fake_cuda.py): forwards leave work in flight until synchronize, events sit on streams,
# and a start event recorded with work in flight is counted. Tensors stay on the CPU (nothing here can
# hold device memory), so the plugin also fails any module moved inside inference mode, the move that
# breaks fine-tuning on a real GPU, and counts the model copies alive after each case.
FAKE_CUDA_PLUGIN = '''
import gc, json, os
import torch
import vggprune.timing.pairing as latency
import vggprune.runtimes.base as runtimes_base
import vggprune.pipeline as pipeline
from vggprune.models import VGG11
from tests.fake_cuda import FakeCuda

CUDA = FakeCuda().install(lambda obj, name, value: setattr(obj, name, value))
torch.cuda.mem_get_info = lambda device=None: (64 * 2**30, 80 * 2**30)
torch.cuda.reset_peak_memory_stats = lambda device=None: None
torch.cuda.max_memory_allocated = lambda device=None: 123 * 2**20
pipeline.resolve_device = lambda device=None: torch.device("cpu")  # training stays on the CPU
MOVES, AFTER_CASE = [], []

_apply = torch.nn.Module._apply
def guarded(self, fn, *args, **kwargs):
    if torch.is_inference_mode_enabled():
        MOVES.append(type(self).__name__)
    return _apply(self, fn, *args, **kwargs)
torch.nn.Module._apply = guarded

_prepare, _batch, _init = runtimes_base.Runtime.prepare, latency.make_batch, latency.TimedForward.__init__

def prepare(self, model, device, memory_format, example_batch, artifact_dir=None):
    runner = _prepare(self, model, "cpu", memory_format, example_batch, artifact_dir)
    forward = runner._forward
    runner._forward = lambda batch: (CUDA.launch(), forward(batch))[1]  # asynchronous, as on a GPU
    return runner

def timed_forward_init(self, model, batch):
    _init(self, model, batch)
    self.cuda = True  # the batch is on the CPU, but every case in this run is a CUDA case

runtimes_base.Runtime.prepare = prepare
latency.make_batch = lambda bs, size, device, **kw: _batch(bs, size, "cpu", **kw)
latency.TimedForward.__init__ = timed_forward_init

import pytest
@pytest.hookimpl(trylast=True)
def pytest_runtest_logfinish(nodeid, location):
    gc.collect()
    AFTER_CASE.append(sum(1 for o in gc.get_objects() if isinstance(o, VGG11)))

def pytest_unconfigure(config):
    with open(os.environ["FAKE_CUDA_LOG"], "w") as f:
        json.dump({"log": CUDA.log, "started_in_flight": CUDA.started_in_flight, "moves": MOVES,
                   "after_case": AFTER_CASE, "empty_cache": CUDA.empty_cache_calls}, f)
'''


def test_cuda_cases_fine_tune_time_in_sync_and_free_their_copies(bench, tmp_path, monkeypatch):
    (bench.path / "fakecuda.py").write_text(FAKE_CUDA_PLUGIN)
    monkeypatch.setenv("FAKE_CUDA_LOG", str(tmp_path / "log.json"))
    monkeypatch.setenv("PYTHONPATH", f"{bench.path}{os.pathsep}{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    json_path = tmp_path / "cuda.json"
    # a pruned model is fine-tuned after it was scored (the path a move inside inference mode breaks),
    # and each runtime's fresh copies go through the fake device
    result = bench.runpytest_subprocess("bench", "-p", "fakecuda", *SMALL_RUN, "--rates", "0,0.5", "--scopes", "fc",
                                        "--methods", "by-hand", "--batch-sizes", "2", "--runtimes", "eager,fused",
                                        "--devices", "cuda", "--finetune-epochs", "1",
                                        f"--benchmark-json={json_path}")  # later options win
    result.assert_outcomes(passed=6)
    run = json.loads(json_path.read_text())
    gpu = run["machine_info"]["vggprune"]["gpu"]
    assert gpu["name"] == "Fake GPU" and gpu["compute_capability"] == "8.0" and gpu["memory_mb"] == 16384
    assert gpu["cudnn_allow_tf32"] is False and gpu["cuda_matmul_allow_tf32"] is False  # float32 is float32
    infos = [b["extra_info"] for b in run["benchmarks"]]
    assert {i["case_id"] for i in infos} == {f"quick-{m}{r}-cuda-b2" for m in ("base-r0.00", "by-hand-fc-r0.50")
                                             for r in ("", "-fused")}
    # the fake device's events span 1.5 ms per timed call, which ran `loops` batches
    assert all(i["device_name"] == "Fake GPU" and i["gpu_time_p50_ms"] == round(1.5 / i["loops"], 4) for i in infos)
    assert all(i["gpu_peak_mem_mb"] == 123.0 and len(i["base_times_s"]) == 3 for i in infos)
    seen = json.loads((tmp_path / "log.json").read_text())
    assert seen["moves"] == []  # no module moved or converted inside inference mode
    assert seen["started_in_flight"] == 0  # no clock started with device work in flight
    # every timed call: start event, its loops of forwards, end event, then the sync that ends it
    log = seen["log"]
    records = [i for i, entry in enumerate(log) if entry != "forward" and entry[0] == "record"]
    for start, end in zip(records[::2], records[1::2]):
        assert set(log[start + 1:end]) == {"forward"} and log[end + 1] == "synchronize"
    assert {i["loops"] for i in infos} and all(i["loops"] >= 1 for i in infos)
    # after each test, only the trained models (base, pruned) remain: every copy made to time a case is freed
    assert max(seen["after_case"]) <= 2 and seen["empty_cache"] >= 4


def test_timing_under_xdist_is_refused(bench, monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    result = bench.runpytest("bench", "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "cannot run under pytest-xdist" in result.stderr.str()


def test_the_run_summary_says_whether_the_machine_was_quiet(bench, tmp_path):
    json_path = tmp_path / "run.json"
    result = bench.runpytest_subprocess("bench", *SMALL_RUN, "--rates", "0", "--batch-sizes", "1",
                                        f"--benchmark-json={json_path}")
    result.assert_outcomes(passed=2)
    (info,) = [b["extra_info"] for b in json.loads(json_path.read_text())["benchmarks"]]
    result.stdout.fnmatch_lines(["*vggprune timing*", "1 case(s) timed, each paired round by round with its base."])
    quiet = "The machine stayed quiet and no case was noisy."
    assert (quiet in result.stdout.str()) == (not info["contended"] and not info["noisy"])
    if info["contended"]:
        result.stdout.fnmatch_lines(["*1 of 1 case(s) were timed while other processes used the CPU*"])


def test_other_runtimes_time_the_base_and_each_scopes_largest_rate(bench):
    result = bench.runpytest("bench", "--collect-only", "-q", "--scopes", "conv", "--devices", "cpu",
                             "--rates", "0,0.3,0.5", "--methods", "by-hand", "--batch-sizes", "8",
                             "--runtimes", "eager,fused")
    lines = [line.split("::")[-1] for line in result.stdout.lines if "test_inference" in line]
    assert lines == ["test_inference[quick-base-r0.00-cpu-b8]", "test_inference[quick-base-r0.00-fused-cpu-b8]",
                     "test_inference[quick-by-hand-conv-r0.30-cpu-b8]",
                     "test_inference[quick-by-hand-conv-r0.50-cpu-b8]",
                     "test_inference[quick-by-hand-conv-r0.50-fused-cpu-b8]"]


def test_an_unknown_runtime_is_a_usage_error(bench):
    result = bench.runpytest("bench", "--collect-only", "--runtimes", "tensorrt")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--runtimes: unknown value tensorrt; allowed: eager, fused, onnxruntime, openvino, compile" in (
        result.stderr.str())


@pytest.mark.slow  # three processes start torch; test_workers.py covers the workers themselves in make test
def test_timing_processes_time_one_block_in_each_worker_process(bench, tmp_path):
    json_path = tmp_path / "run.json"
    result = bench.runpytest_subprocess("bench", *SMALL_RUN, "--rates", "0", "--batch-sizes", "2",
                                        "--runtimes", "eager,fused", "--latency-rounds", "7",
                                        "--timing-processes", "3", f"--benchmark-json={json_path}")
    result.assert_outcomes(passed=3)
    run = json.loads(json_path.read_text())
    assert run["machine_info"]["vggprune"]["timing_processes"] == 3
    for bench_entry in run["benchmarks"]:
        info = bench_entry["extra_info"]
        # 7 rounds over 3 processes: blocks of 3, 3 and 1, this process's first, as block_ids splits them
        assert info["blocks"] == 3
        assert len(bench_entry["stats"]["data"]) == len(info["base_times_s"]) == info["rounds"] == 7
        assert not info["contended"] or info["other_cpu_cores"] > 0.1  # the workers' CPU is not contention


# The cache's faults, as a new user meets them: each is one CacheWarning and the cases still pass.
FAULT_RUN = [*SMALL_RUN, "--rates", "0", "--batch-sizes", "1", "--latency-rounds", "2", "--latency-warmup", "0"]


def cache_warning_lines(result: pytest.RunResult) -> list[str]:
    return [line for line in result.stdout.lines if "CacheWarning" in line]


@pytest.mark.slow  # two whole runs, the first to write the export
def test_a_truncated_onnx_export_in_the_cache_is_rebuilt_with_one_warning(bench, shared_cache):
    pytest.importorskip("onnxruntime")
    bench.runpytest_subprocess("bench", *FAULT_RUN, "--runtimes", "onnxruntime").assert_outcomes(passed=2)
    [export] = shared_cache.glob("exports/quick-small-base-r0.00/onnx/model.onnx")
    with open(export, "r+b") as f:
        f.truncate(100)
    result = bench.runpytest_subprocess("bench", *FAULT_RUN, "--runtimes", "onnxruntime")
    result.assert_outcomes(passed=2)
    [line] = cache_warning_lines(result)
    assert f"cache file {export} is unreadable (100 bytes where" in line and "rebuilding it" in line


def run_on_an_unwritable_cache(bench, cache: Path, tmp_path: Path, monkeypatch) -> str:
    """One uncached run (a 3-epoch base) on ``cache``: its one CacheWarning; no private export left."""
    pytest.importorskip("onnxruntime")
    private = tmp_path / "tmp"
    private.mkdir()
    lax = tmp_path / "lax.json"  # a few epochs are enough to beat chance, not the committed gate
    lax.write_text(json.dumps({"quick": {"base_min_top1": 0.0, "scopes": {}}}))
    monkeypatch.setenv("VGGPRUNE_CACHE_DIR", str(cache))
    monkeypatch.setenv("TMPDIR", str(private))
    result = bench.runpytest_subprocess("bench", *FAULT_RUN, "--epochs", "3", f"--thresholds={lax}", "-k", "inference",
                                        "--runtimes", "eager,fused,onnxruntime")
    result.assert_outcomes(passed=3, deselected=1)
    assert not list(private.glob("vggprune-*"))  # the private export directory went at exit
    [line] = cache_warning_lines(result)
    return line


@pytest.mark.slow  # trains a base of its own: no cache can be written
def test_a_cache_dir_that_is_a_file_is_one_warning_and_every_case_passes(bench, tmp_path, monkeypatch):
    blocker = tmp_path / "cache"
    blocker.write_text("not a directory")
    line = run_on_an_unwritable_cache(bench, blocker, tmp_path, monkeypatch)
    assert f"cannot write cache file {blocker}" in line and "(not a directory)" in line


@pytest.mark.slow  # trains a base of its own: no cache can be written
def test_a_cache_on_a_full_disk_is_one_warning_and_leaves_no_partial_file(bench, full_disk, tmp_path, monkeypatch):
    line = run_on_an_unwritable_cache(bench, full_disk, tmp_path, monkeypatch)
    assert f"cannot write cache file {full_disk}" in line and "(no space left on device)" in line
    assert [p.name for p in full_disk.rglob("*") if p.is_file() and p.suffix != ".lock"] == []
