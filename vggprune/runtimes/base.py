"""What every runtime shares: the :class:`Runtime` interface, the :class:`Runner` it returns, and the
fingerprint that keys the artefact directories (state_dict files, ONNX exports) runners ship; those
are published, checked and rebuilt by the cache's policy (:func:`vggprune.cache.published_dir`).

A runtime is a small class: ``unavailable(device)`` says in one line why it cannot run (or None), and
``prepare(...)`` turns an eval-mode VGG11 into a :class:`Runner`, a callable ``batch -> logits``.
Heavy optional packages (onnxruntime, openvino, onnx) are imported inside those methods only, so
importing vggprune never needs them.
"""

from __future__ import annotations

import hashlib
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vggprune.cache import is_private, published_dir
from vggprune.timing.pairing import MEMORY_FORMATS

DEPLOY_HINT = "pip install -e '.[deploy]'"
STATE_FILE = "model.pt"


class Runner:
    """One model, ready to run in one runtime on one device: ``runner(batch) -> logits``.

    ``batch`` is an NCHW float32 tensor on ``device`` in any memory format; the logits come back as a
    torch tensor on ``device``, so they compare directly with eager PyTorch. Give the timed batch the
    layout :meth:`adapt` makes (``input_memory_format``) so no layout copy lands in the timed call.

    Attributes a harness records: ``runtime``, ``device``, ``files`` (what a user would ship),
    ``size_bytes`` (their total size on disk), ``reused`` (True when cached files were reused
    instead of written/exported now), ``prepare_seconds`` (export/save + session build/compile +
    the first call on the example batch) and ``details`` (runtime-specific, e.g. ORT providers).
    """

    def __init__(self, runtime: str, device: str, forward: Callable[[torch.Tensor], torch.Tensor], *,
                 files: list[Path], size_bytes: int, input_memory_format: str = "contiguous",
                 reused: bool = False, details: dict[str, Any] | None = None, heap_forward: bool = False) -> None:
        self.runtime, self.device = runtime, device
        self.heap_forward = heap_forward  # allocates activations with malloc per call: time it heap-only
        self._forward = forward
        self.files, self.size_bytes = list(files), int(size_bytes)
        self.input_memory_format = input_memory_format
        self.reused = reused
        self.prepare_seconds: float | None = None  # set by Runtime.prepare
        self.stream = None  # a CUDA stream the runtime runs on, when not torch's current one
        self.details = details or {}

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self._forward(batch)

    def adapt(self, batch: torch.Tensor) -> torch.Tensor:
        """``batch`` on this runner's device in the layout it takes without a copy."""
        return batch.to(self.device).contiguous(memory_format=MEMORY_FORMATS[self.input_memory_format])

    def __repr__(self) -> str:
        return f"Runner({self.runtime!r}, {self.device!r}, {self.size_bytes} bytes)"


class Runtime:
    """Base class: subclasses set ``name`` and implement :meth:`unavailable` and :meth:`_prepare`."""

    name: str = ""
    devices: tuple[str, ...] = ("cpu", "cuda")
    modules: tuple[str, ...] = ()  # what running (not exporting) needs imported; timing workers preload it
    reference = False  # True for the runtime every other one is verified against
    fresh_copies = True  # each block of rounds on new copies; False where a copy costs a compile
    in_workers = True  # may time blocks in worker processes (a compiled model would compile again in each)
    # Untimed paired rounds after a block's fresh copies: without one, the first timed round of each block
    # ran 2-7 % slower than the rest (eager, fused, OpenVINO; 72 cases, quick profile, docs/measuring.md).
    settle_rounds = 1
    exports = True  # writes files of its own to the export cache (False: ships the cached checkpoint)
    reads_module = True  # a copy is made from the module's weights (False: from files exported once)
    has_parts = False  # can time a forward part by part (:meth:`part_clock`, ``vggprune breakdown``)

    def unavailable(self, device: str) -> str | None:
        """None when this runtime can run on ``device`` here, else one line: why, and how to get it."""
        if device not in self.devices:
            return f"{self.name} does not run on {device} (it supports: {', '.join(self.devices)})"
        if device == "cuda" and not torch.cuda.is_available():
            return f"{self.name} on cuda needs a CUDA GPU and a CUDA build of torch; none is available here"
        return None

    def prepare(self, model: torch.nn.Module, device: str, memory_format: str, example_batch: torch.Tensor,
                artifact_dir: Path | None = None) -> Runner:
        """A :class:`Runner` for ``model`` (an eval-mode VGG11 on CPU, left unchanged).

        ``example_batch`` fixes the input's channels and size (and the first compiled shape); it is
        run once, so compile and first-run costs land here, not in the timed rounds. Files go in
        ``artifact_dir`` (the caller keys it per model, e.g. beside the cached checkpoint) and are
        reused when already there for this model; with None they go in a temporary directory that
        is removed again (``files`` is then empty, ``size_bytes`` still measured), as they do when the
        cache cannot take them.
        """
        import time

        reason = self.unavailable(device)
        if reason:
            from vggprune.errors import UserError

            raise UserError(reason)
        t0 = time.perf_counter()
        if artifact_dir is None and not self.exports:
            runner = self._prepare(model.eval(), device, memory_format, example_batch, None)
        elif artifact_dir is None:
            with tempfile.TemporaryDirectory(prefix=f"vggprune-{self.name}-") as tmp:
                runner = self._prepare(model.eval(), device, memory_format, example_batch, Path(tmp))
                runner.files = []  # gone with the temporary directory; their size is kept
        else:
            runner = self._prepare(model.eval(), device, memory_format, example_batch, Path(artifact_dir))
            if any(is_private(f) for f in runner.files):  # the cache refused them: gone at exit
                runner.files = []
        runner(runner.adapt(example_batch))
        if device == "cuda":
            torch.cuda.synchronize()  # the first call's kernels end here, not inside someone's timed round
        runner.prepare_seconds = round(time.perf_counter() - t0, 3)
        return runner

    def _prepare(self, model: torch.nn.Module, device: str, memory_format: str, example_batch: torch.Tensor,
                 artifact_dir: Path) -> Runner:
        raise NotImplementedError

    def part_clock(self, model: torch.nn.Module, batch: torch.Tensor, workdir: Path):
        """A clock that times ``model``'s forwards part by part on CPU (see vggprune.timing.breakdown)."""
        raise NotImplementedError(f"{self.name} cannot time a forward part by part")


