"""What goes wrong on a GPU, caught on a CPU: a move inside inference mode, work in flight when a clock
starts, copies left alive, TF32 passing for float32, and a provider that silently falls back."""

from __future__ import annotations

import contextlib
import gc
from pathlib import Path

import pytest
import torch

from tests.fake_cuda import FakeCuda
from tests.helpers_data import tiny_profile
from vggprune.errors import UserError
from vggprune.identity import BASE, Case
from vggprune.pipeline import Pipeline
from vggprune.pruning import model_key


@pytest.fixture
def no_moves_in_inference_mode(monkeypatch):
    """Fail on any module moved or converted (``Module._apply``) while inference mode is on.

    On CPU ``model.to("cpu")`` is a no-op, so the mistake is invisible; on CUDA the move makes every
    parameter and BN buffer an inference tensor, and the model can no longer be trained."""
    applied = torch.nn.Module._apply
    moves: list[str] = []

    def guarded(self, fn, *args, **kwargs):
        if torch.is_inference_mode_enabled():
            moves.append(type(self).__name__)
        return applied(self, fn, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "_apply", guarded)
    return moves


def test_the_train_prune_evaluate_finetune_path_moves_no_model_inside_inference_mode(no_moves_in_inference_mode,
                                                                                     tmp_path):
    pipe = Pipeline(tiny_profile(), cache_dir=tmp_path, progress=False)
    pipe.base()
    result = pipe.case(model_key("by-hand", "conv", 0.5))  # pruned, scored, fine-tuned, scored
    assert result.correct_before_finetune is not None and result.correct is not None
    assert no_moves_in_inference_mode == []


def test_a_model_scored_on_another_dtype_can_still_be_fine_tuned():
    """The real failure, with a dtype conversion standing in for ``.to("cuda")``: scoring moves the model
    first, then trains it; a move inside inference mode would make this backward pass fail."""
    from torch.utils.data import DataLoader, TensorDataset

    from vggprune.train import evaluate_images

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    loader = DataLoader(TensorDataset(torch.randn(6, 12), torch.tensor([0, 1, 2] * 2)), batch_size=3)
    evaluate_images(model.double(), [(x.double(), y) for x, y in loader], "cpu")
    model.float()
    assert not any(p.is_inference() for p in model.parameters())
    loss = model(torch.randn(2, 12)).sum()
    loss.backward()  # "Inference tensors cannot be saved for backward" if the parameters were inference tensors


def test_evaluation_scores_in_float32_not_under_autocast(monkeypatch):
    """The gates judge the precision that is timed: no float16 autocast around the scored forward."""
    from vggprune.train import evaluate_images

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(torch.is_autocast_enabled("cuda"))
            return torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), 3).float()

    evaluate_images(Probe(), [(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))], "cpu")
    assert seen == [False]


def test_fp32_means_fp32_on_cuda_and_is_recorded(monkeypatch):
    from vggprune.machine import numeric_flags, strict_fp32

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # cuDNN's default
        flags = strict_fp32()
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert flags == numeric_flags()
        assert flags["cudnn_allow_tf32"] is False and flags["cuda_matmul_allow_tf32"] is False
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_onnxruntime_cuda_runs_strict_fp32_on_a_real_stream():
    from vggprune.runtimes.onnx import OrtRuntime

    fake = FakeCuda()
    with pytest.MonkeyPatch.context() as mp:
        fake.install(mp.setattr)
        (name, options), fallback = OrtRuntime.providers("cuda", stream=0x7F42)
        (_, on_default), _ = OrtRuntime.providers("cuda", stream=fake.default.cuda_stream)
    assert name == "CUDAExecutionProvider" and fallback == "CPUExecutionProvider"
    assert options["use_tf32"] == "0"  # ORT's CUDA provider defaults to TF32 as cuDNN does
    assert options["user_compute_stream"] == str(0x7F42) and options["has_user_compute_stream"] == "1"
    assert "user_compute_stream" not in on_default  # ORT ignores a 0 pointer: the caller must pass a real stream


