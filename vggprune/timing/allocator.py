"""glibc allocator settings under which repeated forwards reach a steady state (no-ops without glibc)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator


@functools.cache
def libc_function(function: str) -> Callable[..., int] | None:
    """A function of the C library (glibc), or None where there is none (musl, macOS, Windows)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), function) if name else None
    except (OSError, AttributeError):
        return None


def _mallopt() -> Callable[[int, int], int] | None:
    return libc_function("mallopt")


def release_free_memory() -> None:
    """Give the heap's free memory back to the OS (``malloc_trim``), between cases: the pinned trim
    threshold keeps up to 512 MB of it otherwise, which a run of the seed model cannot spare."""
    trim = libc_function("malloc_trim")
    if trim is not None:
        trim(0)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_DEFAULT_MMAP_MAX = 65536  # glibc's


def steady_allocator() -> bool:
    """Make glibc keep freed activation buffers instead of returning them to the OS (True if applied).

    glibc serves big allocations (a batch's activations) with mmap and unmaps them on free, so every
    forward page-faults its activations in again, and its *dynamic* mmap threshold makes how often
    that happens depend on the process's history (docs/measuring.md: the speed-up moved with it). A
    long-running server's allocator reaches that steady state too. The threshold cannot go above
    32 MB; larger activations are kept by :func:`heap_only` around each timed forward. No-op without glibc.
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

    For activations above mmap's 32 MB ceiling (the seed model's first layers at batch 8 are 103 MB),
    which would otherwise be page-faulted in on every forward and read as a larger speed-up for
    pruning. Only PyTorch forwards go inside: with mmap off for the whole process, the heap would keep
    every freed model copy of a run.
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
