"""Block drift probe: two copies of the quick base timed in 5 blocks of 30 paired rounds, on the same two
copies (``same``) or on new ones per block (``fresh``), each round in a random order.

Usage: ``python docs/probes/block_drift.py BATCH same|fresh LOOPS``. It prints each block's medians and
the spread of the block medians; the paired log-ratio shows what the pairing cancels.
"""

import copy
import sys
import time

import numpy as np
import torch

from vggprune.models import build_vgg11
from vggprune.timing.allocator import steady_allocator
from vggprune.timing.pairing import TimedForward, make_batch

torch.set_num_threads(2)
steady_allocator()
torch.manual_seed(0)
model = build_vgg11("small", 10).eval().to(memory_format=torch.channels_last)
batch_size, fresh, loops = int(sys.argv[1]), sys.argv[2] == "fresh", int(sys.argv[3])
batch = make_batch(batch_size, 32, "cpu", memory_format="channels_last")


def copy_of_model() -> TimedForward:
    forward = TimedForward(copy.deepcopy(model), batch)
    forward.loops = loops
    forward.untimed(max(2, loops))
    return forward


pair = [copy_of_model(), copy_of_model()]
for forward in pair:
    forward.untimed(20)
rng = np.random.default_rng(0)
medians = []
for block in range(5):
    if fresh and block:
        pair = [copy_of_model(), copy_of_model()]
    times: list[list[float]] = [[], []]
    for _ in range(30):
        for side in ([0, 1] if rng.random() < 0.5 else [1, 0]):
            t0 = time.perf_counter()
            pair[side]()
            times[side].append((time.perf_counter() - t0) / loops)
    a, b = np.array(times[0]), np.array(times[1])
    medians.append((np.median(a) * 1e3, np.median(b) * 1e3))
    print(f"block {block}: {medians[-1][0]:.3f} / {medians[-1][1]:.3f} ms, "
          f"median log-ratio {np.median(np.log(a / b)):+.3f}")
m = np.array(medians)
drift = (m.max(0) - m.min(0)) / np.median(m, 0)
print(f"block drift (max - min) / median: {drift[0]:.3f} / {drift[1]:.3f}")
