"""The CUDA paths on a real GPU: ``pytest -m cuda tests/test_cuda.py`` (a few minutes on one GPU).

Each test names the path it proves, so a first run on a GPU says exactly which one failed. Without a
GPU every test skips in one line. The same mechanisms are checked on CPU with a fake device in
tests/test_device.py; these run them for real.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers_data import tiny_profile

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here (torch.cuda.is_available())")]
REPO = Path(__file__).resolve().parent.parent


def test_fine_tune_after_evaluation_on_cuda(tmp_path):
    """Scoring moves the model to the GPU; the fine-tune that follows must still be able to train it."""
    from vggprune.pipeline import Pipeline
    from vggprune.pruning import model_key

    pipe = Pipeline(tiny_profile(), cache_dir=tmp_path, progress=False, device="cuda")
    result = pipe.case(model_key("by-hand", "conv", 0.5))
    assert result.correct is not None and result.correct_before_finetune is not None
    assert next(result.model.parameters()).device.type == "cpu"  # handed back on CPU


def test_a_checkpoint_saved_from_gpu_tensors_loads_on_cpu(tmp_path):
    from vggprune import build_vgg11
    from vggprune.checkpoint import load_model, save_model

    model = build_vgg11("small", num_classes=10).cuda()
    path = save_model(model, tmp_path / "gpu.pt")
    loaded, _ = load_model(path)
    assert next(loaded.parameters()).device.type == "cpu"
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a.cpu(), b)


def test_events_and_sync_time_the_kernels():
    from vggprune.timing.pairing import TimedForward, make_batch, measure

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3), torch.nn.ReLU()).cuda().eval()
    forward = TimedForward(model, make_batch(32, 224, "cuda"))
    wall = measure(forward, rounds=5, warmup=2)
    gpu = forward.gpu_times_ms()
    assert len(gpu) == 5 and all(g > 0 for g in gpu)
    # wall time includes the kernels (the sync is inside the timed call): never shorter than GPU time
    assert all(w * 1e3 >= 0.9 * g for w, g in zip(wall, gpu))


@pytest.mark.parametrize("runtime", ["eager", "fused", "onnxruntime", "compile"])
def test_every_runtime_on_cuda_matches_eager_on_the_same_device(runtime, tmp_path):
    from tests.conftest import randomize_
    from vggprune import build_vgg11
    from vggprune.runtimes import get_runtime, verify
    from vggprune.timing.pairing import make_batch

    rt = get_runtime(runtime)
    reason = rt.unavailable("cuda")
    if reason:
        pytest.skip(reason)
    model = randomize_(build_vgg11("small", num_classes=10))
    batches = [make_batch(16, 32, "cpu", seed=s) for s in range(3)]
    reference_model = model.cuda()  # eager on the GPU is the reference here, not CPU eager
    with torch.inference_mode():
        reference = [reference_model(x.cuda()).float().cpu() for x in batches]
    runner = rt.prepare(model.cpu(), "cuda", "channels_last", batches[0], tmp_path)
    if runtime == "onnxruntime":
        assert runner.details["providers"][0] == "CUDAExecutionProvider"
    check = verify(runner, None, batches, reference)
    assert check.failure() is None, check.failure()


def _bench(tmp_path: Path, *args: str) -> dict:
    import subprocess
    import sys

    out = tmp_path / "run.json"
    subprocess.run([sys.executable, "-m", "pytest", "bench/", "-q", "-p", "no:cacheprovider",
                    f"--benchmark-json={out}", *args], cwd=REPO, check=True,
                   env={**__import__("os").environ, "VGGPRUNE_CACHE_DIR": str(tmp_path / "cache")})
    return json.loads(out.read_text())


def test_quick_harness_on_cpu_and_cuda_holds_the_a_a_interval_and_reports_gpu_vs_cpu(tmp_path):

    run = _bench(tmp_path, "--devices", "cpu,cuda", "--rates", "0,0.5", "--scopes", "conv", "--methods", "by-hand",
                 "--runtimes", "eager", "--batch-sizes", "64")
    cases = {b["extra_info"]["case_id"]: b["extra_info"] for b in run["benchmarks"]}
    aa = cases["quick-base-r0.00-cuda-b64"]
    low, high = aa["measured_speedup_ci"]
    assert low <= 1.0 <= high, f"the GPU A/A pair reads {aa['measured_speedup']} ({low}-{high})"
    assert aa["gpu_time_p50_ms"] and aa["gpu_peak_mem_mb"] and run["machine_info"]["vggprune"]["gpu"]["name"]
    assert run["machine_info"]["vggprune"]["gpu"]["cudnn_allow_tf32"] is False
    from vggprune.cli import main

    assert main(["report", str(tmp_path / "run.json"), "--out", str(tmp_path / "report")]) == 0
    assert "cuda vs cpu" in (tmp_path / "report" / "summary.md").read_text()  # the GPU-vs-CPU table


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["eager", "onnxruntime"])
def test_seed_a_a_at_batch_8_fits_in_4_gb_of_device_memory(runtime, tmp_path):
    run = _bench(tmp_path, "--profile", "seed", "--devices", "cuda", "--rates", "0", "--runtimes", runtime,
                 "--batch-sizes", "8", "--latency-rounds", "10")
    (info,) = [b["extra_info"] for b in run["benchmarks"]]
    print(f"seed A/A {runtime} on {info['device_name']}: peak GPU memory {info['gpu_peak_mem_mb']:.0f} MB")
    if runtime == "eager":  # torch's allocator sees eager's copies; ORT's arena is its own
        assert info["gpu_peak_mem_mb"] <= 4096
