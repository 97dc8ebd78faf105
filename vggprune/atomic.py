"""Atomic file writes, and the checks that let a command refuse a bad output path before any work.

A write goes to a temporary file beside the target, renamed over it once complete: readers (and
concurrent runs) see either the old file or the whole new one. The temporary file is named
``.NAME.<pid>.<random>.tmp`` so that a later run can tell a dead process's leftovers
(:func:`sweep_stale_temps`) from a live writer's. Files get the mode the umask gives, like ``open()``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from vggprune.errors import UserError

_TEMP = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")


def current_umask() -> int:
    try:  # read it without changing it: os.umask can only set, and other threads may create files meanwhile
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere the only portable way to read it is to set it
    os.umask(mask)
    return mask


def write_failure(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc`` when it is a failed write, else None.

    torch's zip writer reports a full disk as a RuntimeError ("unexpected pos") raised while the
    OSError from the file is handled, so the cause and context chain is searched too.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def check_output_file(path: str | os.PathLike, option: str = "output") -> Path:
    """Refuse, before any work, a file path that cannot be written: one UserError naming it.

    The target must not be a directory, its nearest existing ancestor must be a writable directory
    (so the missing parents can be created), and an existing target must be writable.
    """
    path = Path(path).expanduser()
    if str(path).endswith(os.sep) or path.is_dir():
        raise UserError(f"{option}: {path} is a directory, not a file")
    _check_parent_writable(path.parent, option, path)
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{option}: {path} exists and is not writable")
    return path


def check_output_dir(path: str | os.PathLike, option: str = "output directory") -> Path:
    """Refuse a directory that cannot be created or written to."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{option}: {path} exists and is not a directory")
    _check_parent_writable(path, option, path)
    return path


def _check_parent_writable(directory: Path, option: str, target: Path) -> None:
    probe = directory.absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{option}: cannot create {target}: {probe} is a file, not a directory")
    try:  # a real probe: os.access says yes to root in read-only mounts and in /proc
        fd, name = tempfile.mkstemp(dir=probe, prefix=".vggprune-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise UserError(f"{option}: cannot write {target}: {probe} is not writable "
                        f"({exc.strerror or exc})") from None


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then act on them as KeyboardInterrupt.

    ``torch.save`` turns a KeyboardInterrupt raised inside its writer into a RuntimeError and can
    leave a temporary file half written; deferring the signal lets the write finish (or fail cleanly).
    Only the main thread can install handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught:
        raise KeyboardInterrupt


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Yield a binary file to write; on success it replaces ``path``, on any error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; respect the umask like open()
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # a failed write() names no file; the message must say which
        raise


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    with atomic_file(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Remove temporary files left in ``directory`` by writers that are no longer running."""
    removed = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed
