"""Timing logic: the CUDA path synchronises inside the timed call; summaries are honest percentiles."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.fake_cuda import FakeCuda, FakeStream
from vggprune.results.summary import summarize
from vggprune.stats import block_ids
from vggprune.timing.pairing import PairedRounds, make_batch, measure, prepare_for_inference, timed_callable
from vggprune.timing.watch import CpuWatch


def _on_device(cuda: FakeCuda, model: torch.nn.Module, batch: torch.Tensor):
    """A TimedForward whose forwards behave as on a GPU: they queue work and return before it is done."""
    model.register_forward_hook(lambda *a: cuda.launch())
    forward = timed_callable(model, batch)
    forward.cuda = True  # no GPU here: drive the CUDA branch with CPU tensors and the fake device
    return forward


def test_cuda_path_synchronizes_inside_the_timed_call(monkeypatch):
    cuda = FakeCuda().install(monkeypatch.setattr)
    forward = _on_device(cuda, torch.nn.Linear(4, 2), torch.zeros(3, 4))
    ticks = iter(range(100))
    times = measure(lambda: (cuda.log.append("timer start"), forward(), cuda.log.append("timer stop")),
                    rounds=2, warmup=1, clock=lambda: next(ticks))
    # Per call: start event, forward, end event (on torch's stream), then synchronize, before the timer stops.
    one_call = ["timer start", ("record", 0), "forward", ("record", 0), "synchronize", "timer stop"]
    assert cuda.log == one_call * 3
    assert times == [1, 1]
    assert forward.gpu_times_ms() == [1.5, 1.5, 1.5]


def test_an_untimed_call_leaves_no_device_work_in_flight(monkeypatch):
    """A fresh copy's first call runs untimed; if it returned with its kernels still running, the next
    timed round (of one side of the pair only) would absorb the rest of them."""
    cuda = FakeCuda().install(monkeypatch.setattr)
    forward = _on_device(cuda, torch.nn.Linear(4, 2), torch.zeros(3, 4))
    forward.untimed()
    assert not cuda.in_flight
    forward(), forward()
    forward.gpu_times_ms()
    assert cuda.started_in_flight == 0


def test_events_time_the_stream_the_runtime_runs_on(monkeypatch):
    """ONNX Runtime runs on a stream of its own: events on torch's idle default stream would time the host."""
    cuda = FakeCuda().install(monkeypatch.setattr)
    ran_on = []

    class Runner:
        stream = FakeStream()

        def __call__(self, batch):
            ran_on.append(torch.cuda.current_stream().cuda_stream)
            cuda.launch()
            return batch

    forward = timed_callable(Runner(), torch.zeros(1, 4))
    forward.cuda = True
    forward()
    assert Runner.stream.cuda_stream != 0
    assert ran_on == [Runner.stream.cuda_stream]
    assert [e for e in cuda.log if e != "forward"] == [("record", Runner.stream.cuda_stream)] * 2 + ["synchronize"]


def test_cpu_path_never_touches_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: pytest.fail("synchronize on CPU"))
    forward = timed_callable(torch.nn.Linear(4, 2), torch.zeros(3, 4))
    out = forward()
    assert out.shape == (3, 2) and out.is_inference() and forward.gpu_times_ms() == []


def test_measure_discards_warmup_gpu_times(monkeypatch):
    cuda = FakeCuda().install(monkeypatch.setattr)
    forward = _on_device(cuda, torch.nn.Linear(4, 2), torch.zeros(1, 4))
    measure(forward, rounds=3, warmup=2)
    assert len(forward.gpu_times_ms()) == 3


def test_summarize_quartiles_noise_and_throughput():
    seconds = [i / 1000 for i in range(1, 101)]  # 1 … 100 ms
    s = summarize(seconds, batch_size=8, gpu_ms=[1.0, 3.0, 2.0])
    q1, p50, q3 = np.percentile(np.arange(1, 101), [25, 50, 75])
    assert (s["latency_q1_ms"], s["latency_p50_ms"], s["latency_q3_ms"]) == pytest.approx((q1, p50, q3))
    assert s["latency_noise"] == pytest.approx((q3 - q1) / p50, abs=1e-4) and s["noisy"]
    assert s["images_per_s"] == pytest.approx(8 / 0.0505, rel=1e-4)
    assert s["gpu_time_p50_ms"] == 2.0 and s["rounds"] == 100
    assert s["measured_speedup"] is None  # no paired base rounds
    assert summarize([], 8)["latency_p50_ms"] is None


