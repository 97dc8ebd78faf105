"""Timing blocks in worker processes (``--timing-processes``): how rounds are split, and a real worker."""

from __future__ import annotations

import os

import torch

from vggprune.models import build_vgg11
from vggprune.stats import block_ids
from vggprune.timing.workers import Block, Workers, model_bytes, split_rounds, time_block


def test_rounds_split_into_the_blocks_the_statistics_will_see():
    for processes in (1, 2, 3, 4, 5, 7):
        for rounds in range(1, 41):
            shares = split_rounds(rounds, processes)
            assert sum(shares) == rounds and all(s > 0 for s in shares) and len(shares) <= processes
            # each process times exactly one of the contiguous blocks the bootstrap resamples
            ids = block_ids(rounds, len(shares)).tolist()
            assert ids == [k for k, share in enumerate(shares) for _ in range(share)], (rounds, processes)


def tiny_block(rounds: int = 4, seed: int = 1) -> Block:
    model = model_bytes(build_vgg11("small", num_classes=10).eval())
    return Block(base=model, case=model, runtime="eager", device="cpu", memory_format="channels_last",
                 image_size=32, batch_size=2, base_artifacts=None, case_artifacts=None, warmup=1, rounds=rounds,
                 seed=seed)


def test_a_block_gives_paired_rounds_for_case_and_base():
    seconds, base_seconds = time_block(tiny_block(rounds=5))
    assert len(seconds) == len(base_seconds) == 5 and min(seconds + base_seconds) > 0


def test_workers_are_other_processes_and_time_each_block_in_turn():
    workers = Workers(2, threads=torch.get_num_threads())
    try:
        results = workers.time([tiny_block(3, seed=1), tiny_block(2, seed=2), tiny_block(4, seed=3)])
        assert len(workers.pids) == 2 and os.getpid() not in workers.pids and len(set(workers.pids)) == 2
    finally:
        workers.close()
    assert [len(case) for case, _ in results] == [3, 2, 4] == [len(base) for _, base in results]
    assert workers.pids == []  # closed: nothing left running


def test_fresh_copies_take_turns_being_made_first():
    from vggprune.timing.workers import in_turn

    calls = []

    def maker(name: str):
        return lambda: calls.append(name) or f"{name} copy"
    for turn in range(5):  # five blocks
        # whatever the order, each result lands in its maker's place
        assert in_turn([maker("base"), maker("case")], turn) == ["base copy", "case copy"]
    assert calls[::2] == ["base", "case", "base", "case", "base"]  # who went first, block by block
    calls.clear()
    in_turn([maker("base"), maker("case")], 7)
    assert calls == ["case", "base"]
