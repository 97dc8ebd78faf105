"""On-disk cache of trained and fine-tuned checkpoints, keyed by everything that affects the weights.

A key is a plain dict (profile training settings, model spec, pruning case, data identity, starting
weights, library versions and a digest of the training code); its SHA-256 names the file, and the
canonical key is stored inside the file and compared on load, so a stale or foreign file is never
mistaken for a hit. Files use vggprune's model payload (spec + state_dict, ``weights_only``-loadable)
and are written atomically, so concurrent runs never see half a file; a per-entry lock makes a second
run wait for the first instead of training the same thing twice.

The same fault policy covers the checkpoints and the runtimes' exports (:func:`published_dir`):
an entry is checked when it is read (a checkpoint by its payload and stored key, an export directory
by the size and SHA-256 of every file, recorded in its ``meta.json`` when it was published), and a bad
one is reported with one :class:`CacheWarning` and rebuilt. The first write the cache refuses (not a
directory, read-only, no space left, quota exceeded) is one warning naming the file and the reason;
the rest of the run writes nothing more there: checkpoints go uncached, exports go to a private
temporary directory removed at exit. No partial file is left behind. The cache can cost time, never a crash.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from vggprune.atomic import current_umask, sweep_stale_temps, write_failure
from vggprune.checkpoint import atomic_torch_save, model_from_payload, model_payload
from vggprune.env import CACHE_DIR_ENV, NO_CACHE_ENV, env_value  # noqa: F401 (NO_CACHE_ENV re-exported)
from vggprune.models import VGG11

try:  # POSIX; elsewhere concurrent runs may duplicate work but still never corrupt a file
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

# Bump when the meaning of a cached file changes; callers put it in their keys, so entries written
# under an older layout are misses, never misread. 2: entries carry per-image test correctness
# ("correct"), the before-fine-tuning evaluation and the test-set fingerprint.
CACHE_LAYOUT = 2
# Modules whose code decides what a trained checkpoint contains.
_TRAINING_CODE = ("models.py", "data.py", "train.py", "weights.py", "pruning/__init__.py", "pruning/plan.py",
                  "pruning/by_hand.py", "pruning/tp_backend.py")


_THREAD_LOCKS: dict[Path, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def _thread_lock(path: Path) -> threading.Lock:
    with _THREAD_LOCKS_GUARD:
        return _THREAD_LOCKS.setdefault(path, threading.Lock())


class CacheWarning(UserWarning):
    """A cache file was unreadable or could not be written; the run carries on without it."""


# The fault policy ---------------------------------------------------------------------------------------
_ROOTS: set[Path] = set()  # roots of the caches opened in this process
_UNWRITABLE: dict[Path, str] = {}  # root (or entry outside any known root) -> why it refused a write
_PRIVATE: list[Path] = []  # this process's private export directory, once needed
_DIGESTS: dict[tuple[int, ...], str] = {}  # a file's identity and stamps -> SHA-256: hashed once per process


def _root_of(path: Path) -> Path:
    path = Path(path).absolute()
    return next((root for root in _ROOTS if root == path or root in path.parents), path)


def unwritable(path: str | os.PathLike) -> str | None:
    """Why the cache holding ``path`` refused a write earlier in this process, or None."""
    path = Path(path).absolute()
    return next((why for where, why in _UNWRITABLE.items() if where == path or where in path.parents), None)


def cannot_write(path: str | os.PathLike, exc: OSError) -> None:
    """Report, once per cache, that ``path`` could not be written; later writes there are skipped."""
    if unwritable(path) is not None:
        return
    root = _root_of(Path(path))
    reason = (exc.strerror or str(exc)).lower()
    _UNWRITABLE[root] = reason
    warnings.warn(f"cannot write cache file {path} ({reason}); continuing without writing to {root} "
                  f"(exports go to a temporary directory removed at exit)", CacheWarning, stacklevel=3)


def rebuilding(path: str | os.PathLike, why: str) -> None:
    """The one warning for a cache entry that is unreadable, damaged or foreign, and is built again."""
    warnings.warn(f"cache file {path} is unreadable ({why}); rebuilding it", CacheWarning, stacklevel=3)


def _remove_private(path: Path, owner: int) -> None:
    if os.getpid() == owner:  # a forked child exiting normally must not remove its parent's directory
        shutil.rmtree(path, ignore_errors=True)


def private_dir(final: str | os.PathLike) -> Path:
    """Where ``final``'s build goes when the cache cannot take it: this process's own temporary
    directory, removed at exit, one sub-directory per cache path."""
    if not _PRIVATE:
        tmp = Path(tempfile.mkdtemp(prefix="vggprune-exports-"))
        atexit.register(_remove_private, tmp, os.getpid())
        _PRIVATE.append(tmp)
    final = Path(final).absolute()
    return _PRIVATE[0] / hashlib.sha256(str(final).encode()).hexdigest()[:16] / final.name


def is_private(path: str | os.PathLike) -> bool:
    return bool(_PRIVATE) and _PRIVATE[0] in Path(path).absolute().parents


def file_digest(path: Path) -> str:
    """SHA-256 of ``path``, remembered while its inode, size and times stay the same (a seed export is
    0.5 GB, and every timing block's fresh session reads it again)."""
    st = path.stat()
    stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if stamp not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[stamp] = h.hexdigest()
    return _DIGESTS[stamp]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/vggprune``, else ``~/.cache/vggprune``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vggprune"


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The explicit option wins, then ``VGGPRUNE_CACHE_DIR``, then :func:`default_cache_dir`."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = env_value(CACHE_DIR_ENV)
    return Path(env).expanduser() if env else default_cache_dir()


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """Versions of everything that can change trained weights, plus a digest of our training code."""
    import vggprune

    versions = {"vggprune": vggprune.__version__}
    for dist in ("torch", "torchvision", "torch-pruning", "numpy", "scikit-learn"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "absent"
    pkg = Path(vggprune.__file__).parent
    code = hashlib.sha256()
    for rel in _TRAINING_CODE:
        code.update(rel.encode() + b"\0" + (pkg / rel).read_bytes())
    versions["code_sha256"] = code.hexdigest()
    return versions


def canonical(key: dict[str, Any]) -> str:
    """One text per key: sorted, compact JSON (tuples and lists alike)."""
    return json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(key).encode()).hexdigest()


@dataclass
class CacheEntry:
    model: VGG11
    extra: dict[str, Any]
    path: Path


class CheckpointCache:
    """Checkpoints under ``root/models/<label>-<digest>.pt``; ``enabled=False`` makes every call a no-op."""

    def __init__(self, root: str | os.PathLike | None = None, enabled: bool = True) -> None:
        self.root = resolve_cache_dir(root)
        self.enabled = enabled
        self._swept = False
        if enabled:  # its exports live under it too: one refused write stops writes to all of it
            _ROOTS.add(self.root.absolute())

    def sweep(self) -> list[Path]:
        """Delete temporary files that killed runs left behind (a seed checkpoint's is ~530 MB)."""
        if not self.enabled:
            return []
        removed = sweep_stale_temps(self.root / "models")
        if removed:
            warnings.warn(f"removed {len(removed)} temporary file(s) left in {self.root / 'models'} by runs "
                          f"that were killed while writing", CacheWarning, stacklevel=2)
        return removed

    def path_for(self, key: dict[str, Any], label: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "model"
        return self.root / "models" / f"{safe}-{key_digest(key)[:24]}.pt"

    def load(self, key: dict[str, Any], label: str) -> CacheEntry | None:
        """The cached model and its extra info, or None on a miss, a disabled cache or a bad file."""
        if not self.enabled:
            return None
        path = self.path_for(key, label)
        if not path.is_file():
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            model = model_from_payload(payload, str(path))
            extra = dict(payload.get("extra") or {})
            if extra.get("cache_key") != canonical(key):
                raise ValueError("its stored key differs from the requested one")
        except Exception as exc:  # truncated, garbage, foreign: all mean "rebuild"
            rebuilding(path, f"{type(exc).__name__}: {str(exc)[:160]}")
            return None
        return CacheEntry(model, extra, path)

    def store(self, key: dict[str, Any], label: str, model: VGG11, extra: dict[str, Any]) -> Path | None:
        """Write atomically; returns the path, or None (with a warning) if the cache is off or unwritable."""
        if not self.enabled or unwritable(self.root):
            return None
        if not self._swept:  # once per process, when about to add a file
            self._swept = True
            self.sweep()
        path = self.path_for(key, label)
        try:
            atomic_torch_save(model_payload(model, {**extra, "cache_key": canonical(key)}), path)
        except OSError as exc:  # the temporary file is gone already
            cannot_write(path, exc)
            return None
        return path

    @contextlib.contextmanager
    def lock(self, key: dict[str, Any], label: str) -> Iterator[None]:
        """Hold an exclusive lock on one entry while it is built (released even if the process dies).

        A POSIX record lock (``lockf``), not ``flock``: it belongs to this process only, so DataLoader
        workers forked while it is held (and perhaps left alive by an error) do not keep holding it;
        the descriptor is close-on-exec so no spawned program inherits it either. POSIX locks do not
        exclude threads of one process, so a per-path thread lock is taken first.
        """
        if not self.enabled or fcntl is None:
            yield
            return
        lock_path = self.path_for(key, label).with_suffix(".lock")
        with _thread_lock(lock_path), self._file_lock(lock_path):
            yield

    @staticmethod
    @contextlib.contextmanager
    def _file_lock(lock_path: Path) -> Iterator[None]:
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o666)  # umask applies
        except OSError:  # read-only cache: build without the lock; store() will warn
            yield
            return
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock


# Published directories (the runtimes' exports) ---------------------------------------------------------
META = "meta.json"
# Bump when meta.json's layout changes: an older entry is then stale (rebuilt quietly), never misread.
EXPORT_LAYOUT = 2


def published_dir(final: Path, meta: dict[str, Any], build: Callable[[Path], None]) -> tuple[Path, bool]:
    """A directory holding what ``build(tmp_dir)`` writes, for the model and settings in ``meta``.

    Returns ``(directory, reused)``. An entry at ``final`` built for the same ``meta`` whose files all
    have the recorded sizes and digests is reused untouched; one for other weights is replaced
    quietly; a damaged one is replaced with a :class:`CacheWarning`. A build goes to a temporary
    sibling and is renamed into place, ``meta.json`` written last, so readers and concurrent runs see a
    whole build or none. When the cache refuses the write, the build goes to :func:`private_dir`.
    """
    final = Path(final)
    state, why = _entry(final, meta)
    if state == "ok":
        return final, True
    if state == "damaged":
        rebuilding(*why)
    if unwritable(final) is None:
        try:
            return _publish(final, meta, build), False
        except Exception as exc:
            failure = write_failure(exc)
            if failure is None:
                raise
            cannot_write(final, failure)
    private = private_dir(final)
    if _entry(private, meta)[0] == "ok":
        return private, True
    return _publish(private, meta, build), False


def _publish(final: Path, meta: dict[str, Any], build: Callable[[Path], None]) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # the umask's permissions, not mkdtemp's 0700
        build(tmp)
        files = {p.name: {"bytes": p.stat().st_size, "sha256": file_digest(p)}
                 for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / META).write_text(json.dumps({"layout": EXPORT_LAYOUT, "key": meta, "files": files},
                                           sort_keys=True, indent=1))
        stale = None
        if final.exists():  # a build for other weights or settings, or a damaged one: move it aside
            stale = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-"))
            os.replace(final, stale / final.name)
        try:
            os.rename(tmp, final)
        except OSError:
            if _entry(final, meta)[0] != "ok":
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent run published the same build first
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _entry(final: Path, meta: dict[str, Any]) -> tuple[str, tuple[Path, str] | None]:
    """``("missing" | "stale" | "ok", None)`` or ``("damaged", (file, why))`` for the entry at ``final``."""
    if not final.exists():
        return "missing", None
    try:
        stored = json.loads((final / META).read_text())
    except FileNotFoundError:
        return "damaged", (final / META, "it is missing")
    except (OSError, ValueError) as exc:
        return "damaged", (final / META, f"{type(exc).__name__}: {str(exc)[:160]}")
    if not isinstance(stored, dict) or stored.get("layout") != EXPORT_LAYOUT:
        return "stale", None  # an older layout: rebuilt like an entry for other weights
    if stored.get("key") != json.loads(json.dumps(meta)):
        return "stale", None
    files = stored.get("files")
    if not isinstance(files, dict) or not files:
        return "damaged", (final / META, "it lists no files")
    for name, want in files.items():
        path = final / name
        try:
            size = path.stat().st_size
            if size != want["bytes"]:
                return "damaged", (path, f"{size} bytes where {want['bytes']} were written")
            if file_digest(path) != want["sha256"]:
                return "damaged", (path, "its SHA-256 differs from the one recorded when it was written")
        except FileNotFoundError:
            return "damaged", (path, "it is missing")
        except (OSError, KeyError, TypeError) as exc:
            return "damaged", (path, f"{type(exc).__name__}: {str(exc)[:160]}")
    return "ok", None