# Artefacts (published and checked by vggprune.cache.published_dir) ----------------------------------------
# model -> (what its weights were when hashed, the hash); dropped with the model
_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer (names, shapes, bytes): cached exports belong to these
    weights, and the harness records it (first 16 hex digits) as the case's ``weights_sha256``.

    Remembered per model object while each tensor has the same storage and version counter (every
    in-place op bumps it): a timing block's fresh copies are prepared from the same model, and the
    seed model's 532 MB took 0.25 s to hash each time. An edit through ``.data`` bypasses the counter;
    a stale export it would reuse still fails the runtime's check against eager PyTorch.
    """
    state = model.state_dict()
    signature = _signature(state)
    known = _FINGERPRINTS.get(model)
    if known is not None and known[0] == signature:
        return known[1]
    h = hashlib.sha256()
    for name, t in state.items():
        t = t.detach().cpu().contiguous().reshape(-1)  # 1-d: 0-d tensors cannot be viewed as bytes
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy() if t.numel() else b"")
    _FINGERPRINTS[model] = (signature, h.hexdigest())
    return h.hexdigest()


def _signature(state: dict[str, torch.Tensor]) -> tuple:
    return tuple((name, t.data_ptr(), t._version, tuple(t.shape), t.dtype) for name, t in state.items())


def state_file(model: torch.nn.Module, artifact_dir: Path, subdir: str, payload) -> tuple[list[Path], bool]:
    """Save ``payload()`` as ``artifact_dir/subdir/model.pt`` once per set of ``model``'s weights."""
    meta = {"kind": subdir, "fingerprint": model_fingerprint(model), "torch": torch.__version__}

    def build(tmp: Path) -> None:
        with open(tmp / STATE_FILE, "wb") as f:  # through Python's file: a full disk is an OSError, not a torch error
            torch.save(payload(), f)

    final, reused = published_dir(artifact_dir / subdir, meta, build)
    return [final / STATE_FILE], reused


def map_weights(model: torch.nn.Module, artifact_dir: Path) -> None:
    """Back ``model``'s weights by a fresh file mapping of their saved copy (written once in
    ``artifact_dir/mapped``): the same values, none of them resident until something reads them.

    For a case whose runtime runs exported files, the trained model in the store is read by nothing,
    and its 0.3-0.5 GB (seed model) would otherwise count in the case's peak. Mapped anew each time:
    pages an earlier case read stay resident as long as their mapping lives. Its fingerprint is kept,
    so nothing re-reads the weights to hash them.
    """
    digest = model_fingerprint(model)
    files, _ = state_file(model, artifact_dir, "mapped", model.state_dict)
    model.load_state_dict(torch.load(files[0], mmap=True, weights_only=True, map_location="cpu"), assign=True)
    _FINGERPRINTS[model] = (_signature(model.state_dict()), digest)


def state_bytes(model: torch.nn.Module) -> int:
    """What the model's state_dict holds, in bytes: the size of a runtime that ships the checkpoint."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def dir_size(files: list[Path]) -> int:
    return sum(f.stat().st_size for f in files)