def test_onnxruntime_session_on_cuda_gets_its_own_stream_and_refuses_a_cpu_fallback(monkeypatch, small_model,
                                                                                     tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime

    from vggprune.runtimes.onnx import OrtRuntime, export_onnx
    from vggprune.timing.pairing import make_batch

    export_onnx(small_model, make_batch(1, 32, "cpu"), tmp_path)  # before the fake: torch.export asks torch.cuda
    FakeCuda().install(monkeypatch.setattr)
    made = []

    class Session:  # what onnxruntime-gpu builds when its CUDA libraries fail to load
        def __init__(self, path, options, providers):
            made.append(providers)

        def get_providers(self):
            return ["CPUExecutionProvider"]

        def get_outputs(self):
            raise AssertionError("a CPU-only session must not be bound to CUDA pointers")

    monkeypatch.setattr(onnxruntime, "InferenceSession", Session)
    with pytest.raises(UserError, match="instead of CUDAExecutionProvider"):
        OrtRuntime()._prepare(small_model, "cuda", "contiguous", make_batch(1, 32, "cpu"), tmp_path)
    ((_, options), _), = made
    assert int(options["user_compute_stream"]) != 0


def test_every_runtimes_first_call_ends_synchronised(monkeypatch):
    """Runtime.prepare runs the new runner once: on CUDA its kernels must be done when prepare returns."""
    from vggprune.runtimes.base import Runner, Runtime

    cuda = FakeCuda().install(monkeypatch.setattr)

    class Launching(Runtime):
        name = "launching"
        exports = False

        def _prepare(self, model, device, memory_format, example_batch, artifact_dir):
            return Runner(self.name, device, lambda batch: (cuda.launch(), batch)[1], files=[], size_bytes=0)

    monkeypatch.setattr(Runner, "adapt", lambda self, batch: batch)  # CPU tensors stand in for device ones
    runner = Launching().prepare(torch.nn.Identity(), "cuda", "contiguous", torch.zeros(1, 3, 32, 32))
    assert runner is not None and cuda.log == ["forward", "synchronize"] and not cuda.in_flight


def test_openvino_on_cuda_says_it_is_cpu_only_before_asking_to_install_it(monkeypatch):
    import sys

    from vggprune.runtimes import get_runtime

    monkeypatch.setitem(sys.modules, "openvino", None)  # not installed
    reason = get_runtime("openvino").unavailable("cuda")
    assert "cpu only" in reason and "pip install" not in reason


def _live_vgg_copies() -> int:
    """VGG11 objects alive, of those made since :func:`_new_objects_only` began (after a full collection)."""
    from vggprune.models import VGG11

    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, VGG11))


@contextlib.contextmanager
def _new_objects_only():
    """Leave what exists now out of every collection and count (``gc.freeze``): in a test session's heap each
    full collection took 0.5 s, and the copy counts collect after every copy made."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _peak_copies_while_timed(harness, case: Case) -> tuple[int, list[int]]:
    """Time ``case`` (10 rounds in 5 blocks): the most VGG11 copies alive at once beyond those alive before,
    counted after every copy the store makes, and the count between blocks."""
    from vggprune.timing.pairing import measure

    before = _live_vgg_copies()
    counts, make, between = [], harness.store.make, []

    def counted_make(*args, **kwargs):
        made = make(*args, **kwargs)
        counts.append(_live_vgg_copies() - before)
        return made

    harness.store.make = counted_make
    from vggprune.timing.evidence import Evidence

    base, forward = harness.timing.forwards(case)
    paired = harness.timing.pairing(case, base, forward, Evidence(loops=1, rounds=10, pilot_sd=None))
    refresh = paired.refresh

    def counted_refresh():
        refresh()
        between.append(_live_vgg_copies() - before)

    paired.refresh = counted_refresh
    measure(forward, rounds=10, warmup=0, paired=paired)
    del harness.store.make
    assert paired.blocks == 5 and len(counts) == 2 + 4 * 2  # the case's pair, then a new pair per later block
    return max(counts), between


def _tiny_harness(cache):
    """A CPU harness, one thread, 10 rounds, on the tiny profile and the repository's gate files."""
    import dataclasses

    from vggprune.harness import Harness
    from vggprune.settings import resolve_settings

    bench = Path(__file__).resolve().parent.parent / "bench"
    settings = resolve_settings({"devices": "cpu", "threads": "1", "latency_rounds": "10"}, False)
    settings = dataclasses.replace(settings, thresholds_file=bench / "thresholds.json",
                                   expected_params_file=bench / "expected_params.json")
    return Harness(settings, pipeline=Pipeline(tiny_profile(), cache_dir=cache, progress=False))


@pytest.fixture(scope="module")
def trained_cache(tmp_path_factory):
    """One checkpoint cache for the copy-count cases: the tiny base and its pruned case train once."""
    return tmp_path_factory.mktemp("copies-cache")


@pytest.mark.parametrize("runtime", ["eager", "fused"])
def test_a_case_holds_at_most_two_generations_of_its_pair_and_frees_them_when_it_ends(runtime, trained_cache):
    """Each block of rounds swaps in fresh copies; earlier ones must not pile up (5 blocks once held
    10 copies of a 532 MB model at once), and nothing a case made may outlive it."""
    harness = _tiny_harness(trained_cache)
    with _new_objects_only():
        for key in (BASE, model_key("by-hand", "conv", 0.5)):
            harness.prepared(key)  # the base and the pruned model, as trained, stay on CPU
            trained = _live_vgg_copies()
            assert trained >= 1  # the model just built is counted
            peak, between = _peak_copies_while_timed(harness, Case("quick", key, "cpu", 2, runtime))
            assert peak <= 3, f"{peak} copies alive at once (the pair and one replacement: 3)"
            assert between == [2] * 4  # one generation held from block to block
            harness.end_case()
            assert harness.store.alive() == 0
            assert _live_vgg_copies() == trained


