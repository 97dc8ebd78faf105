"""The checkpoint cache: hit, miss, corruption, disabled, location, locking and concurrent writers."""

from __future__ import annotations

import multiprocessing
import threading
import time
import warnings

import pytest
import torch

from vggprune import build_vgg11
from vggprune.cache import (
    CACHE_DIR_ENV,
    CacheWarning,
    CheckpointCache,
    canonical,
    library_versions,
    resolve_cache_dir,
)

KEY = {"layout": "case", "rate": 0.3, "widths": (1, 2), "nested": {"b": 1, "a": [0.5, None]}}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_vgg11("small", 10).eval()


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_miss_then_hit(tmp_path, model):
    cache = CheckpointCache(tmp_path)
    assert cache.load(KEY, "case") is None
    path = cache.store(KEY, "case", model, {"top1": 0.97, "top5": 1.0})
    assert path == cache.path_for(KEY, "case") and path.parent == tmp_path / "models"
    entry = cache.load(KEY, "case")
    assert entry is not None and entry.path == path
    assert _same_weights(entry.model, model) and entry.model.spec == model.spec
    assert entry.extra["top1"] == 0.97 and entry.extra["cache_key"] == canonical(KEY)
    # loadable on its own, safely, as an ordinary vggprune model file
    assert torch.load(path, weights_only=True)["format"] == "vggprune-model/1"


def test_every_key_field_matters(tmp_path):
    cache = CheckpointCache(tmp_path)
    paths = {cache.path_for({**KEY, "rate": r}, "case") for r in (0.1, 0.2, 0.3)}
    paths.add(cache.path_for({**KEY, "nested": {"b": 2, "a": [0.5, None]}}, "case"))
    assert len(paths) == 4
    reordered = {"nested": {"a": [0.5, None], "b": 1}, "widths": [1, 2], "rate": 0.3, "layout": "case"}
    assert cache.path_for(reordered, "case") == cache.path_for(KEY, "case")  # order and tuple/list: same key


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_file_is_reported_and_rebuilt(tmp_path, model, damage):
    cache = CheckpointCache(tmp_path)
    path = cache.store(KEY, "case", model, {"top1": 0.9, "top5": 1.0})
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00garbage" * 50, "empty": b""}[damage])
    with pytest.warns(CacheWarning, match=rf"cache file {path} is unreadable .*rebuilding it"):
        assert cache.load(KEY, "case") is None
    cache.store(KEY, "case", model, {"top1": 0.9, "top5": 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt file loads cleanly
        assert _same_weights(cache.load(KEY, "case").model, model)


def test_a_file_stored_under_another_key_is_not_a_hit(tmp_path, model):
    cache = CheckpointCache(tmp_path)
    other = {**KEY, "rate": 0.4}
    cache.store(other, "case", model, {"top1": 0.5, "top5": 0.9})
    cache.path_for(other, "case").rename(cache.path_for(KEY, "case"))
    with pytest.warns(CacheWarning, match="stored key differs"):
        assert cache.load(KEY, "case") is None


def test_disabled_cache_reads_and_writes_nothing(tmp_path, model):
    CheckpointCache(tmp_path).store(KEY, "case", model, {"top1": 0.9, "top5": 1.0})
    off = CheckpointCache(tmp_path / "off", enabled=False)
    assert off.store(KEY, "case", model, {"top1": 0.9, "top5": 1.0}) is None
    assert not (tmp_path / "off").exists()
    assert CheckpointCache(tmp_path, enabled=False).load(KEY, "case") is None  # even though the file exists


def test_unwritable_cache_warns_and_carries_on(tmp_path, model):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    with pytest.warns(CacheWarning, match="cannot write cache file"):
        assert CheckpointCache(blocker).store(KEY, "case", model, {"top1": 1.0, "top5": 1.0}) is None


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir() == tmp_path / "xdg" / "vggprune"
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "env"))
    assert resolve_cache_dir() == tmp_path / "env"
    assert CheckpointCache(tmp_path / "opt").root == tmp_path / "opt"


def test_library_versions_cover_what_changes_weights():
    versions = library_versions()
    assert versions["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert {"torchvision", "torch-pruning", "vggprune", "code_sha256"} <= set(versions)
    assert len(versions["code_sha256"]) == 64


def test_lock_makes_a_second_builder_wait(tmp_path):
    cache = CheckpointCache(tmp_path)
    events: list[str] = []
    held = threading.Event()

    def first() -> None:
        with cache.lock(KEY, "case"):
            held.set()
            time.sleep(0.3)
            events.append("first done")

    t = threading.Thread(target=first)
    t.start()
    held.wait(5)
    with cache.lock(KEY, "case"):  # separate open file descriptions: flock excludes even within a process
        events.append("second in")
    t.join()
    assert events == ["first done", "second in"]


def _writer(root: str, rounds: int, seed: int) -> None:
    torch.manual_seed(seed)
    model = build_vgg11("small", 10)
    cache = CheckpointCache(root)
    for _ in range(rounds):
        cache.store(KEY, "case", model, {"top1": float(seed), "top5": 1.0})


def test_concurrent_writers_never_expose_a_broken_file(tmp_path, model):
    """Two processes keep rewriting one entry while this one reads it: every read is whole."""
    cache = CheckpointCache(tmp_path)
    cache.store(KEY, "case", model, {"top1": -1.0, "top5": 1.0})
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), 30, s)) for s in (1, 2)]
    for p in procs:
        p.start()
    seen = set()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)  # a torn read would warn: make it fail the test
        while any(p.is_alive() for p in procs):
            entry = cache.load(KEY, "case")
            assert entry is not None
            seen.add(entry.extra["top1"])
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert seen & {1.0, 2.0}  # the readers really saw the writers' files
    assert not list((tmp_path / "models").glob("*.tmp"))  # no temporary files left behind
