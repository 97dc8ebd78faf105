"""Which machine did the work: the CPU's name and vector ISA, the GPU, the threads and the host.

The harness records it for timing (``cpu_model``) and the pipeline stores it in each checkpoint at
training time (:func:`trained_on`), so a model prepared on another machine (a Ray worker, a GPU box)
says where its weights came from.
"""

from __future__ import annotations

import platform
from typing import Any

# The widest vector extension decides which kernels oneDNN/MKL run, hence speed and trained weights.
_ISA_LEVELS = (("amx_tile", "AMX"), ("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX512"), ("avx2", "AVX2"),
               ("asimd", "NEON"))


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


def trained_on(device: str) -> dict[str, Any]:
    """The identity of the machine training on ``device`` now: what decides the trained weights
    (CPU kernels, GPU, thread count) and the host, to find it again."""
    import torch

    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    return {"hostname": platform.node(), "cpu_model": cpu_model(), "gpu": gpu, "device": device,
            "threads": torch.get_num_threads()}
