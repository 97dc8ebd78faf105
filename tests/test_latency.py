"""Timing logic: the CUDA path synchronises inside the timed call; summaries are honest percentiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vggprune.latency import make_batch, measure, prepare_for_inference, summarize, timed_callable


class Spies:
    """Stand-ins for torch.cuda.Event / synchronize that log the order of what happens."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        spies = self

        class Event:
            count = 0

            def __init__(self, enable_timing: bool = False) -> None:
                assert enable_timing
                Event.count += 1
                self.n = Event.count

            def record(self) -> None:
                spies.log.append("record")

            def elapsed_time(self, end: Event) -> float:
                return 2.5

        self.Event = Event

    def synchronize(self, device=None) -> None:
        self.log.append("synchronize")


def test_cuda_path_synchronizes_inside_the_timed_call(monkeypatch):
    log: list[str] = []
    spies = Spies(log)
    monkeypatch.setattr(torch.cuda, "Event", spies.Event)
    monkeypatch.setattr(torch.cuda, "synchronize", spies.synchronize)
    model = torch.nn.Linear(4, 2)
    model.register_forward_hook(lambda *a: log.append("forward"))
    forward = timed_callable(model, torch.zeros(3, 4))
    forward.cuda = True  # no GPU here: drive the CUDA branch with CPU tensors and spies

    ticks = iter(range(100))
    times = measure(lambda: (log.append("timer start"), forward(), log.append("timer stop")),
                    rounds=2, warmup=1, clock=lambda: next(ticks))
    # Per call: start event, forward, end event, then synchronize, all before the timer stops.
    one_call = ["timer start", "record", "forward", "record", "synchronize", "timer stop"]
    assert log == one_call * 3
    assert times == [1, 1]
    assert forward.gpu_times_ms() == [2.5, 2.5, 2.5]


def test_cpu_path_never_touches_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: pytest.fail("synchronize on CPU"))
    forward = timed_callable(torch.nn.Linear(4, 2), torch.zeros(3, 4))
    out = forward()
    assert out.shape == (3, 2) and out.is_inference() and forward.gpu_times_ms() == []


def test_measure_discards_warmup_gpu_times(monkeypatch):
    spies = Spies([])
    monkeypatch.setattr(torch.cuda, "Event", spies.Event)
    monkeypatch.setattr(torch.cuda, "synchronize", spies.synchronize)
    forward = timed_callable(torch.nn.Linear(4, 2), torch.zeros(1, 4))
    forward.cuda = True
    measure(forward, rounds=3, warmup=2)
    assert len(forward.gpu_times_ms()) == 3


def test_summarize_percentiles_and_throughput():
    seconds = [i / 1000 for i in range(1, 101)]  # 1 … 100 ms
    s = summarize(seconds, batch_size=8, gpu_ms=[1.0, 3.0, 2.0])
    assert s["latency_p50_ms"] == pytest.approx(np.percentile(np.arange(1, 101), 50))
    assert s["latency_p90_ms"] == pytest.approx(90.1) and s["latency_p99_ms"] == pytest.approx(99.01)
    assert s["images_per_s"] == pytest.approx(8 / 0.0505, rel=1e-4)
    assert s["gpu_time_p50_ms"] == 2.0 and s["rounds"] == 100
    assert summarize([], 8)["latency_p50_ms"] is None


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
