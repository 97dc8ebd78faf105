"""The latency fields of a case record, derived from its timed rounds (no torch: reports use it too)."""

from __future__ import annotations

import numpy as np

from vggprune.results.record import NOISY
from vggprune.stats import paired_speedup


def summarize(seconds: list[float], batch_size: int, base_seconds: list[float] | None = None,
              gpu_ms: list[float] | None = None, blocks: int = 1, run_spread: float = 0.0) -> dict:
    """The latency fields of a case record: quartiles in ms, noise (IQR/median), images/s at the
    median, and with the paired base rounds the speed-up and its 95 % CI (widened by ``run_spread``,
    see :func:`vggprune.stats.widen`)."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        return {"rounds": 0, "blocks": blocks, "latency_p50_ms": None, "latency_q1_ms": None, "latency_q3_ms": None,
                "latency_mean_ms": None, "latency_noise": None, "images_per_s": None, "noisy": False,
                "gpu_time_p50_ms": None, "base_latency_p50_ms": None, "measured_speedup": None,
                "measured_speedup_ci": None}
    q1, p50, q3 = (float(v) for v in np.percentile(ms, [25, 50, 75]))
    noise = (q3 - q1) / p50
    out = {
        "rounds": int(ms.size), "latency_p50_ms": round(p50, 4), "latency_q1_ms": round(q1, 4),
        "latency_q3_ms": round(q3, 4), "latency_mean_ms": round(float(ms.mean()), 4),
        "latency_noise": round(noise, 4), "images_per_s": round(batch_size / (p50 / 1e3), 2),
        "noisy": bool(noise > NOISY),
        "gpu_time_p50_ms": round(float(np.median(gpu_ms)), 4) if gpu_ms else None, "blocks": blocks,
        "base_latency_p50_ms": None, "measured_speedup": None, "measured_speedup_ci": None,
    }
    if base_seconds:
        speedup, (low, high) = paired_speedup(base_seconds, seconds, blocks, run_spread=run_spread)
        out.update(run_spread=run_spread, base_latency_p50_ms=round(float(np.median(base_seconds)) * 1e3, 4),
                   measured_speedup=round(speedup, 4), measured_speedup_ci=[round(low, 4), round(high, 4)])
    return out
