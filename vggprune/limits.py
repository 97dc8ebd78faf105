"""Upper bounds for sizes a user can type, checked at parse time against what the machine has.

Without them a huge ``--threads`` segfaults torch, a huge batch or class count dies in the
allocator, and a huge seed is a ValueError deep in numpy, each after minutes of work.
"""

from __future__ import annotations

import os

from vggprune.errors import UserError

MAX_SEED = 2**32 - 1  # numpy's seed range; torch's is wider
MAX_NUM_CLASSES = 100_000
MAX_ROUND_TO = 4096
MAX_EPOCHS = 10_000
MAX_ROUNDS = 100_000
MAX_BATCH = 65_536
# 1: every round in the pytest process (5 blocks on fresh copies). N > 1: that process plus N - 1 timing
# workers (vggprune.timing.workers), one block each; about +28 s on a warm quick-profile run with 5 (each worker
# JIT-compiles oneDNN kernels for every new model), so it is opt-in.
TIMING_PROCESSES = 1
MAX_PROCESSES = 32  # each worker holds torch, ONNX Runtime and OpenVINO: about 0.7 GB
# The between-run standard deviation (log scale) every speed-up interval allows for
# (vggprune.stats.widen). Measured with `vggprune calibration` on six sets of 5 quick-profile runs on a
# 2-core cloud VM: the sets needed 0, 0, 0.009, 0.044, 0.045 and 0.049 for their intervals to hold the
# 5-run median 95 % of the time (within-run intervals alone held it 67-96 %). 0.05 covers all six.
# Measure your machine's the same way and set it with --run-spread (0: within this run only).
RUN_SPREAD = 0.05
MIN_IMAGE, MAX_IMAGE = 32, 1024  # five 2x2 max-pools need 32 px; beyond 1024 no VGG11 makes sense
THREADS_PER_CORE = 4  # oversubscription beyond this only measures the scheduler


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def available_memory() -> int | None:
    """Bytes the kernel says can be allocated without swapping (Linux ``MemAvailable``), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def int_in_range(option: str, text: object, low: int, high: int) -> int:
    """``text`` as an integer in [low, high], or one UserError naming the option and the range."""
    kind = {0: "a non-negative integer", 1: "a positive integer"}.get(low, f"an integer >= {low}")
    try:
        value = int(str(text).strip())
    except ValueError:
        value = None
    if value is None or value < low:
        raise UserError(f"{option}: {str(text).strip()!r} is not {kind} (allowed {low}..{high:,})")
    if value > high:
        raise UserError(f"{option}: {value:,} is out of range (allowed {low}..{high:,})")
    return value


def float_in_range(option: str, text: object, low: float, high: float) -> float:
    """``text`` as a finite number in [low, high], or one UserError naming the option and the range."""
    try:
        value = float(str(text).strip())
    except ValueError:
        value = None
    if value is None or not low <= value <= high:  # NaN fails both comparisons
        raise UserError(f"{option}: {str(text).strip()!r} is not a number in {low:g}..{high:g}")
    return value


def max_threads() -> int:
    return available_cores() * THREADS_PER_CORE


def inference_bytes_per_image(conv_widths: tuple[int, ...], pool_after: tuple[bool, ...], image_size: int) -> int:
    """A rough upper bound on one image's float32 activations in a VGG forward pass.

    Each conv output exists twice at its peak (conv, then batch norm; ReLU is in place), plus the input.
    """
    side, floats = image_size, 3 * image_size * image_size
    for width, pool in zip(conv_widths, pool_after):
        floats += 2 * width * side * side
        if pool:
            side = max(1, side // 2)
    return 4 * floats


def check_batch_fits(option: str, batch: int, per_image: int, model_bytes: int, what: str) -> None:
    """Refuse a batch whose activations cannot fit in the memory available now, with the estimate."""
    free = available_memory()
    need = batch * per_image + model_bytes
    if free is not None and need > free:
        raise UserError(f"{option}: a batch of {batch:,} {what} needs about {need / 2**30:,.1f} GiB but this "
                        f"machine has {free / 2**30:,.1f} GiB available")
