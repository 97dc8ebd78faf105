"""Per-batch inference timing: the timed callable, paired base/case rounds, and whether the machine was quiet.

The callable from :func:`timed_callable` is what a timer (pytest-benchmark's ``pedantic`` or
:func:`measure`) wraps. On CUDA it ends with ``torch.cuda.synchronize()`` so wall-clock time covers
the kernels, not just their launch; CUDA events around the forward give GPU time beside it.

A case is timed *paired* with its base: :class:`PairedRounds` runs the base forward just before or
just after each timed case forward (the order drawn at random every round), so each round yields one
speed-up sample measured under the same machine conditions. :class:`CpuWatch` measures how much CPU
other processes used meanwhile: with as many threads as cores, every parallel region waits for a
descheduled thread, so even a small share of a core used by others inflates every round.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from vggprune.results import CONTENDED, NOISY
from vggprune.stats import paired_speedup

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
    """``fn(batch)`` under ``torch.inference_mode()``, synchronised on CUDA, with GPU times kept.

    ``fn`` is a model or any runner that maps a batch to logits (a deployment runtime's session).
    """

    def __init__(self, fn: Callable[[torch.Tensor], Any], batch: torch.Tensor) -> None:
        self.fn, self.batch = fn, batch
        self.cuda = batch.device.type == "cuda"  # tests may set it to drive the CUDA path with spies
        self.loops = 1  # consecutive forwards per call (see vggprune.evidence); a call's time / loops = per batch
        self._events: list[tuple] = []

    def __call__(self) -> Any:
        if not self.cuda:
            return self.untimed(calls=self.loops)  # on the CPU the clock around the call is the timing
        # Events go on the stream the work runs on: a runtime with a stream of its own (ONNX Runtime)
        # would otherwise be timed by events on an idle stream, i.e. host time.
        stream = getattr(self.fn, "stream", None) or torch.cuda.current_stream()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(stream):
            start.record(stream)
            with torch.inference_mode():
                for _ in range(self.loops):
                    out = self.fn(self.batch)
            end.record(stream)
        torch.cuda.synchronize()  # inside the timed call: the kernels have finished when it returns
        self._events.append((start, end))
        return out

    def untimed(self, calls: int = 1) -> Any:
        """``calls`` forwards as the timed ones run (inference mode, the same allocator regime), with no
        CUDA events: a fresh copy's first calls, which take its page faults. On CUDA it ends synchronised,
        so no work of it is still in flight when the next timed call starts its clock."""
        heap = not self.cuda and _heap_forward(self.fn)
        with torch.inference_mode(), heap_only() if heap else contextlib.nullcontext():
            for _ in range(calls):
                out = self.fn(self.batch)
        if self.cuda:
            torch.cuda.synchronize()
        return out

    def reset(self) -> None:
        """Forget GPU times (call after warm-up so only timed rounds are summarised)."""
        self._events.clear()

    def gpu_times_ms(self) -> list[float]:
        """GPU time per batch of each timed call (its events span all its loops)."""
        return [s.elapsed_time(e) / self.loops for s, e in self._events]


def _heap_forward(fn: Callable[[torch.Tensor], Any]) -> bool:
    """PyTorch modules allocate their activations with malloc on every CPU forward: time them heap-only
    (see :func:`heap_only`). ONNX Runtime and OpenVINO plan their own memory, and OpenVINO compiles on
    its first call, whose buffers must not stay in the heap. (Asked per call: blocks swap in fresh copies.)"""
    return isinstance(fn, torch.nn.Module) or getattr(fn, "heap_forward", False)


def timed_callable(fn: Callable[[torch.Tensor], Any], batch: torch.Tensor) -> TimedForward:
    return TimedForward(fn, batch)


# Timed rounds are split into this many blocks, each on fresh copies of both models (see PairedRounds).
# Measured on the quick model, conv 0.5, batch 64, 5 fresh processes each: with one block the speed-up
# moved 1.86-1.98 between processes and 1 of 5 per-process CIs held the 5-process median; with fresh
# copies per block it moved 1.92-1.95 and 5 of 5 did. The CI accounts for blocks that disagree.
BLOCKS = 5


@functools.cache
def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``, or None where there is none (musl, macOS, Windows)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        return None


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_DEFAULT_MMAP_MAX = 65536  # glibc's


def steady_allocator() -> bool:
    """Make glibc keep freed activation buffers instead of returning them to the OS (True if applied).

    glibc serves big allocations (a batch's activations) with mmap and unmaps them on free, so every
    forward page-faults its activations in again, and its *dynamic* mmap threshold makes how often
    that happens depend on the process's history. Measured on the quick model (conv 0.5, batch 64,
    5 fresh processes each): the speed-up ranged 1.87-2.93 between processes by default, 1.68-1.84
    with the threshold pinned, and the base ran 5.6-5.9 ms instead of 6.4-8.9 ms. A long-running
    server's allocator reaches that steady state too. The threshold cannot go above 32 MB; larger
    activations are kept by :func:`heap_only` around each timed forward. No-op without glibc.
    """
    mallopt = _mallopt()
    if mallopt is None:
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)  # glibc's maximum; fixed, so never adjusted again
    ok &= mallopt(_M_TRIM_THRESHOLD, 512 * 1024 * 1024)
    return bool(ok)


@contextlib.contextmanager
def heap_only() -> Iterator[None]:
    """Serve every allocation made inside from glibc's heap, where a freed block is reused, not unmapped.

    For activations above mmap's 32 MB ceiling (the seed model's first layers at batch 8 are 103 MB):
    with mmap they were page-faulted in on every forward, and the eager seed base ran 345-381 ms
    instead of 301-310 (3 processes each), which read as a larger speed-up for pruning (conv 50 %
    3.28-3.34 against 3.10-3.13). Only PyTorch forwards go inside (see ``_heap_forward``): with mmap
    off for the whole process, the heap kept every freed model copy of a seed run until the OOM
    killer stopped it at 24 GB. Timed this way a seed run peaked at 20.5 GB of anonymous memory,
    against 20.2 GB before.
    """
    mallopt = _mallopt()
    if mallopt is None:
        yield
        return
    mallopt(_M_MMAP_MAX, 0)
    try:
        yield
    finally:
        mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)


class PairedRounds:
    """The base's half of paired timing, driven by ``benchmark.pedantic(case, setup=..., teardown=...)``.

    pedantic times the case once per round and calls ``setup`` before and ``teardown`` after it,
    untimed. Each round the base is timed in one of the two, chosen at random (seeded): a fixed
    alternation was measured to bias an A/A pair by 5–10 %, because what ran just before a call
    changes its cache and allocator state. ``times()`` returns the base's seconds for the timed
    rounds, in round order, the same length as the case's.

    Where a model sits in memory changes its speed by several per cent for the whole life of a
    process, which no number of rounds averages out. With ``refresh`` (a callable that swaps in
    fresh copies of both models and runs them once), the timed rounds are split into ``blocks``
    and each block after the first runs on new copies, so the rounds, and the CI built from them,
    span several placements instead of one.
    """

    def __init__(self, base: Callable[[], Any], warmup: int, seed: int = 0,
                 clock: Callable[[], float] = time.perf_counter, rounds: int | None = None,
                 refresh: Callable[[], None] | None = None, blocks: int = BLOCKS) -> None:
        self.base, self.warmup, self.clock = base, warmup, clock
        self.rng = random.Random(seed)
        self.rounds = rounds or 0  # timed rounds the caller runs (pedantic's ``rounds``)
        self._round = -1
        self._base_first = True
        self._times: list[float] = []
        self.refresh = refresh
        per_block = -(-rounds // max(1, blocks)) if rounds else 0
        # round indices (warm-up included) at which a block starts on fresh copies, the first one too:
        # the copies the warm-up ran on are shared by every case of the run
        starts = [warmup + k * per_block for k in range(blocks) if k * per_block < (rounds or 0)]
        self._block_starts = set(starts) if refresh and per_block else set()
        self.blocks = len(self._block_starts) or 1  # contiguous chunks, as vggprune.stats.block_ids splits them

    def _time_base(self) -> None:
        t0 = self.clock()
        self.base()
        if self._round >= self.warmup:
            self._times.append((self.clock() - t0) / getattr(self.base, "loops", 1))  # per batch

    def setup(self) -> None:
        self._round += 1
        if self._round in self._block_starts:
            self.refresh()  # type: ignore[misc]
        self._base_first = self.rng.random() < 0.5
        if self._base_first:
            self._time_base()

    def teardown(self, *_args: Any, **_kwargs: Any) -> None:
        if not self._base_first:
            self._time_base()

    def times(self) -> list[float]:
        return list(self._times)


def measure(fn: Callable[[], object], rounds: int, warmup: int,
            clock: Callable[[], float] = time.perf_counter, paired: PairedRounds | None = None) -> list[float]:
    """timm-style explicit loop (warm-up, then one timed call per round) for use outside pytest;
    with ``paired``, the base is run around each call exactly as under pytest-benchmark. Times are per
    batch: a call of ``fn.loops`` forwards counts its time / loops."""
    loops = getattr(fn, "loops", 1)
    times = []
    for i in range(warmup + rounds):
        if i == warmup and isinstance(fn, TimedForward):
            fn.reset()
        if paired:
            paired.setup()
        t0 = clock()
        fn()
        if i >= warmup:
            times.append((clock() - t0) / loops)
        if paired:
            paired.teardown()
    return times


# ---------------------------------------------------------------- was the machine quiet?

def _machine_busy_s() -> float | None:
    """CPU seconds all processes have used since boot (busy jiffies of /proc/stat, steal included)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None  # not Linux: contention is not measured (recorded as null)
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _descendants_cpu_s() -> float:
    """CPU seconds of this process's live descendants (timing workers, multiprocessing's helpers)."""
    from vggprune.machine import descendants, process_table

    table = process_table()
    return sum(table[pid][1] for pid in descendants(table)) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    """CPU seconds of this process and its descendants, live or reaped: work done for this run, not
    contention (the timing workers of vggprune.workers time part of every case)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system + _descendants_cpu_s()


class CpuWatch:
    """``with CpuWatch() as w: ...`` then ``w.other_cores``: CPU used by *other* processes during the
    block, in cores (1.0 = one core busy all the time), and the 1-minute load average at its end.
    This process's descendants (the timing workers) count as its own CPU, not as contention."""

    # /proc/stat and the processes' own counts are in clock ticks: allow for rounding before blaming others
    # (one tick per count read, with up to 4 timing workers alive).
    SLACK_TICKS = 6

    def __init__(self) -> None:
        self.other_cores: float | None = None
        self.own_cores: float | None = None  # this process and its descendants, in cores
        self.loadavg_1m: float | None = None

    def __enter__(self) -> CpuWatch:
        self._t0, self._busy0, self._own0 = time.perf_counter(), _machine_busy_s(), _own_cpu_s()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._t0
        busy, own = _machine_busy_s(), _own_cpu_s() - self._own0
        if wall > 0:
            self.own_cores = round(own / wall, 4)
        if busy is not None and self._busy0 is not None and wall > 0:
            other = (busy - self._busy0) - own
            other -= self.SLACK_TICKS / os.sysconf("SC_CLK_TCK")
            self.other_cores = round(max(0.0, other) / wall, 4)
        try:
            self.loadavg_1m = round(os.getloadavg()[0], 3)
        except OSError:
            self.loadavg_1m = None

    @property
    def contended(self) -> bool:
        return self.other_cores is not None and self.other_cores > CONTENDED