def test_summarize_speedup_is_the_median_of_paired_ratios_with_its_ci():
    case = [0.010, 0.011, 0.009, 0.010, 0.030, 0.010, 0.010, 0.012, 0.010, 0.010]  # one stalled round
    base = [0.030, 0.033, 0.027, 0.030, 0.090, 0.030, 0.029, 0.036, 0.031, 0.030]  # stalled with it
    s = summarize(case, 1, base)
    ratios = np.sort(np.asarray(base) / np.asarray(case))
    assert s["measured_speedup"] == pytest.approx(np.median(ratios), abs=1e-4)
    # n = 10: the 2nd and 9th order statistics cover the median with 97.9 % (binomial), the
    # tightest pair that reaches 95 %
    assert s["measured_speedup_ci"] == pytest.approx([ratios[1], ratios[8]], abs=1e-4)
    assert not s["noisy"] or s["latency_noise"] > 0.10


class Clock:
    """A fake clock that advances by what each call 'costs', so paired times are exact."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_paired_rounds_time_the_base_once_per_timed_round_in_shuffled_order():
    clock, log = Clock(), []

    def base():
        log.append("base")
        clock.now += 3.0

    def case():
        log.append("case")
        clock.now += 1.0

    paired = PairedRounds(base, warmup=2, seed=7, clock=clock)
    times = measure(case, rounds=40, warmup=2, clock=clock, paired=paired)
    assert times == [1.0] * 40 and paired.times() == [3.0] * 40
    rounds = [tuple(log[i:i + 2]) for i in range(0, len(log), 2)]
    assert len(rounds) == 42 and all(sorted(r) == ["base", "case"] for r in rounds)
    first = [r[0] for r in rounds]
    # shuffled, not alternating: both orders occur, and not strictly in turn
    assert 10 < first.count("base") < 32
    assert any(a == b for a, b in zip(first, first[1:]))
    # the same seed draws the same order (reruns are comparable)
    log2: list[str] = []
    again = PairedRounds(lambda: log2.append("base"), warmup=2, seed=7, clock=clock)
    measure(lambda: log2.append("case"), rounds=40, warmup=2, clock=clock, paired=again)
    assert log2 == log


BURN = "import time\nt=time.time()\nwhile time.time()-t<3: pass"


def _watch_while(start_burner) -> tuple[CpuWatch, CpuWatch]:
    """A quiet watch, then one while ``start_burner()``'s process spins a core (it returns a kill function)."""
    import time

    with CpuWatch() as quiet:
        time.sleep(0.3)
    stop = start_burner()
    try:
        time.sleep(0.3)  # let it start spinning
        with CpuWatch() as watch:
            time.sleep(0.8)
    finally:
        stop()
    return quiet, watch


def test_cpu_watch_sees_another_process_use_a_core():
    import os
    import signal
    import subprocess
    import sys

    def unrelated():  # started through a shell that exits: not a descendant of this process
        out = subprocess.run(["sh", "-c", f'"{sys.executable}" -c "$0" >/dev/null 2>&1 & echo $!', BURN],
                             capture_output=True, text=True, check=True).stdout
        pid = int(out.split()[0])
        return lambda: os.kill(pid, signal.SIGKILL)

    quiet, busy = _watch_while(unrelated)
    assert busy.other_cores is not None and busy.other_cores > 0.5 and busy.contended
    assert quiet.other_cores is not None and busy.other_cores > quiet.other_cores
    assert busy.loadavg_1m is not None and busy.loadavg_1m >= 0


def test_cpu_watch_counts_its_own_worker_processes_as_its_own():
    import subprocess
    import sys

    def child():  # like a timing worker: a process this one started
        proc = subprocess.Popen([sys.executable, "-c", BURN])
        return lambda: (proc.kill(), proc.wait())

    quiet, watch = _watch_while(child)
    # The child's core is this process's own CPU, not contention, whatever else the machine is doing:
    # counted as other, it would add its whole core to what the quiet window saw.
    assert watch.own_cores is not None and watch.own_cores > 0.2  # a share of a core even when others compete
    assert watch.other_cores is not None and watch.other_cores < quiet.other_cores + 0.4


