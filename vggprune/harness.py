"""What the benchmark harness does per case, without pytest: gate the model, verify its runtime, and
turn the measurements into a :class:`~vggprune.results.record.CaseRecord`.

bench/conftest.py and bench/test_bench.py are thin wrappers around this. Models and every copy made to
time them belong to a :class:`~vggprune.store.ModelStore`, and how a case is timed to its
:class:`~vggprune.timing.plan.TimingPlan` (``harness.timing``); a case ends with :meth:`Harness.end_case`,
which frees what it made before the next case starts.
"""

from __future__ import annotations

import torch

from vggprune.gates import ExpectedParams, Thresholds, check_accuracy, check_learned, check_params, check_pruning_cost
from vggprune.identity import Case, ModelKey
from vggprune.machine import PeakMemory, cpu_model, device_name
from vggprune.results.record import MEASURED, SCHEMA, CaseRecord
from vggprune.results.summary import summarize
from vggprune.runtimes import get_runtime, reference_logits, verify
from vggprune.settings import RunSettings
from vggprune.stats import correct_interval
from vggprune.store import ModelStore, PreparedModel
from vggprune.timing.evidence import Evidence
from vggprune.timing.pairing import TimedForward, make_batch
from vggprune.timing.plan import TimingPlan, timing_identity
from vggprune.timing.watch import CpuWatch

VERIFY_BATCH = 8  # images in the one random batch runtimes are verified on when there is no data


def _ci(correct: str | None) -> list[float] | None:
    interval = correct_interval(correct)
    return None if interval is None else [round(interval[0], 6), round(interval[1], 6)]


