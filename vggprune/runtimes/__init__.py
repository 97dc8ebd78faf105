"""Deployment runtimes as an axis: run one VGG11 in eager PyTorch, BN-folded, ONNX Runtime, OpenVINO
or torch.compile, and check its outputs against eager before anything is timed.

How a harness uses it::

    rt = get_runtime("onnxruntime")
    if (reason := rt.unavailable("cpu")):          # one line: why, and how to get it
        skip(reason)
    runner = rt.prepare(model, "cpu", "channels_last", example_batch, artifact_dir=cache / key)
    check = verify(runner, model, test_batches)    # (x, y) batches, bare tensors, or one tensor
    if (failure := check.failure()):
        fail(failure)
    batch = runner.adapt(batch)                     # device + layout the runner takes copy-free
    logits = runner(batch)                          # the timed call (add CUDA sync around it)
    record(runner.size_bytes, check.as_dict())      # size on disk, agreement with eager

Another runtime (TensorRT, say) is a :class:`~vggprune.runtimes.base.Runtime` subclass with
``name``, ``unavailable`` and ``_prepare``, added to ``_RUNTIMES``.
"""

from __future__ import annotations

from vggprune.errors import UserError
from vggprune.runtimes.base import Runner, Runtime
from vggprune.runtimes.onnx import OpenVINORuntime, OrtRuntime, export_onnx
from vggprune.runtimes.pytorch import CompileRuntime, EagerRuntime, FusedRuntime, fuse_bn
from vggprune.runtimes.verification import Verification, reference_logits, verify

__all__ = ["RUNTIMES", "Runner", "Runtime", "Verification", "export_onnx", "fuse_bn", "get_runtime",
           "reference_logits", "verify"]

_RUNTIMES: dict[str, type[Runtime]] = {
    cls.name: cls for cls in (EagerRuntime, FusedRuntime, OrtRuntime, OpenVINORuntime, CompileRuntime)
}
RUNTIMES: tuple[str, ...] = tuple(_RUNTIMES)


def get_runtime(name: str) -> Runtime:
    """The runtime called ``name``; an unknown name is a UserError listing the allowed ones."""
    try:
        return _RUNTIMES[name]()
    except (KeyError, TypeError):
        raise UserError(f"unknown runtime {name!r}; allowed: {', '.join(RUNTIMES)}") from None
