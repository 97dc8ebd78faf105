"""Per-batch inference timing: the timed callable, CUDA-event GPU time, and percentile summaries.

The callable returned by :func:`timed_callable` is what a timer (pytest-benchmark's ``pedantic`` or
:func:`measure`) wraps. On CUDA it ends with ``torch.cuda.synchronize()`` so wall-clock time covers
the kernels, not just their launch; CUDA events around the forward give GPU time beside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def make_batch(batch_size: int, image_size: int, device: str | torch.device, dtype: torch.dtype = torch.float32,
               memory_format: str = "contiguous", seed: int = 0) -> torch.Tensor:
    """A fixed random batch in the same memory layout as the model being timed."""
    gen = torch.Generator().manual_seed(seed)
    batch = torch.randn(batch_size, 3, image_size, image_size, generator=gen, dtype=dtype).to(device)
    return batch.contiguous(memory_format=MEMORY_FORMATS[memory_format])


def prepare_for_inference(model: torch.nn.Module, device: str, memory_format: str) -> torch.nn.Module:
    """An eval-mode copy on ``device`` in ``memory_format``; the original is left as it was."""
    import copy

    return copy.deepcopy(model).to(device=device, memory_format=MEMORY_FORMATS[memory_format]).eval()


class TimedForward:
    """``model(batch)`` under ``torch.inference_mode()``, synchronised on CUDA, with GPU times kept."""

    def __init__(self, model: torch.nn.Module, batch: torch.Tensor) -> None:
        self.model, self.batch = model, batch
        self.cuda = batch.device.type == "cuda"  # tests may set it to drive the CUDA path with spies
        self._events: list[tuple] = []

    def __call__(self) -> torch.Tensor:
        if not self.cuda:
            with torch.inference_mode():
                return self.model(self.batch)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        with torch.inference_mode():
            out = self.model(self.batch)
        end.record()
        torch.cuda.synchronize()  # inside the timed call: the kernels have finished when it returns
        self._events.append((start, end))
        return out

    def reset(self) -> None:
        """Forget GPU times (call after warm-up so only timed rounds are summarised)."""
        self._events.clear()

    def gpu_times_ms(self) -> list[float]:
        return [s.elapsed_time(e) for s, e in self._events]


def timed_callable(model: torch.nn.Module, batch: torch.Tensor) -> TimedForward:
    return TimedForward(model, batch)


def summarize(seconds: list[float], batch_size: int, gpu_ms: list[float] | None = None) -> dict:
    """Percentiles of per-batch wall time in ms, and images/s at the median."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        return {"latency_p50_ms": None, "latency_p90_ms": None, "latency_p99_ms": None,
                "latency_mean_ms": None, "images_per_s": None, "rounds": 0, "gpu_time_p50_ms": None}
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "latency_p50_ms": round(float(p50), 4), "latency_p90_ms": round(float(p90), 4),
        "latency_p99_ms": round(float(p99), 4), "latency_mean_ms": round(float(ms.mean()), 4),
        "images_per_s": round(batch_size / (p50 / 1e3), 2), "rounds": int(ms.size),
        "gpu_time_p50_ms": round(float(np.median(gpu_ms)), 4) if gpu_ms else None,
    }


def measure(fn: Callable[[], object], rounds: int, warmup: int,
            clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """timm-style explicit loop (warm-up, then one timed call per round) for use outside pytest."""
    for _ in range(warmup):
        fn()
    if isinstance(fn, TimedForward):
        fn.reset()
    times = []
    for _ in range(rounds):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return times
