"""The runtime layer (vggprune.runtimes): each runtime's outputs match eager on the quick model, base
and conv-pruned; exports are cached and published atomically; a missing runtime says why in one line;
torch.compile resets dynamo per model; CUDA paths are checked with spies (or on a GPU when present)."""

from __future__ import annotations

import copy
import json
import math
import os
import stat
import sys

import pytest
import torch

from tests.conftest import randomize_
from vggprune import build_vgg11, prune
from vggprune.errors import UserError
from vggprune.identity import RUNTIME_ORDER
from vggprune.runtimes import RUNTIMES, Runner, Verification, fuse_bn, get_runtime, reference_logits, verify

EXPORTING = ("onnxruntime", "openvino")
FAST = ("eager", "fused", "onnxruntime", "openvino")  # compile has its own tests (a cold compile is slow)


def _batches(seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 32, 32, generator=gen) for n in (8, 1, 5)]


@pytest.fixture(scope="module")
def models():
    base = randomize_(build_vgg11("small", 10))
    return {"base": base, "conv0.5": prune(base, 0.5, method="by-hand", scope="conv").eval()}


@pytest.fixture(scope="module")
def artifact_dirs(tmp_path_factory, models):
    """One artefact directory per model, shared by the runtimes (ORT and OpenVINO share one export)."""
    return {key: tmp_path_factory.mktemp(key) for key in models}


def _need(name: str, device: str = "cpu") -> None:
    reason = get_runtime(name).unavailable(device)
    if reason:
        pytest.skip(reason)


def test_registry_names_and_unknown_runtime():
    assert RUNTIMES == ("eager", "fused", "onnxruntime", "openvino", "compile") == RUNTIME_ORDER  # tables list them so
    assert all(get_runtime(n).name == n for n in RUNTIMES)
    with pytest.raises(UserError, match="unknown runtime 'tensorrt'; allowed: eager, fused, onnxruntime"):
        get_runtime("tensorrt")


@pytest.mark.parametrize("key", ["base", "conv0.5"])
@pytest.mark.parametrize("name", FAST)
def test_outputs_match_eager(name, key, models, artifact_dirs):
    _need(name)
    model = models[key]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    runner = get_runtime(name).prepare(model, "cpu", "channels_last", _batches()[0], artifact_dirs[key])
    check = verify(runner, model, [(x, None) for x in _batches()])  # test-split style (x, y) batches
    assert check.failure() is None
    assert (check.images, check.agreement, check.ties) == (14, 1.0, 0)
    assert check.max_rel_diff < 1e-4
    # The caller's model is untouched (fused folds a copy).
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # What a user ships, and its size on disk; eager ships the checkpoint the cache already holds.
    if get_runtime(name).exports:
        assert runner.files and all(f.is_file() for f in runner.files)
        assert runner.size_bytes == sum(f.stat().st_size for f in runner.files)
    else:
        assert runner.files == [] and runner.size_bytes == sum(t.nbytes for t in model.state_dict().values())
    if name in EXPORTING:
        assert [f.name for f in runner.files] == ["model.onnx", "model.onnx.data"]
    json.dumps(check.as_dict())


def test_pruned_model_is_smaller_on_disk(models, artifact_dirs):
    sizes = {key: get_runtime("eager").prepare(m, "cpu", "contiguous", _batches()[0], artifact_dirs[key]).size_bytes
             for key, m in models.items()}
    assert sizes["conv0.5"] < sizes["base"]


def test_without_artifact_dir_files_are_temporary_but_measured(models):
    runner = get_runtime("fused").prepare(models["base"], "cpu", "contiguous", _batches()[0], None)
    assert runner.files == [] and runner.size_bytes > 0
    assert verify(runner, models["base"], _batches()[0]).failure() is None  # a single fixed batch works too


def test_fuse_bn_folds_every_batchnorm(models):
    fused = fuse_bn(models["conv0.5"])
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert sum(isinstance(m, torch.nn.Identity) for m in fused.modules()) == 8


