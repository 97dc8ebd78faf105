"""Was the machine quiet? :class:`CpuWatch` measures how much CPU other processes used while a case
was timed: with as many threads as cores, every parallel region waits for a descheduled thread, so
even a small share of a core used by others inflates every round."""

from __future__ import annotations

import os
import time

from vggprune.results.record import CONTENDED


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
    contention (the timing workers of vggprune.timing.workers time part of every case)."""
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