class Harness:
    def __init__(self, settings: RunSettings, pipeline=None) -> None:
        from vggprune.pipeline import Pipeline

        self.settings = settings
        self.profile = settings.profile
        self.pipeline = pipeline or Pipeline(
            self.profile, data_root=settings.data_root, download=settings.download, weights=settings.weights,
            cache_dir=settings.cache_dir, use_cache=settings.use_cache, device=settings.train_device)
        self.store = ModelStore(self.pipeline, self.profile.image_size, settings.memory_format)
        self.expected = ExpectedParams.load(settings.expected_params_file)
        self.thresholds = Thresholds.load(settings.thresholds_file)
        self.timed: list[CaseRecord] = []  # every case recorded so far, for the run's summary
        self._timed_models: dict[tuple, CaseRecord] = {}  # what each timed pair was (see already_timed)
        self.timing = TimingPlan(self.store, settings)
        self.peak = PeakMemory(cuda="cuda" in settings.devices)
        self.run_peak_mb: float | None = None  # the process tree's peak over the whole run

    # models and their lifetimes ----------------------------------------------------------------
    def prepared(self, key: ModelKey) -> PreparedModel:
        return self.store.prepared(key)

    @property
    def base(self) -> PreparedModel:
        return self.store.base

    def begin_case(self) -> None:
        """Start a case's own peak-memory window (the run's peak keeps what came before)."""
        self._fold_peak()
        self.peak.reset()

    def end_case(self) -> None:
        """Free every copy and session the case made."""
        self.store.end_case()
        self._fold_peak()

    def _fold_peak(self) -> None:
        now = self.peak.cpu_mb()
        if now is not None:
            self.run_peak_mb = max(self.run_peak_mb or 0.0, now)

    def refusal(self, case: Case) -> str | None:
        """Why the case cannot fit in memory on its device now (one line with the estimate), or None."""
        return self.store.refusal(case)

    # runtimes ----------------------------------------------------------------------------------
    def runtime_unavailable(self, case: Case) -> str | None:
        """None when the case's runtime can run on its device here, else one line: why and how to get it."""
        return get_runtime(case.runtime).unavailable(case.device)

    def _verification_batches(self):
        """The test split's loader (re-iterable, fixed order), or one fixed random batch without data."""
        if self.pipeline.data_missing_reason:
            return [make_batch(VERIFY_BATCH, self.profile.image_size, "cpu", seed=1)]
        return self.pipeline.data().test

    def _verification_batch_size(self) -> int:
        return VERIFY_BATCH if self.pipeline.data_missing_reason else self.profile.eval_batch_size

    def verify_runtime(self, prepared: PreparedModel, runtime: str, device: str):
        """The runtime's outputs against eager PyTorch on the test split, once per model, runtime and
        device: a runtime that disagrees must not be timed. Only eager's logits are kept, not the images."""
        slot = (runtime, device)
        if slot not in prepared.verified:
            batches = self._verification_batches()
            if prepared.reference is None:
                prepared.reference = reference_logits(prepared.model, batches)
            runner = self.store.make(prepared, get_runtime(runtime), device, self._verification_batch_size())
            prepared.verified[slot] = verify(runner, None, batches, prepared.reference)
            self.store.retire([runner])
            if device == "cuda":
                torch.cuda.synchronize()  # nothing of the check still running when a timed round starts
        return prepared.verified[slot]

    def runtime_failure(self, case: Case) -> str | None:
        """Why the case's (or its base's) runtime outputs may not be timed; None for the reference runtime."""
        if get_runtime(case.runtime).reference:
            return None
        for prepared in {id(p): p for p in (self.base, self.prepared(case.model))}.values():
            failure = self.verify_runtime(prepared, case.runtime, case.device).failure()
            if failure:
                return f"{prepared.key.label()}: {failure}"
        return None

    # gates -------------------------------------------------------------------------------------
    def params_failure(self, prepared: PreparedModel) -> str | None:
        key = prepared.key
        expected = self.expected.lookup(self.profile.model, prepared.model.spec.num_classes, key.scope, key.rate,
                                        key.round_to)
        return check_params(prepared.params, expected)

    def base_unlearned(self) -> str | None:
        """One line when the base did not beat chance (nothing built from it is worth gating or timing);
        None when it did, or when accuracy was not measured."""
        base = self.base
        if base.top1 is None:
            return None
        failure = check_learned(base.correct, self.pipeline.test_chance)
        return f"{self.profile.name} {base.key.label()}: {failure}" if failure else None

    def accuracy_gate(self, prepared: PreparedModel) -> tuple[str | None, str | None]:
        """(failure, skip reason): at most one is set; both None means the gate held."""
        if prepared.top1 is None:
            return None, f"accuracy not measured: {prepared.reason}"
        unlearned = self.base_unlearned()
        if unlearned:
            return unlearned, None
        key, label = prepared.key, f"{self.profile.name} {prepared.key.label()}"
        rule = self.thresholds.rule(self.profile.name, key.scope)
        failure = None if rule is None else check_accuracy(rule, prepared.top1)
        if failure:
            ci = _ci(prepared.correct)
            interval = f" (95 % CI {100 * ci[0]:.1f}–{100 * ci[1]:.1f} %, n={len(prepared.correct)})" if ci else ""
            return f"{label}: {failure}{interval}", None
        if not key.is_base:
            allowed = self.thresholds.max_drop(self.profile.name, key.scope, self.settings.max_accuracy_drop)
            failure = check_pruning_cost(self.base.correct, prepared.correct, allowed)
        return (f"{label}: {failure}" if failure else None), None

    # results -----------------------------------------------------------------------------------
    def _verification(self, prepared: PreparedModel, case: Case) -> dict:
        if get_runtime(case.runtime).reference:
            return {"runtime_agreement": None, "runtime_max_rel_diff": None}
        check = self.verify_runtime(prepared, case.runtime, case.device)
        diff = check.as_dict()["max_rel_diff"]  # null, not inf, for a runtime that returned NaN
        return {"runtime_agreement": round(check.agreement, 6), "runtime_max_rel_diff": diff}

    def record(self, case: Case, seconds: list[float], base_seconds: list[float], forward: TimedForward,
               watch: CpuWatch | None, blocks: int = 1, evidence: Evidence | None = None) -> CaseRecord:
        """The case's typed record: identity, model facts, accuracy evidence, latency and quietness.
        ``forward`` is the case's timed callable: its runner says what was shipped and where it ran."""
        runner = forward.fn
        # GPU times of the timed rounds only (warm-up and block refreshes ran the forward untimed too)
        gpu_ms = forward.gpu_times_ms()[-len(seconds):] if seconds else []
        measured = dict(
            size_mb=round(runner.size_bytes / 1e6, 4), runtime_providers=runner.details.get("providers"),
            cpu_peak_mem_mb=self.peak.cpu_mb(), gpu_peak_mem_mb=self.peak.gpu_mb() if case.device == "cuda" else None,
            base_times_s=[float(s) for s in base_seconds], loops=evidence.loops if evidence else forward.loops,
            other_cpu_cores=watch.other_cores if watch else None,
            loadavg_1m=watch.loadavg_1m if watch else None, contended=bool(watch and watch.contended),
            times_s=list(seconds),
            **summarize(seconds, case.batch_size, base_seconds, gpu_ms, blocks, run_spread=self.settings.run_spread),
        )
        unlisted = set(measured) - set(MEASURED)
        if unlisted:  # a case sharing this timing would not carry them (see already_timed)
            raise RuntimeError(f"measured fields missing from results.record.MEASURED: {sorted(unlisted)}")
        record = self._record(case, measured)
        self._timed_models.setdefault(self._timing_key(case), record)
        return record

    def already_timed(self, case: Case) -> CaseRecord | None:
        """The record of a case timed earlier in this run whose timed pair is this case's own: the same model
        (see :func:`~vggprune.timing.plan.timing_identity`) in the same runtime, device and batch size, against
        the same base. by-hand and torch-pruning give such pairs (same kept units, same fine-tuning); timing both
        would time one model twice and print the noise between the two as a difference between methods."""
        return self._timed_models.get(self._timing_key(case))

    def record_shared(self, case: Case, timed: CaseRecord) -> CaseRecord:
        """The case's record with the timing of ``timed``, the same model's (see :meth:`already_timed`), and
        ``timed_with`` naming it."""
        return self._record(case, {name: getattr(timed, name) for name in MEASURED}, timed_with=timed.case_id)

    def _timing_key(self, case: Case) -> tuple:
        return case.runtime, case.device, case.batch_size, timing_identity(self.prepared(case.model).model)

    def _record(self, case: Case, measured: dict, timed_with: str | None = None) -> CaseRecord:
        prepared, base = self.prepared(case.model), self.base
        key = case.model
        before = prepared.correct_before_finetune
        record = CaseRecord(
            schema=SCHEMA, case_id=case.id, profile=case.profile, model=self.profile.model,
            method=key.method, scope=key.scope, criterion=key.criterion, round_to=key.round_to, rate=key.rate,
            runtime=case.runtime, device=case.device, batch_size=case.batch_size,
            dataset=self.profile.dataset, num_classes=prepared.model.spec.num_classes,
            image_size=self.profile.image_size,
            test_fingerprint=getattr(self.pipeline, "test_fingerprint", None),
            device_name=device_name(case.device), cpu_model=cpu_model(), threads=torch.get_num_threads(),
            dtype="float32", memory_format=self.settings.memory_format,
            params=prepared.params, macs=prepared.macs, base_params=base.params, base_macs=base.macs,
            theoretical_speedup=round(base.macs / prepared.macs, 4),
            conv_widths=list(prepared.model.spec.conv_widths), fc_widths=list(prepared.model.spec.fc_widths),
            weights_sha256=prepared.weights_sha256,
            accuracy=prepared.top1, accuracy_ci=_ci(prepared.correct), correct=prepared.correct,
            accuracy_reason=prepared.reason if prepared.top1 is None else None, top5=prepared.top5,
            base_accuracy=base.top1, base_learned=None if base.top1 is None else self.base_unlearned() is None,
            accuracy_before_finetune=prepared.top1_before_finetune,
            accuracy_before_finetune_ci=_ci(before),
            **self._verification(prepared, case),
            from_cache=prepared.from_cache, trained_on=prepared.info.get("trained_on"),
            timed_with=timed_with, **measured,
        )
        self.timed.append(record)
        return record