# Export caching and atomic publication --------------------------------------------------------------
@pytest.fixture
def export_spy(monkeypatch):
    calls = []
    real = torch.onnx.export

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", spy)
    return calls


def test_export_is_cached_and_shared(tmp_path, models, export_spy):
    _need("onnxruntime")
    model, x = models["conv0.5"], _batches()[0]
    first = get_runtime("onnxruntime").prepare(model, "cpu", "contiguous", x, tmp_path)
    assert len(export_spy) == 1 and not first.reused
    assert export_spy[0]["dynamo"] is True and export_spy[0]["dynamic_shapes"]
    mtimes = [f.stat().st_mtime_ns for f in first.files]
    again = get_runtime("onnxruntime").prepare(model, "cpu", "contiguous", x[:2], tmp_path)
    assert len(export_spy) == 1 and again.reused and again.files == first.files
    assert [f.stat().st_mtime_ns for f in again.files] == mtimes
    if get_runtime("openvino").unavailable("cpu") is None:
        ov = get_runtime("openvino").prepare(model, "cpu", "contiguous", x, tmp_path)
        assert len(export_spy) == 1 and ov.reused
    # Other weights in the same directory are never served the stale export.
    other = randomize_(prune(build_vgg11("small", 10), 0.5, method="by-hand", scope="conv"), seed=5)
    with torch.inference_mode():  # a harness may prepare inside inference mode: export still works
        runner = get_runtime("onnxruntime").prepare(other, "cpu", "contiguous", x, tmp_path)
    assert len(export_spy) == 2 and not runner.reused
    assert verify(runner, other, x).failure() is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]  # no temporary or stale dirs left


def test_files_respect_umask_and_failed_export_leaves_nothing(tmp_path, models, monkeypatch):
    old = os.umask(0o027)
    try:
        runner = get_runtime("fused").prepare(models["base"], "cpu", "contiguous", _batches()[0], tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(runner.files[0].stat().st_mode) == 0o640
    assert stat.S_IMODE(runner.files[0].parent.stat().st_mode) == 0o750

    _need("onnxruntime")

    def broken(*args, **kwargs):
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        get_runtime("onnxruntime").prepare(models["base"], "cpu", "contiguous", _batches()[0], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fused"]


# Unavailable runtimes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name, module", [("onnxruntime", "onnxruntime"), ("openvino", "openvino"),
                                          ("onnxruntime", "onnxscript"), ("openvino", "onnx")])
def test_missing_package_gives_one_line_with_the_fix(name, module, monkeypatch, models):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it raises
    reason = get_runtime(name).unavailable("cpu")
    assert reason == f"{name} needs {module}, which is not installed: pip install -e '.[deploy]'"
    with pytest.raises(UserError, match="not installed"):
        get_runtime(name).prepare(models["base"], "cpu", "contiguous", _batches()[0], None)


def test_importing_runtimes_does_not_import_heavy_packages():
    import subprocess

    code = ("import sys, vggprune.runtimes as r; [r.get_runtime(n) for n in r.RUNTIMES]; "
            "print([m for m in ('onnxruntime', 'openvino', 'onnx', 'onnxscript') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# CUDA ---------------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU reasons")
@pytest.mark.parametrize("name", RUNTIMES)
def test_cuda_without_gpu_is_one_line_reason(name):
    reason = get_runtime(name).unavailable("cuda")
    assert reason and "\n" not in reason and "cuda" in reason


def test_onnxruntime_cuda_provider_missing_says_install_onnxruntime_gpu(monkeypatch):
    _need("onnxruntime")
    import onnxruntime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert "pip install onnxruntime-gpu" in get_runtime("onnxruntime").unavailable("cuda")
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider"])
    assert get_runtime("onnxruntime").unavailable("cuda") is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine: the CUDA paths are "
                    "covered by the spy tests above and run for real where a GPU is present")
@pytest.mark.parametrize("name", ["eager", "fused", "onnxruntime"])
def test_cuda_outputs_match_eager(name, models, tmp_path):
    _need(name, "cuda")
    model = models["conv0.5"]
    runner = get_runtime(name).prepare(model, "cuda", "channels_last", _batches()[0], tmp_path)
    out = runner(runner.adapt(_batches()[0]))
    assert out.device.type == "cuda"
    assert verify(runner, model, _batches()).failure() is None


