"""torch.cuda's timing surface on a CPU, behaving as a device does: work is asynchronous.

A call that launches device work leaves it *in flight* until ``torch.cuda.synchronize()``; events are
recorded on a stream (torch's default stream has the pointer 0, as on a real GPU, and a new
``torch.cuda.Stream()`` a non-zero one); a start event recorded while work is still in flight is kept
as a violation, because a real clock started then would include the end of earlier work.
"""

from __future__ import annotations

import contextlib
import itertools


class FakeStream:
    _pointers = itertools.count(0x7F00)

    def __init__(self, pointer: int | None = None) -> None:
        self.cuda_stream = next(self._pointers) if pointer is None else pointer
        self.waited_on: list[int] = []

    def wait_stream(self, other: FakeStream) -> None:
        self.waited_on.append(other.cuda_stream)


class _Properties:
    total_memory = 16 * 2**30


class FakeCuda:
    def __init__(self) -> None:
        self.log: list[object] = []
        self.in_flight = False
        self.default = FakeStream(0)
        self.current = self.default
        self.started_in_flight = 0  # start events recorded with work still in flight
        self.empty_cache_calls = 0
        cuda = self

        class Event:
            def __init__(self, enable_timing: bool = False) -> None:
                assert enable_timing, "events that time must be made with enable_timing=True"
                self.stream: int | None = None
                self.in_flight_at_record = False

            def record(self, stream: FakeStream | None = None) -> None:
                self.stream = (stream or cuda.current).cuda_stream
                self.in_flight_at_record = cuda.in_flight
                cuda.log.append(("record", self.stream))

            def elapsed_time(self, end) -> float:
                if self.in_flight_at_record:  # this was a start event: its clock began on old work
                    cuda.started_in_flight += 1
                return 1.5

        self.Event = Event

    # what a forward on the device does: queue work and return at once
    def launch(self, what: str = "forward") -> None:
        self.log.append(what)
        self.in_flight = True

    def synchronize(self, device=None) -> None:
        self.log.append("synchronize")
        self.in_flight = False

    def current_stream(self, device=None) -> FakeStream:
        return self.current

    @contextlib.contextmanager
    def stream(self, stream: FakeStream):
        before, self.current = self.current, stream
        try:
            yield
        finally:
            self.current = before

    def empty_cache(self) -> None:
        self.empty_cache_calls += 1

    def install(self, setattr_) -> FakeCuda:
        """Patch torch.cuda through ``setattr_`` (pytest's ``monkeypatch.setattr``)."""
        import torch

        for name, value in (("is_available", lambda: True), ("Event", self.Event), ("synchronize", self.synchronize),
                            ("Stream", FakeStream), ("stream", self.stream), ("current_stream", self.current_stream),
                            ("current_device", lambda: 0), ("empty_cache", self.empty_cache),
                            ("get_device_name", lambda index=0: "Fake GPU"),
                            ("get_device_capability", lambda index=0: (8, 0)),
                            ("get_device_properties", lambda index=0: _Properties())):
            setattr_(torch.cuda, name, value)
        return self
