"""The ONNX runtimes: ``onnxruntime`` (CPU; CUDA with onnxruntime-gpu) and ``openvino`` (CPU).

Both run the same export: ``torch.onnx.export(..., dynamo=True)`` with a dynamic batch dimension,
written once per set of weights as ``artifact_dir/onnx/model.onnx`` plus its external-data file
``model.onnx.data`` (both are needed; together they are what a user ships). One export serves every
batch size: exporting takes seconds and writes the whole model again (about 0.5 GB for the seed
model), and both runtimes plan for the shapes they are given anyway (OpenVINO is even re-shaped to
the static batch shape before compiling, see :class:`OpenVINORuntime`).

Thread settings suit cores shared with other processes: ORT's intra-op pool does not spin
(``session.intra_op.allow_spinning = 0``) and both use ``torch.get_num_threads()`` threads, the
harness's fixed thread count, so runtimes are compared on the same cores.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import weakref
from pathlib import Path

import torch

from vggprune.cache import published_dir
from vggprune.errors import UserError
from vggprune.machine import package_version
from vggprune.runtimes.base import (
    DEPLOY_HINT,
    Runner,
    Runtime,
    dir_size,
    model_fingerprint,
)
from vggprune.timing.allocator import libc_function

ONNX_FILE = "model.onnx"
INPUT, OUTPUT = "input", "logits"


def _missing(*modules: str) -> str | None:
    """None when every module imports, else ``"<module>, which is not installed"`` or why it fails.

    Importing (not just finding) catches broken installs, e.g. a wheel missing a shared library; it
    happens on the first call only, never when vggprune is imported.
    """
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            return f"{name}, which is not installed"
        except ImportError as exc:  # includes a None entry in sys.modules, i.e. import blocked
            if sys.modules.get(name, 0) is None:
                return f"{name}, which is not installed"
            return f"{name}, which fails to import ({str(exc).splitlines()[0][:120]})"
    return None


def export_onnx(model: torch.nn.Module, example_batch: torch.Tensor, artifact_dir: Path) -> tuple[list[Path], bool]:
    """``[model.onnx, model.onnx.data]`` in ``artifact_dir/onnx``, exported unless already there.

    Returns ``(files, reused)``. The export is keyed by the weights' fingerprint, the input's
    channels and size, and the exporter's versions, so stale files are re-exported, never reused;
    a truncated or garbled file, or a missing ``.data`` file, fails its recorded size or digest and is
    exported again (see :func:`vggprune.cache.published_dir`).
    """
    _, c, h, w = example_batch.shape
    meta = {"kind": "onnx", "fingerprint": model_fingerprint(model), "input": [c, h, w], "batch": "dynamic",
            "torch": torch.__version__, "onnxscript": package_version("onnxscript")}

    def build(tmp: Path) -> None:
        # Batch 2 as the example: torch.export specialises a dimension of size 1 to a constant.
        x = torch.randn(2, c, h, w)
        batch = torch.export.Dim("batch", min=1)
        with torch.inference_mode(False):  # torch.export cannot trace inference tensors
            program = torch.onnx.export(model.eval(), (x,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                                        dynamic_shapes=({0: batch},), external_data=True, verbose=False)
        program.save(str(tmp / ONNX_FILE), external_data=True)

    final, reused = published_dir(artifact_dir / "onnx", meta, build)
    files = sorted(p for p in final.iterdir() if p.name.startswith(ONNX_FILE))
    return files, reused


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def signal_stack() -> tuple[int, int, int] | None:
    """The calling thread's alternate signal stack (address, flags, size); None where libc has none."""
    sigaltstack = libc_function("sigaltstack")
    if sigaltstack is None:
        return None
    st = _StackT()
    sigaltstack(None, ctypes.byref(st))
    return st.ss_sp or 0, st.ss_flags, st.ss_size