# torch.compile ------------------------------------------------------------------------------------------
def test_compile_resets_dynamo_before_each_model(monkeypatch, models):
    """Spied, with dynamo's eager backend so no inductor compile is paid here (see the slow test)."""
    _need("compile")
    import torch._dynamo

    events = []
    real_reset, real_compile = torch._dynamo.reset, torch.compile
    monkeypatch.setattr(torch._dynamo, "reset", lambda: (events.append("reset"), real_reset())[1])

    def compile_spy(module, **kwargs):
        events.append(("compile", kwargs["backend"], kwargs["dynamic"]))
        return real_compile(module, backend="eager", dynamic=kwargs["dynamic"])

    monkeypatch.setattr(torch, "compile", compile_spy)
    # config.patch restores dynamo's settings afterwards (monkeypatch cannot: they are aliased properties).
    with torch._dynamo.config.patch(recompile_limit=8, fail_on_recompile_limit_hit=False):
        runners = {key: get_runtime("compile").prepare(m, "cpu", "channels_last", _batches()[0], None)
                   for key, m in models.items()}
        # Many (model, batch size) graphs share VGG11.forward's cache: past the limit, fail, never run eager.
        assert torch._dynamo.config.recompile_limit >= 64 and torch._dynamo.config.fail_on_recompile_limit_hit
    assert events == ["reset", ("compile", "inductor", False)] * 2
    for key, runner in runners.items():  # the first model's runner still gives its own outputs
        assert verify(runner, models[key], _batches()[0]).failure() is None


@pytest.mark.slow
def test_compile_outputs_match_eager_two_models_same_shapes(models):
    """Real inductor: two VGG11s of the same shapes each get their own results (about 20-40 s cold)."""
    _need("compile")
    first = randomize_(build_vgg11("small", 10), seed=11)
    second = randomize_(build_vgg11("small", 10), seed=12)
    runners = [get_runtime("compile").prepare(m, "cpu", "channels_last", _batches()[0], None) for m in (first, second)]
    for runner, model in zip(runners, (first, second)):
        assert verify(runner, model, _batches()[0]).failure() is None


# verify ------------------------------------------------------------------------------------------------
def _fake_runner(fn) -> Runner:
    return Runner("fake", "cpu", fn, files=[], size_bytes=0)


def test_verify_reports_disagreement_with_numbers(models):
    model = models["base"]
    swapped = _fake_runner(lambda x: model(x).flip(1))
    check = verify(swapped, model, _batches())
    assert check.agreement < 0.999
    failure = check.failure()
    assert failure.startswith("fake disagrees with eager: top-1 agrees with eager on ")
    assert "/14 images" in failure and "need 99.9%" in failure and "max relative logit difference" in failure


def test_verify_nan_fails_and_records_null(models):
    check = verify(_fake_runner(lambda x: torch.full((len(x), 10), math.nan)), models["base"], _batches()[0])
    assert "non-finite" in check.failure()
    assert check.as_dict()["max_rel_diff"] is None


def test_verify_numerical_ties_are_not_disagreements():
    eager = torch.tensor([[1.0, 1.0 - 1e-7, 0.0], [2.0, 0.0, 1.0]])
    runtime = torch.tensor([[1.0 - 1e-7, 1.0, 0.0], [2.0, 0.0, 1.0]])  # image 0's top two swapped

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return eager

    check = verify(_fake_runner(lambda x: runtime), Fixed(), torch.zeros(2, 3, 1, 1))
    assert (check.images, check.agreeing, check.ties) == (2, 2, 1) and check.failure() is None


def test_verify_with_precomputed_reference(models):
    model, batches = models["conv0.5"], _batches()
    ref = reference_logits(model, batches)
    runner = get_runtime("fused").prepare(model, "cpu", "contiguous", batches[0], None)
    a, b = verify(runner, None, batches, reference=ref), verify(runner, model, batches)
    assert a == b and isinstance(a, Verification) and a.images == 14
    assert Verification("x", 0, 0, 0, 0.0, 0.0).failure() == "x: outputs not verified: no images"


