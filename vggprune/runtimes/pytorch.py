"""The PyTorch runtimes: ``eager`` (as trained), ``fused`` (BatchNorm folded into the convs) and
``compile`` (torch.compile with inductor). None needs a dependency beyond torch.

What they ship is a state_dict file: the checkpoint format (spec + state_dict, loads with
``vggprune.checkpoint.load_model``) for eager and compile, which compiles at load time; the folded
weights for fused.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch
from torch import nn

from vggprune.runtimes.base import Runner, Runtime, dir_size, state_bytes, state_file
from vggprune.timing.pairing import MEMORY_FORMATS, prepare_for_inference

RECOMPILE_LIMIT = 64


def fuse_bn(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with every Conv2d→BatchNorm2d pair folded into one conv.

    The BN becomes ``nn.Identity`` so module names and the forward stay those of the VGG11.
    """
    fused = copy.deepcopy(model).eval()
    for seq in fused.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq[i] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
                seq[i + 1] = nn.Identity()
    return fused


class _TorchRuntime(Runtime):
    heap_forward = True  # see vggprune.timing.allocator.heap_only
    has_parts = True  # each leaf module is a part

    def _module(self, model: nn.Module) -> nn.Module:
        return model

    def _files(self, model: nn.Module, module: nn.Module, artifact_dir: Path) -> tuple[list[Path], bool]:
        raise NotImplementedError  # runtimes that export say what they write

    def _wrap(self, module: nn.Module, example_batch: torch.Tensor) -> nn.Module:
        return module

    def part_clock(self, model, batch, workdir):
        from vggprune.timing.breakdown import ModuleClock

        memory_format = "channels_last" if batch.is_contiguous(memory_format=torch.channels_last) else "contiguous"
        return ModuleClock(prepare_for_inference(self._module(model), "cpu", memory_format))

    def _prepare(self, model, device, memory_format, example_batch, artifact_dir):
        module = self._module(model)
        if self.exports:
            files, reused = self._files(model, module, artifact_dir)
            size = dir_size(files)
        else:  # ships the checkpoint the pipeline cached: its size is the state_dict's tensors
            files, reused = [], True
            size = state_bytes(model)
        if module is model:  # a separate copy for the device, so the caller's CPU model stays as it was
            module = copy.deepcopy(model)
        module = module.to(device=device, memory_format=MEMORY_FORMATS[memory_format]).eval()
        return Runner(self.name, device, self._wrap(module, example_batch), files=files, size_bytes=size,
                      input_memory_format=memory_format, reused=reused, heap_forward=self.heap_forward)


class EagerRuntime(_TorchRuntime):
    """The model as trained, in PyTorch eager mode: the reference every other runtime is checked against.

    What it ships is the checkpoint the pipeline already cached, so it writes no files of its own;
    its size is the state_dict's tensors.
    """

    name = "eager"
    reference = True
    exports = False


class FusedRuntime(_TorchRuntime):
    """BatchNorm folded into the preceding conv (``fuse_conv_bn_eval``): one op less per layer."""

    name = "fused"

    def _module(self, model: nn.Module) -> nn.Module:
        return fuse_bn(model)

    def _files(self, model, module, artifact_dir):
        # Keyed by the unfused weights; the spec rides along so the widths are known at load time.
        spec = model.spec.to_dict() if hasattr(model, "spec") else None
        return state_file(model, artifact_dir, "fused",
                           lambda: {"format": "vggprune-fused/1", "spec": spec, "state_dict": module.state_dict()})


class CompileRuntime(_TorchRuntime):
    """``torch.compile`` (inductor, default mode, static shapes), compiled during prepare.

    ``torch._dynamo.reset()`` runs before each model is compiled: dynamo caches compiled code on
    ``VGG11.forward``'s code object, so a second VGG11 of the same shapes would otherwise be served
    from the first one's cache entry instead of being compiled for itself. Earlier runners stay
    usable after a reset (they recompile or reuse a matching graph on their next call, so warm up
    each runner after the last prepare). Static shapes (``dynamic=False``): each batch size gets
    its own graph instead of a slower dynamic-batch one. No ``freezing``: a probe found it erratic
    and 13-26 s to compile the seed model on CPU.
    """

    name = "compile"
    fresh_copies = False  # a fresh copy would mean compiling again per block
    in_workers = False
    exports = False  # ships the eager checkpoint, already in the cache
    has_parts = False  # one compiled graph has no module boundaries to clock
    heap_forward = False  # a call may compile (a new batch size), and compiler buffers must not stay in the heap

    def unavailable(self, device: str) -> str | None:
        reason = super().unavailable(device)
        if reason:
            return reason
        if device == "cpu" and not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
            return "compile on cpu needs a C++ compiler (inductor builds C++ kernels): apt-get install g++"
        if device == "cuda":
            import importlib.util

            if importlib.util.find_spec("triton") is None:
                return "compile on cuda needs triton (inductor's GPU kernels): pip install triton"
        return None

    def _wrap(self, module: nn.Module, example_batch: torch.Tensor) -> nn.Module:
        import torch._dynamo

        torch._dynamo.reset()
        # Every VGG11 shares one forward code object, and each (model shapes, batch size) is one
        # dynamo cache entry on it: base + case x (example, verification and timed batch sizes)
        # passes the default limit of 8, after which dynamo silently runs eager. Allow more, and
        # make hitting the limit an error, so a "compile" case is never eager timed under that name.
        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
        config.fail_on_recompile_limit_hit = True
        return torch.compile(module, backend="inductor", dynamic=False)