@contextlib.contextmanager
def keep_signal_stack():
    """Put back the thread's alternate signal stack once the block is done.

    OpenVINO's CPU plugin installs a signal stack of its own when it compiles, and restores the one it
    saw when it unloads; with sessions freed in any order but last-made-first, that is a stack already
    unmapped, and the next signal with a Python handler (a DataLoader worker's SIGCHLD) kills the
    process with SIGSEGV. Restored after every compile, the stack every session saves is the original.
    """
    sigaltstack, saved = libc_function("sigaltstack"), _StackT()
    if sigaltstack is not None:
        sigaltstack(None, ctypes.byref(saved))
    try:
        yield
    finally:
        if sigaltstack is not None:
            sigaltstack(ctypes.byref(saved), None)


def _to_numpy(batch: torch.Tensor):
    return batch.detach().contiguous().numpy()  # NCHW, no copy when already contiguous


class OrtRuntime(Runtime):
    """ONNX Runtime: CPU execution provider, CUDA provider on ``cuda`` (needs onnxruntime-gpu)."""

    name = "onnxruntime"
    modules = ("onnxruntime",)
    reads_module = False
    has_parts = True  # ONNX Runtime's profiler times each node
    # Two new sessions run alternately take 3-4 paired rounds to settle, however long each was warmed
    # alone (quick model, batch 1: 410-440 µs, then 325-345; warmed in pairs, 340-385 from the first;
    # after 3 untimed rounds the first timed one still read 13 % slow).
    settle_rounds = 4

    def unavailable(self, device: str) -> str | None:
        missing = _missing("onnxruntime", "onnx", "onnxscript")
        if missing:
            return f"{self.name} needs {missing}: {DEPLOY_HINT}"
        reason = super().unavailable(device)
        if reason:
            return reason
        if device == "cuda":
            import onnxruntime

            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                return ("onnxruntime has no CUDA provider here: pip uninstall onnxruntime && "
                        "pip install onnxruntime-gpu (matching your CUDA version)")
        return None

    def part_clock(self, model, batch, workdir):
        from vggprune.timing.breakdown import OnnxClock

        if workdir is None:
            raise ValueError(f"{self.name} needs a workdir for its export and profile")
        return OnnxClock(model, batch, workdir)

    @staticmethod
    def session_options():
        import onnxruntime

        so = onnxruntime.SessionOptions()
        so.intra_op_num_threads = torch.get_num_threads()
        so.inter_op_num_threads = 1
        so.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # A spinning pool burns the cores other processes (and our own timer) need on a shared machine.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return so

    @staticmethod
    def providers(device: str, stream: int = 0) -> list:
        """CPU, or CUDA on ``stream`` in strict float32 (ORT's CUDA provider defaults to TF32 too)."""
        if device != "cuda":
            return ["CPUExecutionProvider"]
        # A stream pointer of 0 (torch's legacy default stream) is ignored by ORT, which then runs on a
        # stream of its own: the caller passes a real stream so CUDA events around a call time ORT's kernels.
        options = {"device_id": str(torch.cuda.current_device()), "use_tf32": "0"}
        if stream:
            options.update(user_compute_stream=str(stream), has_user_compute_stream="1")
        return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]

    def _prepare(self, model, device, memory_format, example_batch, artifact_dir):
        import onnxruntime

        files, reused = export_onnx(model, example_batch, artifact_dir)
        stream = torch.cuda.Stream() if device == "cuda" else None
        session = onnxruntime.InferenceSession(str(files[0]), self.session_options(),
                                               providers=self.providers(device, stream.cuda_stream if stream else 0))
        check_providers(session.get_providers(), device)
        forward = _cuda_forward(session, stream) if device == "cuda" else _cpu_forward(session)
        runner = Runner(self.name, device, forward, files=files, size_bytes=dir_size(files), reused=reused,
                        details={"providers": session.get_providers(), "onnxruntime": onnxruntime.__version__})
        runner.stream = stream  # timed calls run and record their events on it
        return runner


def check_providers(active: list[str], device: str) -> None:
    """Refuse a session that silently fell back to the CPU: onnxruntime-gpu lists its CUDA provider even
    when CUDA or cuDNN libraries fail to load, and then builds a CPU-only session."""
    if device == "cuda" and (not active or active[0] != "CUDAExecutionProvider"):
        raise UserError(f"onnxruntime built a session on {', '.join(active) or 'no provider'} instead of "
                        "CUDAExecutionProvider (its CUDA or cuDNN libraries did not load; see ORT's log above): "
                        "install the onnxruntime-gpu build that matches this CUDA and cuDNN")


