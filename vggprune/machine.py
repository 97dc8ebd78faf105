"""What a run was measured on: the CPU, the GPU and its software stack, the numeric mode, peak memory.

Everything here is read, never assumed: a GPU's driver, cuDNN and compute capability come from the
device, and the float32 mode is set once (:func:`strict_fp32`) and then recorded as it is.
"""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch

# The widest vector extension decides which kernels oneDNN/MKL run, hence speed and trained weights.
_ISA_LEVELS = (("amx_tile", "AMX"), ("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX512"), ("avx2", "AVX2"),
               ("asimd", "NEON"))


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def run_versions() -> dict[str, str]:
    """The versions a run's numbers depend on, for ``machine_info`` (the cache key has its own list)."""
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__,
            "torch_pruning": package_version("torch-pruning")}


def cpu_model() -> str:
    """The CPU's name and widest vector ISA, e.g. 'AMD EPYC [AVX512-BF16]': VMs often report only a
    family name, and two CPUs of one family with different ISAs run different kernels."""
    name, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if not name and key in ("model name", "hardware", "cpu model"):
                    name = value.strip()
                elif not flags and key in ("flags", "features"):
                    flags = set(value.split())
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    isa = next((label for flag, label in _ISA_LEVELS if flag in flags), None)
    return f"{name} [{isa}]" if isa else name


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return cpu_model()


def strict_fp32() -> dict[str, bool]:
    """Turn TF32 off so "float32" means float32 (Ampere and newer default cuDNN convolutions to TF32,
    whose 10-bit mantissa errs about 10x more than the runtime checks allow), and return the flags."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return numeric_flags()


def numeric_flags() -> dict[str, bool]:
    """The switches that decide what a CUDA "float32" forward computes, as they are now."""
    return {"cuda_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic)}


def _driver_version() -> str | None:
    """The installed NVIDIA driver (not the CUDA version torch was built with), when it can be read."""
    try:
        with open("/proc/driver/nvidia/version", encoding="ascii", errors="replace") as f:
            for word in f.readline().split():
                if word[:1].isdigit() and "." in word:
                    return word
    except OSError:
        pass
    try:
        value = torch._C._cuda_getDriverVersion()  # e.g. 12040 = the newest CUDA the driver supports
        return f"supports CUDA {value // 1000}.{value % 1000 // 10}"
    except (AttributeError, RuntimeError):
        return None


def gpu_provenance() -> dict[str, Any] | None:
    """The GPU and its stack, as the JSON's ``machine_info`` records it; None without CUDA."""
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    major, minor = torch.cuda.get_device_capability(0)
    ort = next((name for name in ("onnxruntime-gpu", "onnxruntime") if package_version(name) != "not installed"),
               None)
    try:
        cudnn = torch.backends.cudnn.version()
    except (RuntimeError, ValueError):  # a build or device cuDNN cannot load on: recorded, not fatal
        cudnn = None
    return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}",
            "memory_mb": round(props.total_memory / 2**20), "driver": _driver_version(),
            "cuda_runtime": torch.version.cuda, "cudnn": cudnn,
            "onnxruntime_package": f"{ort} {package_version(ort)}" if ort else None, **numeric_flags()}


# Peak memory ------------------------------------------------------------------------------------

def _status_kb(pid: int | str, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, CPU ticks of it and its reaped children) for every live process; empty off Linux."""
    table: dict[int, tuple[int, int]] = {}
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return table
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
        except OSError:
            continue  # exited meanwhile
        table[pid] = (int(fields[1]), sum(int(v) for v in fields[11:15]))  # utime, stime, reaped children's
    return table


def descendants(table: dict[int, tuple[int, int]] | None = None) -> list[int]:
    """This process's live descendants (timing workers, multiprocessing's helpers)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in (process_table() if table is None else table).items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


class PeakMemory:
    """The process tree's resident-memory high-water mark over a span (TorchBench's ``cpu_peak_mem``),
    and the GPU allocator's peak on CUDA.

    Linux keeps a per-process peak (``VmHWM``) that writing 5 to ``/proc/self/clear_refs`` resets, so
    each case gets its own peak; live worker processes are added. Elsewhere the peak is None.
    """

    def __init__(self, cuda: bool = False) -> None:
        self.cuda = cuda

    def reset(self) -> None:
        for pid in ("self", *descendants()):
            try:
                with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as f:
                    f.write("5")
            except OSError:
                pass
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def cpu_mb(self) -> float | None:
        own = _status_kb("self", "VmHWM")
        if own is None:
            return None
        return round((own + sum(_status_kb(p, "VmHWM") or 0 for p in descendants())) / 1024, 1)

    def gpu_mb(self) -> float | None:
        return round(torch.cuda.max_memory_allocated() / 2**20, 1) if self.cuda else None


def rss_mb() -> float | None:
    """This process's resident memory now."""
    kb = _status_kb("self", "VmRSS")
    return None if kb is None else round(kb / 1024, 1)


def trained_on(device: str) -> dict[str, Any]:
    """The identity of the machine training on ``device`` now: what decides the trained weights
    (CPU kernels, GPU, thread count) and the host, to find it again."""
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    return {"hostname": platform.node(), "cpu_model": cpu_model(), "gpu": gpu, "device": device,
            "threads": torch.get_num_threads()}
