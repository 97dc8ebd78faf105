"""How one case is timed: its pair of timed callables, loops and rounds, fresh copies per block, and
the blocks timed in worker processes. The harness gates a case and records it; this plans the timing."""

from __future__ import annotations

import zlib

import torch

from vggprune.identity import Case
from vggprune.runtimes import get_runtime
from vggprune.runtimes.base import model_fingerprint
from vggprune.settings import RunSettings
from vggprune.store import ModelStore, PreparedModel
from vggprune.timing.evidence import Evidence, size_evidence
from vggprune.timing.pairing import BLOCKS, PairedRounds, TimedForward, make_batch
from vggprune.timing.workers import Block, Workers, in_turn, model_bytes, split_rounds, timed_pair


def timing_identity(model: torch.nn.Module) -> tuple:
    """What a timed copy of ``model`` is made of: its weights (their fingerprint), its modules with their
    settings (``repr``) and every tensor's shape and strides. Models equal in it run the same forwards."""
    layout = tuple((name, tuple(t.shape), t.stride(), t.dtype) for name, t in model.state_dict().items())
    return model_fingerprint(model), repr(model), layout


class TimingPlan:
    """Times the cases of one run with the models of ``store``; worker processes start on first use."""

    def __init__(self, store: ModelStore, settings: RunSettings) -> None:
        self.store = store
        self.settings = settings
        self.profile = settings.profile
        self.workers = Workers(settings.processes - 1, settings.threads, settings.axes.runtimes)

    def _pair(self, case: Case) -> tuple[PreparedModel, PreparedModel]:
        """(base, case) models; the base case is paired with a second copy of itself (an A/A check)."""
        return self.store.base, self.store.base if case.model.is_base else self.store.prepared(case.model)

    def forwards(self, case: Case) -> tuple[TimedForward, TimedForward]:
        """(base, case) timed callables on the case's device and batch, in the case's runtime: new copies,
        made in the first block's turn (see ``in_turn``), which warm-up, pilot and the first block run on."""
        runtime = get_runtime(case.runtime)
        self.store.page_out(runtime)  # after the outputs were verified against eager, which reads the models
        batch = make_batch(case.batch_size, self.profile.image_size, case.device,
                           memory_format=self.settings.memory_format)

        def maker(prepared: PreparedModel):
            return lambda: self.store.make(prepared, runtime, case.device, case.batch_size)

        base, model = in_turn([maker(p) for p in self._pair(case)], self._first_turn(case))
        return timed_pair(base, model, batch)

    def processes(self, case: Case, rounds: int) -> int:
        """How many processes time the case's rounds: this one, then a worker per further block (CPU
        only, runtimes that allow it; CUDA stays in the process that owns the context)."""
        if case.device != "cpu" or not get_runtime(case.runtime).in_workers:
            return 1
        return len(split_rounds(rounds, self.settings.processes))

    def evidence(self, case: Case, base_forward: TimedForward, case_forward: TimedForward) -> Evidence:
        """Warm the pair up and size the case's evidence: loops per round, and rounds from a pilot
        (or ``--latency-rounds`` as given); see vggprune.timing.evidence."""
        return size_evidence(base_forward, case_forward, warmup=self.profile.latency_warmup,
                             budget_s=self.profile.latency_budget_s, fixed_rounds=self.settings.fixed_rounds,
                             seed=self._seed(case))

    def start_workers(self, case: Case, evidence: Evidence) -> None:
        """Start the timing workers if the case uses them (call before timing: they import torch)."""
        if self.processes(case, evidence.rounds) > 1:
            self.workers.start()

    def pairing(self, case: Case, base_forward: TimedForward, case_forward: TimedForward,
                evidence: Evidence) -> PairedRounds:
        """The base's rounds for ``benchmark.pedantic(setup=..., teardown=...)``, for this process's
        share of the rounds; the shuffle is seeded by the case id so a rerun draws the same order.
        The first block runs on the pair :meth:`forwards` made, each later one on fresh copies of both
        models (new sessions in ONNX Runtime and OpenVINO; see PairedRounds), each copy made first in
        every other block (``in_turn``). Each new copy is made before the one it replaces is retired, so
        it lands elsewhere in memory, and at most three copies are alive. With workers, this process
        times one block and each worker one more."""
        runtime = get_runtime(case.runtime)
        models = self._pair(case)
        forwards, turns = (base_forward, case_forward), iter(range(self._first_turn(case) + 1, 1 << 30))

        def swap(forward: TimedForward, prepared: PreparedModel):
            def replace():
                runner = self.store.make(prepared, runtime, case.device, case.batch_size)  # the old copy still
                # holds its addresses; a round's worth of untimed calls on new memory: page faults, then
                # caches and kernels warm (with one call, the first timed round of each block ran 25 % slower)
                TimedForward(runner, forward.batch).untimed(calls=max(2, forward.loops))
                old, forward.fn = forward.fn, runner
                self.store.retire([old])
                return runner
            return replace

        def refresh() -> None:
            in_turn([swap(f, p) for f, p in zip(forwards, models)], next(turns))
            for k in range(runtime.settle_rounds):  # the new pair run in turn, as the timed rounds run them
                for forward in forwards[k % 2:] + forwards[:k % 2]:
                    forward.untimed(calls=forward.loops)

        processes = self.processes(case, evidence.rounds)
        here = split_rounds(evidence.rounds, processes)[0]
        return PairedRounds(base_forward, warmup=0, seed=self._seed(case), rounds=here,  # warmed up by evidence()
                            refresh=refresh if runtime.fresh_copies else None,
                            blocks=BLOCKS if processes == 1 else 1)

    def _first_turn(self, case: Case) -> int:
        """The first block's turn (see ``in_turn``); later blocks, here or in workers, count on from it."""
        return self._seed(case) % 2

    @staticmethod
    def _seed(case: Case, block: int = 0) -> int:
        return zlib.crc32(f"{case.id}#{block}".encode()) if block else zlib.crc32(case.id.encode())

    def time_elsewhere(self, case: Case, evidence: Evidence) -> list[tuple[list[float], list[float]]]:
        """(case seconds, base seconds) of each further block, each timed in its own worker process."""
        shares = split_rounds(evidence.rounds, self.processes(case, evidence.rounds))[1:]
        if not shares:
            return []
        runtime = get_runtime(case.runtime)
        base, prepared = self._pair(case)
        payloads = model_bytes(base.model), model_bytes(prepared.model)  # for this case only, then freed
        blocks = [Block(base=payloads[0], case=payloads[1], runtime=case.runtime, device=case.device,
                        memory_format=self.settings.memory_format, image_size=self.profile.image_size,
                        batch_size=case.batch_size, base_artifacts=self.store.artifacts(base, runtime),
                        case_artifacts=self.store.artifacts(prepared, runtime), warmup=self.profile.latency_warmup,
                        rounds=rounds, seed=self._seed(case, k + 1), turn=self._first_turn(case) + k + 1,
                        loops=evidence.loops)
                  for k, rounds in enumerate(shares)]
        return self.workers.time(blocks)
