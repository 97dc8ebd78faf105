"""Per-batch inference timing: the timed callable and paired base/case rounds.

The callable from :func:`timed_callable` is what a timer (pytest-benchmark's ``pedantic`` or
:func:`measure`) wraps. On CUDA it ends with ``torch.cuda.synchronize()`` so wall-clock time covers
the kernels, not just their launch; CUDA events around the forward give GPU time beside it.

A case is timed *paired* with its base: :class:`PairedRounds` runs the base forward just before or
just after each timed case forward (the order drawn at random every round), so each round yields one
speed-up sample measured under the same machine conditions.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from typing import Any

import torch

from vggprune.stats import chunk_size
from vggprune.timing.allocator import heap_only

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
        self.loops = 1  # forwards per call (vggprune.timing.evidence); a call's time / loops = per batch
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


# Timed rounds are split into this many blocks, each on fresh copies of both models (see PairedRounds);
# the interval then spans several memory placements (docs/measuring.md has the figures).
BLOCKS = 5


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
        per_block = chunk_size(rounds, blocks) if rounds else 0
        # round indices (warm-up included) at which a block after the first starts on fresh copies; the
        # first block runs on the copies the caller made for this case, which the warm-up ran
        starts = [warmup + k * per_block for k in range(blocks) if k * per_block < (rounds or 0)]
        self._block_starts = set(starts[1:]) if refresh and per_block else set()
        # contiguous chunks, as vggprune.stats.block_ids splits them
        self.blocks = len(starts) if refresh and per_block else 1

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