def _cpu_forward(session):
    def forward(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run([OUTPUT], {INPUT: _to_numpy(batch)})[0])

    return forward


def _cuda_forward(session, stream):
    """Run on CUDA tensors in place (IO binding): no host round trip, logits stay on the GPU. ORT works on
    ``stream``, ordered after the caller's stream (which wrote the input) and before its next use of the logits."""
    import numpy as np

    num_classes = session.get_outputs()[0].shape[1]

    def forward(batch: torch.Tensor) -> torch.Tensor:
        caller = torch.cuda.current_stream()
        stream.wait_stream(caller)
        with torch.cuda.stream(stream):
            batch = batch.contiguous()
            out = torch.empty((batch.shape[0], num_classes), device=batch.device, dtype=torch.float32)
            binding = session.io_binding()
            index = batch.device.index or 0
            binding.bind_input(INPUT, "cuda", index, np.float32, tuple(batch.shape), batch.data_ptr())
            binding.bind_output(OUTPUT, "cuda", index, np.float32, tuple(out.shape), out.data_ptr())
            session.run_with_iobinding(binding)
        caller.wait_stream(stream)
        return out

    return forward


# One read of each export file, shared by the runners alive: OpenVINO maps the weights from the file and
# compiles from that mapping, so a runner reading the file again would map (and count) the weights again.
_GRAPHS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _shared_graph(core, path: Path):
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    graph = _GRAPHS.get(key)
    if graph is None:
        graph = _GRAPHS[key] = core.read_model(str(path))
    return graph


class OpenVINORuntime(Runtime):
    """OpenVINO on CPU, f32 (it may otherwise pick bf16 on AVX512-BF16 CPUs), latency hint.

    The exported graph has a dynamic batch; the batch size the runner sees is compiled for on first
    use, re-shaped to that static shape first (static shapes let the CPU plugin plan memory and
    kernels once). Only the last shape's compiled model is kept: each holds its own copy of the weights
    (0.6 GB for the seed model), and a timed runner sees one batch size. OpenVINO's GPU plugin targets
    Intel GPUs, so this runtime is CPU-only: CPU tensors in, CPU logits out.
    """

    name = "openvino"
    devices = ("cpu",)
    modules = ("openvino",)
    reads_module = False

    def unavailable(self, device: str) -> str | None:
        if device != "cpu":  # said first: installing openvino would not help
            return f"openvino runs on cpu only here (its GPU plugin is for Intel GPUs), not on {device}"
        missing = _missing("openvino", "onnx", "onnxscript")
        if missing:
            return f"{self.name} needs {missing}: {DEPLOY_HINT}"
        return super().unavailable(device)

    @staticmethod
    def config() -> dict:
        return {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": torch.get_num_threads(),
                "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}

    def _prepare(self, model, device, memory_format, example_batch, artifact_dir):
        import openvino

        files, reused = export_onnx(model, example_batch, artifact_dir)
        with keep_signal_stack():
            core = openvino.Core()
            graph = _shared_graph(core, files[0])  # held: later batch sizes need no files
        compiled: dict[tuple[int, ...], object] = {}
        config = self.config()

        def forward(batch: torch.Tensor) -> torch.Tensor:
            shape = tuple(batch.shape)
            if shape not in compiled:
                compiled.clear()  # one compiled model at a time: each holds a copy of the weights
                static = graph.clone()
                static.reshape({INPUT: list(shape)})
                with keep_signal_stack():
                    compiled[shape] = core.compile_model(static, "CPU", config)
            # Inputs shared (no copy), outputs copied out of the request's buffer (share_outputs=False).
            return torch.from_numpy(compiled[shape](_to_numpy(batch), share_inputs=True, share_outputs=False)[0])

        return Runner(self.name, device, forward, files=files, size_bytes=dir_size(files), reused=reused,
                      details={"openvino": openvino.__version__, "ov_config": {k: str(v) for k, v in config.items()}})