# ---------------------------------------------------------------- summaries

def summarize(seconds: list[float], batch_size: int, base_seconds: list[float] | None = None,
              gpu_ms: list[float] | None = None, blocks: int = 1, run_spread: float = 0.0) -> dict:
    """The latency fields of a case record: quartiles in ms, noise (IQR/median), images/s at the
    median, and with the paired base rounds the speed-up and its 95 % CI (widened by ``run_spread``,
    see :func:`vggprune.stats.widen`)."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        return {"rounds": 0, "blocks": blocks, "latency_p50_ms": None, "latency_q1_ms": None, "latency_q3_ms": None,
                "latency_mean_ms": None, "latency_noise": None, "images_per_s": None, "noisy": False,
                "gpu_time_p50_ms": None, "base_latency_p50_ms": None, "measured_speedup": None,
                "measured_speedup_ci": None}
    q1, p50, q3 = (float(v) for v in np.percentile(ms, [25, 50, 75]))
    noise = (q3 - q1) / p50
    out = {
        "rounds": int(ms.size), "latency_p50_ms": round(p50, 4), "latency_q1_ms": round(q1, 4),
        "latency_q3_ms": round(q3, 4), "latency_mean_ms": round(float(ms.mean()), 4),
        "latency_noise": round(noise, 4), "images_per_s": round(batch_size / (p50 / 1e3), 2),
        "noisy": bool(noise > NOISY),
        "gpu_time_p50_ms": round(float(np.median(gpu_ms)), 4) if gpu_ms else None, "blocks": blocks,
        "base_latency_p50_ms": None, "measured_speedup": None, "measured_speedup_ci": None,
    }
    if base_seconds:
        speedup, (low, high) = paired_speedup(base_seconds, seconds, blocks, run_spread=run_spread)
        out.update(run_spread=run_spread, base_latency_p50_ms=round(float(np.median(base_seconds)) * 1e3, 4),
                   measured_speedup=round(speedup, 4), measured_speedup_ci=[round(low, 4), round(high, 4)])
    return out