def test_onnxruntime_cuda_forward_binds_torch_memory_in_place(monkeypatch):
    """IO binding hands ORT the input's and a fresh output tensor's device pointers (spied session), on
    ORT's own stream, ordered after the stream that wrote the input."""
    _need("onnxruntime")
    from tests.fake_cuda import FakeCuda, FakeStream
    from vggprune.runtimes.onnx import _cuda_forward

    FakeCuda().install(monkeypatch.setattr)
    stream = FakeStream()

    class Output:
        shape = ["batch", 10]

    class Binding:
        def __init__(self):
            self.calls = []

        def bind_input(self, *args):
            self.calls.append(("input", *args))

        def bind_output(self, *args):
            self.calls.append(("output", *args))

    class Session:
        binding = Binding()

        def get_outputs(self):
            return [Output()]

        def io_binding(self):
            return self.binding

        def run_with_iobinding(self, binding):
            self.ran = binding

    session = Session()
    batch = torch.zeros(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)  # CPU stands in for CUDA
    out = _cuda_forward(session, stream)(batch)
    assert out.shape == (4, 10) and session.ran is session.binding
    assert stream.waited_on == [0]  # ORT's stream waits for torch's default stream (pointer 0)
    (_, name_in, dev_in, _, _, shape_in, _), (_, name_out, dev_out, _, _, shape_out, ptr_out) = session.binding.calls
    assert (name_in, dev_in, shape_in) == ("input", "cuda", (4, 3, 32, 32))
    assert (name_out, dev_out, shape_out, ptr_out) == ("logits", "cuda", (4, 10), out.data_ptr())


def test_fingerprint_is_remembered_until_the_weights_change(monkeypatch):
    import hashlib

    import vggprune.runtimes.base as base_mod
    from vggprune.runtimes.base import model_fingerprint

    model = randomize_(build_vgg11("small", 10))
    hashed = []
    real = hashlib.sha256
    monkeypatch.setattr(base_mod.hashlib, "sha256", lambda *a: hashed.append(1) or real(*a))
    first = model_fingerprint(model)
    assert model_fingerprint(model) == first and len(hashed) == 1  # same tensors, same versions: not rehashed
    twin = copy.deepcopy(model)
    assert model_fingerprint(twin) == first and len(hashed) == 2  # another object is hashed for itself
    with torch.no_grad():
        model.classifier[-1].bias.add_(1.0)  # an in-place edit bumps the tensor's version counter
    changed = model_fingerprint(model)
    assert changed != first and len(hashed) == 3
    assert model_fingerprint(copy.deepcopy(model)) == changed  # the same as hashing it from scratch


def _mapped(address: int) -> bool:
    with open("/proc/self/maps") as maps:
        spans = (line.split()[0].split("-") for line in maps)
        return any(int(lo, 16) <= address < int(hi, 16) for lo, hi in spans)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads /proc/self/maps (Linux)")
def test_openvino_sessions_freed_in_any_order_leave_the_signal_stack_as_it_was(tmp_path, models):
    """A stale signal stack turns the next SIGCHLD (an image loader's worker exiting) into a SIGSEGV."""
    import faulthandler
    import gc

    from vggprune.runtimes.onnx import signal_stack

    _need("openvino")
    faulthandler.enable()  # as pytest and most debuggers run: a real stack to keep
    before = signal_stack()
    x = _batches()[0]
    first = get_runtime("openvino").prepare(models["base"], "cpu", "contiguous", x, tmp_path / "a")
    second = get_runtime("openvino").prepare(models["conv0.5"], "cpu", "contiguous", x, tmp_path / "b")
    first(x[:1]), second(x[:2])  # a new batch shape compiles again
    assert signal_stack() == before
    del first
    gc.collect()
    del second
    gc.collect()
    assert signal_stack() == before and (before[0] == 0 or _mapped(before[0]))
