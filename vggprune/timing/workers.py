"""Paired timing blocks in other processes: the process is the unit that varies (pyperf's approach).

A process keeps a speed character for its whole life (where its heap, weights and code land, which
kernels oneDNN plans), and no resampling of one process's rounds can see it. Measured on one 2-core
VM, quick profile, 5 same-code runs each: with every round in the pytest process, the runs' 95 %
intervals held the 5-run median speed-up in 67.5 % of (case, run) pairs one hour and 92.5-96 % the
next. With ``--timing-processes N`` the harness times the first block of each CPU case's rounds
itself and every other block in a worker process of its own, started once per run (spawned: a fresh
interpreter, not a fork of this one), so the bootstrap over blocks behind each CI resamples processes.
It is opt-in: each worker JIT-compiles oneDNN kernels for every new model, about 28 s more per warm
quick-profile run with N = 5.

Workers never time at the same time as each other or as the pytest process: the caller waits for each
block. They are started, and their imports finished, before the first block is timed. Scripts that use
:class:`Workers` need the usual ``if __name__ == "__main__":`` guard (spawned children import ``__main__``).
"""

from __future__ import annotations

import io
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from vggprune.stats import chunk_size
from vggprune.timing.allocator import steady_allocator
from vggprune.timing.pairing import PairedRounds, TimedForward, make_batch, measure


def deployable(model: torch.nn.Module, runtime: str, device: str, memory_format: str, image_size: int,
               artifact_dir: Path | None):
    """A fresh copy of ``model`` ready to time: a new runner of ``runtime`` (on its already exported files)."""
    from vggprune.runtimes import get_runtime

    return get_runtime(runtime).prepare(model, device, memory_format, make_batch(1, image_size, "cpu"), artifact_dir)


T = TypeVar("T")


def in_turn(makers: Sequence[Callable[[], T]], turn: int) -> list[T]:
    """Call every maker once, starting with maker ``turn`` (mod their number) and going round; the
    results in the makers' order. Blocks pass consecutive turns, so each copy is made first in half of
    them (3 of 5 and 2 of 5).

    Which of two fresh copies is made (and first run) first biases the pair like the rounds' order does.
    The base's A/A pair at batch 1 read 1.035-1.068 in eager and 1.090-1.168 in ONNX Runtime (4 runs)
    with the base always made first, and 0.936-0.953 in ONNX Runtime with a random draw per block that
    happened to put the twin first in most blocks.
    """
    n = len(makers)
    made: dict[int, T] = {}
    for j in range(n):
        i = (turn + j) % n
        made[i] = makers[i]()
    return [made[i] for i in range(n)]


def model_bytes(model: torch.nn.Module) -> bytes:
    """The model as checkpoint bytes (spec + state_dict). Sent as plain bytes because pickling a module
    for another process moves its tensors into shared memory in place, and the pytest process's own
    copies then timed up to 25 % slower (measured: conv 0.5, batch 64, 1.5x instead of 1.95x)."""
    from vggprune.checkpoint import model_payload

    buf = io.BytesIO()
    torch.save(model_payload(model), buf)
    return buf.getvalue()


def model_from_bytes(data: bytes) -> torch.nn.Module:
    from vggprune.checkpoint import model_from_payload

    return model_from_payload(torch.load(io.BytesIO(data), weights_only=True), "timing block")


def timed_pair(base, case, batch: torch.Tensor) -> tuple[TimedForward, TimedForward]:
    """(base, case) timed callables (runners) on one batch, in the layout the runtime takes without a copy."""
    batch = case.adapt(batch)
    return TimedForward(base, batch), TimedForward(case, batch)


@dataclass(frozen=True)
class Block:
    """One block of a case's paired rounds, everything a worker needs to time it (picklable)."""

    base: bytes  # model_bytes()
    case: bytes
    runtime: str
    device: str
    memory_format: str
    image_size: int
    batch_size: int
    base_artifacts: Path | None
    case_artifacts: Path | None
    warmup: int
    rounds: int
    seed: int
    turn: int = 0  # which copy is made first (see in_turn)
    loops: int = 1  # forwards per round, as the case was sized (vggprune.timing.evidence)


def time_block(block: Block) -> tuple[list[float], list[float]]:
    """(case seconds, base seconds) of ``block.rounds`` paired rounds, after ``block.warmup``."""
    def maker(payload: bytes, artifacts: Path | None):
        return lambda: deployable(model_from_bytes(payload), block.runtime, block.device, block.memory_format,
                                  block.image_size, artifacts)

    base, case = in_turn([maker(block.base, block.base_artifacts), maker(block.case, block.case_artifacts)],
                         block.turn)
    base_forward, case_forward = timed_pair(base, case, make_batch(
        block.batch_size, block.image_size, block.device, memory_format=block.memory_format))
    base_forward.loops = case_forward.loops = block.loops
    paired = PairedRounds(base_forward, warmup=block.warmup, seed=block.seed)
    seconds = measure(case_forward, block.rounds, block.warmup, paired=paired)
    return seconds, paired.times()


def _start(threads: int, runtimes: tuple[str, ...]) -> None:
    torch.set_num_threads(threads)  # the same threads as the pytest process, and the same allocator
    steady_allocator()
    import importlib

    from vggprune.runtimes import get_runtime

    for name in runtimes:  # imported now, not inside the first case's timing window
        for module in get_runtime(name).modules:
            try:
                importlib.import_module(module)
            except ImportError:
                pass  # such cases are skipped, with the reason, before anything is sent here


def _ready() -> int:
    return os.getpid()


class Workers:
    """``count`` single-process pools, one per worker, so that block k always runs in worker k."""

    def __init__(self, count: int, threads: int, runtimes: tuple[str, ...] = ()) -> None:
        self.count, self.threads, self.runtimes = count, threads, tuple(runtimes)
        self._pools: list[ProcessPoolExecutor] = []
        self.pids: list[int] = []

    def start(self) -> None:
        if self._pools or not self.count:
            return
        context = multiprocessing.get_context("spawn")
        self._pools = [ProcessPoolExecutor(1, mp_context=context, initializer=_start,
                                           initargs=(self.threads, self.runtimes))
                       for _ in range(self.count)]
        futures = [pool.submit(_ready) for pool in self._pools]  # all start together, before any timing
        self.pids = [f.result() for f in futures]

    def time(self, blocks: list[Block]) -> list[tuple[list[float], list[float]]]:
        """Each block in its own worker, one after another (never two timing at once)."""
        self.start()
        return [self._pools[i % self.count].submit(time_block, block).result() for i, block in enumerate(blocks)]

    def close(self) -> None:
        for pool in self._pools:
            pool.shutdown(wait=True, cancel_futures=True)
        self._pools, self.pids = [], []


def split_rounds(rounds: int, processes: int) -> list[int]:
    """Rounds per process, as vggprune.stats.block_ids will split them back into blocks: equal
    contiguous chunks, the last one shorter, none empty."""
    per = chunk_size(rounds, processes)
    return [min(per, rounds - start) for start in range(0, rounds, per)]