def test_a_case_that_cannot_fit_is_refused_before_any_copy_is_made(monkeypatch, tmp_path):
    from vggprune import store as store_module
    from vggprune.store import ModelStore

    store = ModelStore(Pipeline(tiny_profile(), cache_dir=tmp_path, progress=False), 32, "contiguous")
    case = Case("quick", BASE, "cpu", 64)
    need = store.estimate_bytes(case)
    base_bytes = store.base.nbytes
    assert need >= 4 * base_bytes  # two generations of the (base, twin) pair
    monkeypatch.setattr(store_module, "available_memory", lambda: need - 1)
    reason = store.refusal(case)
    assert reason and case.id in reason and "GiB" in reason and store.alive() == 0
    monkeypatch.setattr(store_module, "available_memory", lambda: need + 1)
    assert store.refusal(case) is None


def test_gpu_memory_check_uses_what_the_device_has_free(monkeypatch, tmp_path):
    from vggprune.store import ModelStore

    store = ModelStore(Pipeline(tiny_profile(), cache_dir=tmp_path, progress=False), 32, "contiguous")
    case = Case("quick", BASE, "cuda", 8)
    need = store.estimate_bytes(case)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (need // 2, 16 * 2**30))
    assert "GPU memory free" in store.refusal(case)


def _mapping(address: int) -> tuple[str, int, int]:
    """(file, resident kB, size kB) of this process's mapping that holds ``address``."""
    found, path, size = False, "", 0
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and not head[0].endswith(":"):
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                found, path, size = lo <= address < hi, head[5] if len(head) > 5 else "", (hi - lo) // 1024
            elif found and head[0] == "Rss:":
                return path, int(head[1]), size
    raise LookupError(hex(address))


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads /proc/self/smaps (Linux)")
def test_a_case_in_a_runtime_of_exported_files_leaves_the_trained_weights_on_disk(tmp_path):
    """Before an ONNX Runtime or OpenVINO case, the store's models are mapped from a saved copy and not
    read: the same weights and fingerprint, none of the large tensors resident. Eager cases keep them."""
    from vggprune.runtimes import get_runtime
    from vggprune.store import ModelStore
    from vggprune.timing.pairing import make_batch

    store = ModelStore(Pipeline(tiny_profile(), cache_dir=tmp_path, progress=False), 32, "contiguous")
    model = store.base.model
    weights, digest = {k: v.clone() for k, v in model.state_dict().items()}, store.base.weights_sha256
    x = make_batch(4, 32, "cpu")
    with torch.inference_mode():
        logits = model(x)
    store.page_out(get_runtime("eager"))
    assert not _mapping(model.fc_layers()[0].weight.data_ptr())[0].startswith("/")  # held in memory, not mapped

    store.page_out(get_runtime("onnxruntime"))
    state = model.state_dict()
    large = [t for t in state.values() if t.numel() * t.element_size() >= 256 * 1024]
    assert large
    for t in large:  # looked at before anything reads them
        path, resident_kb, _ = _mapping(t.data_ptr())
        assert path.endswith("mapped/model.pt")
        assert resident_kb * 1024 < t.numel() * t.element_size() / 4
    assert store.base.weights_sha256 == digest  # remembered, not re-read: still not resident
    assert all(t.numel() * t.element_size() > _mapping(t.data_ptr())[1] * 1024 * 4 for t in large)
    assert all(torch.equal(state[k], weights[k]) for k in weights)
    with torch.inference_mode():
        assert torch.equal(model(x), logits)


def test_a_runtime_slow_to_settle_runs_its_new_pair_in_turn_before_a_block_is_timed(trained_cache, monkeypatch):
    """ONNX Runtime's new sessions run their first paired rounds slower however long each was warmed alone,
    so after a block's fresh copies the pair runs ``settle_rounds`` untimed rounds in turn, a round's loops each."""
    from vggprune.runtimes.pytorch import EagerRuntime
    from vggprune.timing.evidence import Evidence
    from vggprune.timing.pairing import TimedForward

    harness = _tiny_harness(trained_cache)
    monkeypatch.setattr(EagerRuntime, "settle_rounds", 3)
    log, untimed = [], TimedForward.untimed

    def logged(self, calls: int = 1):
        log.append((self, calls))
        return untimed(self, calls)

    monkeypatch.setattr(TimedForward, "untimed", logged)
    case = Case("quick", model_key("by-hand", "conv", 0.5), "cpu", 2)
    base, forward = harness.timing.forwards(case)
    base.loops = forward.loops = 4  # as the case's evidence sized them
    paired = harness.timing.pairing(case, base, forward, Evidence(loops=4, rounds=10, pilot_sd=None))
    log.clear()
    paired.refresh()
    settled = [(f, n) for f, n in log if f in (base, forward)]
    assert settled == [(base, 4), (forward, 4), (forward, 4), (base, 4), (base, 4), (forward, 4)]
    harness.end_case()
