"""One owner for every model a benchmark run holds: the trained models, and each copy, twin and runtime
session made to time them.

A run visits cases model-major, so the store keeps the base and the one pruned model being measured
(on CPU, as trained). Everything made to time a case (a copy on the device, a runtime session, its A/A
twin) is made through :meth:`ModelStore.make` and freed by :meth:`ModelStore.end_case` before the next
case starts; a block of rounds that swaps in fresh copies retires each previous copy once its
replacement exists (:meth:`ModelStore.retire`), one at a time, so at most three copies are alive. Peak memory is then
bounded by the largest single case, not by the number of cases, runtimes or blocks.
"""

from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vggprune.counting import count_params_macs
from vggprune.identity import BASE, Case, ModelKey
from vggprune.limits import available_memory, inference_bytes_per_image
from vggprune.models import VGG11_CFG
from vggprune.runtimes.base import Runner, Runtime, map_weights, model_fingerprint, state_bytes
from vggprune.timing.allocator import release_free_memory
from vggprune.timing.pairing import make_batch

# Every timed copy any store made and that is still alive somewhere (a test counts them).
LIVE: weakref.WeakSet = weakref.WeakSet()
# Copies alive at a case's peak: the pair being timed and one new copy, made before the copy it replaces
# is freed so it cannot reuse the same addresses (one role is swapped at a time).
PEAK_COPIES = 3


@dataclass
class PreparedModel:
    """A trained model (CPU, eval mode) with its counts, accuracy evidence and verification results."""

    key: ModelKey
    model: torch.nn.Module
    params: int
    macs: int
    top1: float | None
    top5: float | None
    reason: str | None  # why top1 is None
    correct: str | None = None  # per test image, test-split order
    top1_before_finetune: float | None = None
    correct_before_finetune: str | None = None
    from_cache: bool = False
    info: dict = field(default_factory=dict)  # what the pipeline recorded when it trained the model
    reference: list[torch.Tensor] | None = None  # eager logits on the verification batches, in order
    verified: dict[tuple[str, str], object] = field(default_factory=dict)  # (runtime, device) → Verification

    @property
    def weights_sha256(self) -> str:
        """Of the trained state_dict, so compare can tell 'same weights' from 'retrained differently'."""
        return model_fingerprint(self.model)[:16]

    @property
    def nbytes(self) -> int:
        return state_bytes(self.model)


class ModelStore:
    """Creates and frees every model copy of a run (see the module docstring)."""

    def __init__(self, pipeline, image_size: int, memory_format: str) -> None:
        self.pipeline = pipeline
        self.image_size = image_size
        self.memory_format = memory_format
        self._base: PreparedModel | None = None
        self._current: PreparedModel | None = None
        self._case: list[Runner] = []  # what the current case made, strongly held until it ends
        self._cuda = False

    # trained models ------------------------------------------------------------------------------
    def prepared(self, key: ModelKey) -> PreparedModel:
        if key.is_base:
            if self._base is None:
                self._base = self._prepare(BASE)
            return self._base
        if self._current is None or self._current.key != key:
            self._current = None  # release the previous model before building the next
            self._current = self._prepare(key)
        return self._current

    @property
    def base(self) -> PreparedModel:
        return self.prepared(BASE)

    def _prepare(self, key: ModelKey) -> PreparedModel:
        # the base is read, never changed (every timed copy is a copy), so the pipeline's own instance will do
        res = self.pipeline.base(shared=True) if key.is_base else self.pipeline.case(key)
        model = res.model.eval()
        params, macs = count_params_macs(model, self.image_size)
        prepared = PreparedModel(key, model, params, macs, res.top1, res.top5, res.reason, correct=res.correct,
                                 top1_before_finetune=res.top1_before_finetune,
                                 correct_before_finetune=res.correct_before_finetune, from_cache=res.from_cache,
                                 info=dict(res.info))
        # Building a model (loading it, pruning a copy of the base) leaves its scratch as free heap, 0.3-0.5 GB
        # for the seed model, which the pinned trim threshold would otherwise keep through the case's peak.
        release_free_memory()
        return prepared

    # timed copies -------------------------------------------------------------------------------
    def artifacts(self, prepared: PreparedModel, runtime: Runtime) -> Path | None:
        """Where ``runtime`` keeps its files for ``prepared`` (None: it exports nothing, or no cache)."""
        return self.pipeline.export_dir(prepared.key) if runtime.exports else None

    def make(self, prepared: PreparedModel, runtime: Runtime, device: str, batch_size: int = 1) -> Runner:
        """A new copy of ``prepared`` in ``runtime`` on ``device``, held until the case ends or it is retired.
        Its first call (in prepare) is at ``batch_size``, the size it will run: a runtime that compiles
        per shape (OpenVINO) then compiles once."""
        example = make_batch(batch_size, self.image_size, "cpu")
        runner = runtime.prepare(prepared.model, device, self.memory_format, example,
                                 self.artifacts(prepared, runtime))
        self._cuda = self._cuda or device == "cuda"
        self._case.append(runner)
        LIVE.add(runner)
        return runner

    def page_out(self, runtime: Runtime) -> None:
        """Before a case in a runtime that makes its copies from exported files: the trained models'
        weights are mapped from disk, not held, so the case's peak holds only what it times (see
        :func:`vggprune.runtimes.base.map_weights`). Nothing to do without an export cache."""
        if runtime.reads_module:
            return
        for prepared in (self._base, self._current):  # the current model is never the base (see prepared)
            directory = None if prepared is None else self.pipeline.export_dir(prepared.key)
            if directory is not None:
                map_weights(prepared.model, directory)
        release_free_memory()

    def retire(self, runners: list) -> None:
        """Stop holding ``runners`` (an earlier generation): freed once their last user lets go."""
        gone = {id(r) for r in runners}
        self._case = [r for r in self._case if id(r) not in gone]

    def end_case(self) -> None:
        """Free everything the case made, before the next case allocates."""
        self._case.clear()
        if LIVE:  # a copy still alive is caught in a reference cycle: collect it (a full collection costs 0.2 s)
            gc.collect()
        release_free_memory()
        if self._cuda:
            torch.cuda.empty_cache()  # give the freed blocks back, so the next case's check sees them

    @staticmethod
    def alive() -> int:
        """Timed copies alive anywhere in the process."""
        return len(LIVE)

    # will it fit? --------------------------------------------------------------------------------
    def estimate_bytes(self, case: Case) -> int:
        """Memory a case adds at its peak: the (base, case) pair, a new copy of the larger, one batch's activations."""
        base = self.base
        model = base if case.model.is_base else self.prepared(case.model)
        spec = base.model.spec
        pools = [c == "M" for c in VGG11_CFG]
        pool_after = tuple(pools[i + 1] for i, c in enumerate(VGG11_CFG) if c != "M")
        activations = case.batch_size * inference_bytes_per_image(spec.conv_widths, pool_after, self.image_size)
        return base.nbytes + model.nbytes + max(base.nbytes, model.nbytes) + activations

    def refusal(self, case: Case) -> str | None:
        """None when the case fits the memory free on its device now, else one line with the estimate."""
        need = self.estimate_bytes(case)
        if case.device == "cuda":
            free, where = torch.cuda.mem_get_info()[0], "GPU memory free"
        else:
            free, where = available_memory(), "memory available"
        if free is None or need <= free:
            return None
        return (f"{case.id} needs about {need / 2**30:.1f} GiB ({PEAK_COPIES} model copies "
                f"plus a batch's activations) but {free / 2**30:.1f} GiB of {where}: use a smaller --batch-sizes "
                f"or fewer --runtimes at once")
