"""The benchmark cases: one accuracy gate per model, one paired, timed inference per (model, runtime,
device, batch size).

Run it: ``pytest bench/ --benchmark-json=reports/run.json`` (options: ``pytest bench/ --help``).
"""

from __future__ import annotations

import warnings

import pytest

from vggprune.timing.watch import CpuWatch


def replay(benchmark, seconds: list[float]) -> None:
    """Give ``benchmark`` rounds timed for an identical model as its own (pytest-benchmark's stats, which
    its JSON and terminal table are made from; it has no public way to take rounds timed elsewhere)."""
    benchmark._mode = "replay"  # used, as pedantic(...) marks it
    if benchmark.enabled:
        stats = benchmark._make_stats(1)
        for s in seconds:
            stats.update(s)


def test_accuracy(harness, model_key):
    """The base beats chance; a pruned case loses no more than the allowed drop vs its base (McNemar);
    each meets the thresholds file's minimum where it has one; skips with why when not measured."""
    unlearned = harness.base_unlearned()  # checked before a pruned case is built from a useless base
    assert model_key.is_base or unlearned is None, f"not gated: {unlearned}"
    prepared = harness.prepared(model_key)
    failure, skip_reason = harness.accuracy_gate(prepared)
    if skip_reason:
        pytest.skip(skip_reason)
    assert failure is None, failure


def test_inference(benchmark, harness, case):
    """Gates first (exact parameter count, accuracy), then the case timed round by round against its base,
    in this process and (on CPU) in worker processes, one block each."""
    unlearned = harness.base_unlearned()
    assert unlearned is None, f"not timed: {unlearned}"
    prepared = harness.prepared(case.model)
    failure = harness.params_failure(prepared)
    assert failure is None, f"{case.id}: {failure}"
    accuracy_failure, _ = harness.accuracy_gate(prepared)
    assert accuracy_failure is None, f"not timed: {accuracy_failure}"
    unavailable = harness.runtime_unavailable(case)
    if unavailable:
        pytest.skip(unavailable)
    runtime_failure = harness.runtime_failure(case)  # outputs checked against eager before timing
    assert runtime_failure is None, f"not timed: {runtime_failure}"
    timed = harness.already_timed(case)  # the same model, timed already in this run: its rounds are this case's
    if timed is not None:
        replay(benchmark, timed.times_s)
        benchmark.extra_info.update(harness.record_shared(case, timed).to_extra_info())
        return
    refusal = harness.refusal(case)  # before any copy is made: a case that cannot fit is not started
    if refusal:
        pytest.skip(refusal)

    base, forward = harness.timing.forwards(case)
    evidence = harness.timing.evidence(case, base, forward)  # warm-up, loops per round, rounds from a pilot
    paired = harness.timing.pairing(case, base, forward, evidence)
    harness.timing.start_workers(case, evidence)  # started before any timing: their imports are not in the window
    with CpuWatch() as watch:
        benchmark.pedantic(forward, setup=paired.setup, teardown=paired.teardown,
                           rounds=paired.rounds, warmup_rounds=0)
        elsewhere = harness.timing.time_elsewhere(case, evidence)  # the further blocks, each in a worker process
    seconds = benchmark.stats.stats.data if benchmark.stats else []
    seconds[:] = [s / evidence.loops for s in seconds]  # per batch, as pytest-benchmark's iterations report
    for block_seconds, _ in elsewhere:  # appended after pytest-benchmark's own rounds, in block order
        for s in block_seconds:
            benchmark.stats.stats.update(s)
    base_seconds = paired.times() + [s for _, base_block in elsewhere for s in base_block]
    record = harness.record(case, seconds, base_seconds, forward, watch, blocks=paired.blocks + len(elsewhere),
                            evidence=evidence)
    benchmark.extra_info.update(record.to_extra_info())
    if record.contended:
        warnings.warn(f"{case.id}: other processes used {record.other_cpu_cores:.2f} cores while it was timed; "
                      f"its latency is marked as contended", stacklevel=1)
