"""Evidence sized per case: loops so a round is long enough to measure, rounds from a pilot's spread."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from vggprune.models import build_vgg11
from vggprune.timing.evidence import MAX_ROUNDS, MIN_ROUNDS, PILOT_ROUNDS, ROUND_TARGET_S, rounds_for, size_evidence
from vggprune.timing.pairing import BLOCKS, PairedRounds, TimedForward, measure
from vggprune.timing.plan import timing_identity


class FakeClock:
    """Time that moves only when a fake forward runs: each costs its own milliseconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _forward(clock: FakeClock, costs_ms) -> TimedForward:
    costs = iter(costs_ms)

    def fn(batch):
        clock.now += next(costs) / 1e3
        return batch

    return TimedForward(fn, torch.zeros(1))


def test_rounds_follow_the_spread_for_the_wanted_half_width():
    # n = (1.96 * 1.2533 * sd / ln 1.03)^2, derived here by hand for sd = 0.1: 69.05 -> 70 (whole blocks)
    assert rounds_for(0.1, pair_s=1e-3, budget_s=10.0) == 70
    assert rounds_for(0.0, pair_s=1e-3, budget_s=10.0) == MIN_ROUNDS  # no spread: the floor
    assert rounds_for(5.0, pair_s=1e-3, budget_s=1e9) == MAX_ROUNDS  # huge spread: the ceiling
    assert rounds_for(0.1, pair_s=1e-3, budget_s=0.045) == 45  # the budget allows 45 pairs of 1 ms
    assert rounds_for(0.1, pair_s=1.0, budget_s=2.0) == MIN_ROUNDS  # a slow model still gets the floor
    assert all(rounds_for(sd, 1e-3, 1.0) % BLOCKS == 0 for sd in (0.01, 0.05, 0.2))


def test_a_fast_forward_gets_loops_and_a_quiet_pilot_the_floor():
    clock = FakeClock()
    base, case = _forward(clock, [0.4] * 10_000), _forward(clock, [0.2] * 10_000)
    evidence = size_evidence(base, case, warmup=3, budget_s=10.0, clock=clock)
    # the faster side (0.2 ms) needs ceil(4 ms / 0.2 ms) = 20 forwards for a 4 ms round
    assert evidence.loops == math.ceil(ROUND_TARGET_S / 0.2e-3) == 20 == base.loops == case.loops
    assert evidence.pilot_sd == 0.0 and evidence.rounds == MIN_ROUNDS
    # what is timed afterwards is per batch, whatever the loops
    paired = PairedRounds(base, warmup=0, clock=clock)
    assert measure(case, rounds=4, warmup=0, paired=paired, clock=clock) == pytest.approx([0.2e-3] * 4)
    assert paired.times() == pytest.approx([0.4e-3] * 4)


def test_a_noisy_pilot_gets_more_rounds_and_fixed_rounds_are_kept():
    clock = FakeClock()
    noisy = [3.0 if i % 2 else 5.0 for i in range(10_000)]  # 3 or 5 ms per forward, no loops needed
    base, case = _forward(clock, noisy), _forward(clock, [4.0] * 10_000)
    evidence = size_evidence(base, case, warmup=2, budget_s=100.0, clock=clock)
    assert evidence.loops == 1 and evidence.pilot_sd > 0.1
    assert evidence.rounds == rounds_for(evidence.pilot_sd, 8e-3, 100.0) > MIN_ROUNDS
    fixed = size_evidence(base, case, warmup=2, budget_s=100.0, fixed_rounds=7, clock=clock)
    assert (fixed.rounds, fixed.pilot_sd) == (7, None)


def test_the_pilot_is_not_part_of_the_published_rounds():
    """Rounds are fixed from a discarded pilot, so no look at the published rounds decides when to stop."""
    clock = FakeClock()
    calls = []
    base = _forward(clock, [1.0] * 10_000)
    case = _forward(clock, [1.0] * 10_000)
    case.fn = (lambda f: (lambda b: (calls.append(1), f(b))[1]))(case.fn)
    size_evidence(base, case, warmup=3, budget_s=1.0, clock=clock)
    # warm-up (3 rounds of 1 forward) and pilot (PILOT_ROUNDS of `loops` forwards) ran before any timed round
    assert len(calls) == 3 + PILOT_ROUNDS * case.loops and case.gpu_times_ms() == []


def test_two_models_share_a_timing_only_when_they_run_the_same_forwards():
    model = build_vgg11("small", 10)
    assert timing_identity(copy.deepcopy(model)) == timing_identity(model)  # a copy runs the same forwards

    other_weights = copy.deepcopy(model)
    with torch.no_grad():
        other_weights.classifier[0].bias[0] += 1.0
    transposed = copy.deepcopy(model)  # the same values, held column-major: another memory access pattern
    fc = transposed.classifier[0]
    fc.weight = torch.nn.Parameter(fc.weight.detach().t().contiguous().t())
    assert torch.equal(fc.weight, model.classifier[0].weight)
    other_setting = copy.deepcopy(model)
    other_setting.features[3].ceil_mode = True  # same tensors, another forward
    for changed in (other_weights, transposed, other_setting):
        assert timing_identity(changed) != timing_identity(model)
