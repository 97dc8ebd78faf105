"""The benchmark cases: one accuracy gate per model, one timed inference per (model, device, batch size).

Run it: ``pytest bench/ --benchmark-json=reports/run.json`` (options: ``pytest bench/ --help``).
"""

from __future__ import annotations

import pytest

from vggprune.latency import make_batch, summarize, timed_callable


def test_accuracy(harness, model_key):
    """Top-1 on the test split meets the profile's threshold (and drop vs the base), or skips with why."""
    prepared = harness.prepared(model_key)
    failure, skip_reason = harness.accuracy_gate(prepared)
    if skip_reason:
        pytest.skip(skip_reason)
    assert failure is None, failure


def test_inference(benchmark, harness, case):
    """Gates first (exact parameter count, accuracy), then per-batch latency of the forward pass."""
    prepared = harness.prepared(case.model)
    failure = harness.params_failure(prepared)
    assert failure is None, f"{case.id}: {failure}"
    accuracy_failure, _ = harness.accuracy_gate(prepared)
    assert accuracy_failure is None, f"not timed: {accuracy_failure}"

    model = harness.model_on(prepared, case.device)
    batch = make_batch(case.batch_size, harness.profile.image_size, case.device,
                       memory_format=harness.settings.memory_format)
    forward = timed_callable(model, batch)
    benchmark.extra_info.update(harness.extra_info(case, prepared))
    benchmark.pedantic(forward, rounds=harness.profile.latency_rounds,
                       warmup_rounds=harness.profile.latency_warmup, iterations=1)
    seconds = benchmark.stats.stats.data if benchmark.stats else []
    # pedantic's warm-up calls also ran `forward`: keep only the timed rounds' GPU times.
    gpu_ms = forward.gpu_times_ms()[-len(seconds):] if seconds else []
    benchmark.extra_info.update(summarize(seconds, case.batch_size, gpu_ms))