def test_make_batch_is_fixed_per_seed_and_in_the_asked_layout():
    a, b = make_batch(2, 32, "cpu"), make_batch(2, 32, "cpu", memory_format="channels_last")
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b)
    assert a.is_contiguous() and b.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous()


def test_prepare_for_inference_copies_into_the_layout():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)).train()
    ready = prepare_for_inference(model, "cpu", "channels_last")
    assert ready is not model and not ready.training and model.training
    assert ready[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model[0].weight.is_contiguous()


def test_paired_rounds_run_each_block_on_fresh_models():
    clock, events = Clock(), []
    paired = PairedRounds(lambda: events.append("base"), warmup=2, seed=1, clock=clock, rounds=9,
                          refresh=lambda: events.append("refresh"), blocks=3)
    measure(lambda: events.append("case"), rounds=9, warmup=2, clock=clock, paired=paired)
    # 2 warm-up rounds, then 3 blocks of 3 timed rounds, each block after the first on fresh copies
    rounds, current = [], []
    for e in events:
        if e == "refresh":
            rounds.append("refresh")
            continue
        current.append(e)
        if len(current) == 2:
            rounds.append("round")
            current = []
    assert rounds == ["round"] * 2 + ["round"] * 3 + (["refresh"] + ["round"] * 3) * 2
    assert len(paired.times()) == 9 and paired.blocks == 3
    # the blocks are the contiguous chunks the statistics split the rounds into
    assert block_ids(9, paired.blocks).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    short = PairedRounds(lambda: None, warmup=0, rounds=7, refresh=lambda: None, blocks=5)
    assert short.blocks == 4 and block_ids(7, short.blocks).tolist() == [0, 0, 1, 1, 2, 2, 3]
    assert PairedRounds(lambda: None, warmup=0, rounds=7).blocks == 1  # no refresh: one block


_FAULTS = """
import resource, sys, torch
from vggprune.timing.allocator import heap_only, steady_allocator
assert steady_allocator()

def faults(rounds, inside, mb):
    counts = []
    for _ in range(rounds):  # an activation of `mb` MB, made, written and freed, as in every forward
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        if inside:
            with heap_only():
                t = torch.ones(mb * 2**18)
                del t
        else:
            t = torch.ones(mb * 2**18)
            del t
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return min(counts[1:])  # the heap can take a few rounds to settle where the block goes

print(faults(4, False, 64), faults(12, True, 64))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts glibc page faults: Linux only")
def test_heap_only_reuses_large_blocks_instead_of_faulting_them_in_again():
    import ctypes.util

    if not ctypes.util.find_library("c"):
        pytest.skip("no C library to configure here")
    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before, inside = map(int, out.stdout.split())
    # 64 MB is 16,384 pages of 4 KiB: above glibc's 32 MB ceiling each block is mmapped and faulted in
    # anew, unless heap_only keeps it in the heap
    assert before > 8_000 and inside < 1_000


def test_heap_only_turns_mmap_back_on_even_when_the_forward_fails(monkeypatch):
    import vggprune.timing.allocator as latency

    calls = []
    monkeypatch.setattr(latency, "_mallopt", lambda: lambda param, value: calls.append((param, value)) or 1)
    with pytest.raises(RuntimeError), latency.heap_only():
        raise RuntimeError("out of memory in a forward")
    # off inside, back to glibc's default after: a process-wide heap kept a seed run's every freed model
    # copy until the OOM killer stopped it at 24 GB
    assert calls == [(-4, 0), (-4, 65536)]


@pytest.mark.parametrize("fn, heap", [
    (torch.nn.Identity(), True),  # a PyTorch module: eager
    (type("FusedRunner", (), {"heap_forward": True, "__call__": lambda self, x: x})(), True),
    (type("OrtRunner", (), {"heap_forward": False, "__call__": lambda self, x: x})(), False),
    (lambda x: x, False),  # any other callable: a runtime with its own memory planning
])
def test_only_pytorch_forwards_are_timed_heap_only(monkeypatch, fn, heap):
    import vggprune.timing.allocator as latency

    calls = []
    monkeypatch.setattr(latency, "_mallopt", lambda: lambda param, value: calls.append((param, value)) or 1)
    forward = timed_callable(fn, torch.zeros(2, 3))
    forward.untimed()  # a fresh copy's first call runs as the timed ones do
    forward()
    assert calls == ([(-4, 0), (-4, 65536)] * 2 if heap else [])
