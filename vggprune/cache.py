"""On-disk cache of trained and fine-tuned checkpoints, keyed by everything that affects the weights.

A key is a plain dict (profile training settings, model spec, pruning case, data identity, starting
weights, library versions and a digest of the training code); its SHA-256 names the file, and the
canonical key is stored inside the file and compared on load, so a stale or foreign file is never
mistaken for a hit. Files use vggprune's model payload (spec + state_dict, ``weights_only``-loadable)
and are written atomically, so concurrent runs never see half a file; a per-entry lock makes a second
run wait for the first instead of training the same thing twice. A file that cannot be read is
reported with a :class:`CacheWarning` and rebuilt: the cache can cost time, never a crash.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from vggprune.atomic import sweep_stale_temps
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
            warnings.warn(f"cache file {path} is unreadable ({type(exc).__name__}: {str(exc)[:160]}); "
                          f"rebuilding it", CacheWarning, stacklevel=2)
            return None
        return CacheEntry(model, extra, path)

    def store(self, key: dict[str, Any], label: str, model: VGG11, extra: dict[str, Any]) -> Path | None:
        """Write atomically; returns the path, or None (with a warning) if the cache is off or unwritable."""
        if not self.enabled:
            return None
        if not self._swept:  # once per process, when about to add a file
            self._swept = True
            self.sweep()
        path = self.path_for(key, label)
        try:
            atomic_torch_save(model_payload(model, {**extra, "cache_key": canonical(key)}), path)
        except OSError as exc:
            warnings.warn(f"cannot write cache file {path} ({exc}); continuing without caching it",
                          CacheWarning, stacklevel=2)
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
