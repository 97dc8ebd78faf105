"""What the benchmark harness does per case, without pytest: get the model, count it, gate it, pair it
with its base for timing, and turn the measurements into a :class:`~vggprune.results.CaseRecord`.

bench/conftest.py and bench/test_bench.py are thin wrappers around this. Models come from the
training pipeline (trained or loaded from the checkpoint cache once); the harness keeps only the
base and the model being benchmarked (and their per-device copies) in memory, since a run visits
cases model-major.
"""

from __future__ import annotations

import itertools
import platform
import zlib
from dataclasses import dataclass, field

import torch

from vggprune.counting import count_params_macs
from vggprune.gates import (
    ExpectedParams,
    Thresholds,
    check_accuracy,
    check_learned,
    check_params,
    check_pruning_cost,
)
from vggprune.identity import BASE, DEFAULT_RUNTIME, Case, ModelKey
from vggprune.latency import (
    BLOCKS,
    CpuWatch,
    PairedRounds,
    TimedForward,
    make_batch,
    prepare_for_inference,
    summarize,
)
from vggprune.results import SCHEMA, CaseRecord
from vggprune.settings import RunSettings
from vggprune.stats import correct_interval
from vggprune.workers import Block, Workers, deployable, in_turn, model_bytes, split_rounds, timed_pair


@dataclass
class PreparedModel:
    key: ModelKey
    model: torch.nn.Module  # on CPU, eval mode
    params: int
    macs: int
    top1: float | None
    top5: float | None
    reason: str | None  # why top1 is None
    correct: str | None = None  # per test image, test-split order
    top1_before_finetune: float | None = None
    correct_before_finetune: str | None = None
    on_device: dict[str, torch.nn.Module] = field(default_factory=dict)
    runners: dict[str, object] = field(default_factory=dict)  # (runtime, device, copy) → runtimes.Runner
    verified: dict[str, object] = field(default_factory=dict)  # (runtime, device) → runtimes.Verification
    payload: bytes | None = None  # the model as checkpoint bytes, for timing workers
    _sha: str | None = None

    @property
    def weights_sha256(self) -> str:
        """Of the trained state_dict, so compare can tell 'same weights' from 'retrained differently'."""
        if self._sha is None:
            from vggprune.runtimes_base import model_fingerprint

            self._sha = model_fingerprint(self.model)[:16]
        return self._sha


def library_versions() -> dict[str, str]:
    import torchvision

    try:
        from importlib.metadata import version

        tp_version = version("torch-pruning")
    except Exception:  # not installed: reported, not fatal
        tp_version = "not installed"
    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "torch_pruning": tp_version}


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


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return cpu_model()


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
            cache_dir=settings.cache_dir, use_cache=settings.use_cache)
        self.expected = ExpectedParams.load(settings.expected_params_file)
        self.thresholds = Thresholds.load(settings.thresholds_file)
        self._base: PreparedModel | None = None
        self._current: PreparedModel | None = None
        self.timed: list[CaseRecord] = []  # every case recorded so far, for the run's summary
        self.workers = Workers(settings.processes - 1, settings.threads, settings.axes.runtimes)  # on first use

    # models ----------------------------------------------------------------------------------
    def _prepare(self, key: ModelKey) -> PreparedModel:
        if key.is_base:
            res = self.pipeline.base()
        else:
            res = self.pipeline.case(key.method, key.scope, key.rate, criterion=key.criterion,
                                     round_to=key.round_to)
        model = res.model.eval()
        params, macs = count_params_macs(model, self.profile.image_size)
        return PreparedModel(key, model, params, macs, res.top1, res.top5, res.reason,
                             correct=res.correct, top1_before_finetune=res.top1_before_finetune,
                             correct_before_finetune=res.correct_before_finetune)

    @property
    def base(self) -> PreparedModel:
        if self._base is None:
            self._base = self._prepare(BASE)
        return self._base

    def prepared(self, key: ModelKey) -> PreparedModel:
        if key.is_base:
            return self.base
        if self._current is None or self._current.key != key:
            self._current = None  # release the previous model before building the next
            self._current = self._prepare(key)
        return self._current

    def model_on(self, prepared: PreparedModel, device: str, copy: str = "") -> torch.nn.Module:
        """The copy that is timed: on ``device``, in the run's memory format, made once per device.
        ``copy="twin"`` is a second, separately allocated copy: the base's A/A partner."""
        slot = f"{device}{copy}"
        if slot not in prepared.on_device:
            prepared.on_device[slot] = prepare_for_inference(prepared.model, device, self.settings.memory_format)
        return prepared.on_device[slot]

    # timing ----------------------------------------------------------------------------------
    def runtime_unavailable(self, case: Case) -> str | None:
        """None when the case's runtime can run on its device here, else one line: why and how to get it."""
        if case.runtime == DEFAULT_RUNTIME:
            return None
        from vggprune.runtimes import get_runtime

        return get_runtime(case.runtime).unavailable(case.device)

    def runner(self, prepared: PreparedModel, runtime: str, device: str, copy: str = ""):
        """``prepared``'s model in a deployment runtime (exported once, files kept in the checkpoint cache)."""
        from vggprune.runtimes import get_runtime

        slot = f"{runtime}/{device}{copy}"
        if slot not in prepared.runners:
            example = make_batch(1, self.profile.image_size, "cpu")
            prepared.runners[slot] = get_runtime(runtime).prepare(prepared.model, device,
                                                                  self.settings.memory_format, example,
                                                                  self._artifacts(prepared, runtime))
        return prepared.runners[slot]

    def _artifacts(self, prepared: PreparedModel, runtime: str):
        # compile ships the eager checkpoint, already in the cache: no second copy of it
        if not self.pipeline.cache.enabled or runtime == "compile":
            return None
        return self.pipeline.cache.root / "exports" / prepared.key.cache_name(self.profile.name, self.profile.model)

    def verify_runtime(self, prepared: PreparedModel, runtime: str, device: str):
        """The runtime's outputs against eager PyTorch on the test split (a fixed random batch without
        data), once per model, runtime and device: a runtime that disagrees must not be timed."""
        from vggprune.runtimes import reference_logits, verify

        slot = f"{runtime}/{device}"
        if slot not in prepared.verified:
            if self.pipeline.data_missing_reason:
                batches = [make_batch(8, self.profile.image_size, "cpu", seed=1)]
            else:
                batches = list(self.pipeline.data().test)
            if "eager" not in prepared.verified:  # eager's logits once per model, for every runtime
                prepared.verified["eager"] = (batches, reference_logits(prepared.model, batches))
            batches, reference = prepared.verified["eager"]
            prepared.verified[slot] = verify(self.runner(prepared, runtime, device), None, batches, reference)
        return prepared.verified[slot]

    def runtime_failure(self, case: Case) -> str | None:
        """Why the case's (or its base's) runtime outputs may not be timed; None for eager."""
        if case.runtime == DEFAULT_RUNTIME:
            return None
        for prepared in {id(p): p for p in (self.base, self.prepared(case.model))}.values():
            failure = self.verify_runtime(prepared, case.runtime, case.device).failure()
            if failure:
                return f"{prepared.key.label()}: {failure}"
        return None

    def _timed_model(self, prepared: PreparedModel, case: Case, copy: str = ""):
        if case.runtime == DEFAULT_RUNTIME:
            return self.model_on(prepared, case.device, copy)
        return self.runner(prepared, case.runtime, case.device, copy)

    def forwards(self, case: Case) -> tuple[TimedForward, TimedForward]:
        """(base, case) timed callables on the case's device and batch, in the case's runtime; the base
        case is paired with an identical twin of itself (an A/A check whose speed-up must be near 1)."""
        batch = make_batch(case.batch_size, self.profile.image_size, case.device,
                           memory_format=self.settings.memory_format)
        base_model = self._timed_model(self.base, case)
        if case.model.is_base:
            case_model = self._timed_model(self.base, case, copy="twin")
        else:
            case_model = self._timed_model(self.prepared(case.model), case)
        return timed_pair(base_model, case_model, case.runtime, batch)

    def size_mb(self, prepared: PreparedModel, runtime: str, device: str) -> float:
        """What a user ships: the state_dict's tensors for eager, the runtime's files otherwise."""
        if runtime == DEFAULT_RUNTIME:
            size = sum(t.numel() * t.element_size() for t in prepared.model.state_dict().values())
        else:
            size = self.runner(prepared, runtime, device).size_bytes
        return round(size / 1e6, 4)

    def processes(self, case: Case) -> int:
        """How many processes time the case's rounds: this one, then a worker per further block (CPU
        only; a compiled model would compile again in each, and CUDA stays in the process that owns
        the context)."""
        if case.device != "cpu" or case.runtime == "compile":
            return 1
        return len(split_rounds(self.profile.latency_rounds, self.settings.processes))

    def start_workers(self, case: Case) -> None:
        """Start the timing workers if the case uses them (call before timing: they import torch)."""
        if self.processes(case) > 1:
            self.workers.start()

    def pairing(self, case: Case, base_forward: TimedForward, case_forward: TimedForward) -> PairedRounds:
        """The base's rounds for ``benchmark.pedantic(setup=..., teardown=...)``, for this process's
        share of the rounds; the shuffle is seeded by the case id so a rerun draws the same order.
        Each block of rounds runs on fresh copies of both models (new sessions in ONNX Runtime and
        OpenVINO; see PairedRounds), each copy made first in every other block (``in_turn``); the earlier
        copies stay allocated until the case is done, so the new ones land elsewhere in memory. With
        workers, this process times one block and each worker one more (:meth:`time_elsewhere`)."""
        models = [self.base, self.base if case.model.is_base else self.prepared(case.model)]
        held: list[object] = []
        forwards, turns = (base_forward, case_forward), itertools.count(self._first_turn(case))

        def fresh(forward: TimedForward, prepared: PreparedModel):
            def make():
                fn = deployable(prepared.model, case.runtime, case.device, self.settings.memory_format,
                                self.profile.image_size, self._artifacts(prepared, case.runtime))
                TimedForward(fn, forward.batch).untimed()  # first call on new memory (page faults)
                return fn
            return make

        def refresh() -> None:
            made = in_turn([fresh(f, p) for f, p in zip(forwards, models)], next(turns))
            for forward, fn in zip(forwards, made):
                forward.fn = fn
                held.append(fn)

        if case.runtime == "compile":
            refresh = None  # a fresh copy would mean compiling again per block
        processes = self.processes(case)
        here = split_rounds(self.profile.latency_rounds, processes)[0]
        return PairedRounds(base_forward, warmup=self.profile.latency_warmup, seed=self._seed(case),
                            rounds=here, refresh=refresh, blocks=BLOCKS if processes == 1 else 1)

    def _first_turn(self, case: Case) -> int:
        """The first block's turn (see ``in_turn``); later blocks, here or in workers, count on from it."""
        return self._seed(case) % 2

    @staticmethod
    def _seed(case: Case, block: int = 0) -> int:
        return zlib.crc32(f"{case.id}#{block}".encode()) if block else zlib.crc32(case.id.encode())

    @staticmethod
    def _bytes(prepared: PreparedModel) -> bytes:
        if prepared.payload is None:
            prepared.payload = model_bytes(prepared.model)
        return prepared.payload

    def time_elsewhere(self, case: Case) -> list[tuple[list[float], list[float]]]:
        """(case seconds, base seconds) of each further block, each timed in its own worker process."""
        shares = split_rounds(self.profile.latency_rounds, self.processes(case))[1:]
        if not shares:
            return []
        base = self.base
        prepared = base if case.model.is_base else self.prepared(case.model)
        blocks = [Block(base=self._bytes(base), case=self._bytes(prepared), runtime=case.runtime, device=case.device,
                        memory_format=self.settings.memory_format, image_size=self.profile.image_size,
                        batch_size=case.batch_size, base_artifacts=self._artifacts(base, case.runtime),
                        case_artifacts=self._artifacts(prepared, case.runtime), warmup=self.profile.latency_warmup,
                        rounds=rounds, seed=self._seed(case, k + 1), turn=self._first_turn(case) + k + 1)
                  for k, rounds in enumerate(shares)]
        return self.workers.time(blocks)

    # gates -----------------------------------------------------------------------------------
    def num_classes(self, prepared: PreparedModel) -> int:
        return prepared.model.spec.num_classes

    def params_failure(self, prepared: PreparedModel) -> str | None:
        key = prepared.key
        expected = self.expected.lookup(self.profile.model, self.num_classes(prepared), key.scope, key.rate,
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

    # results ---------------------------------------------------------------------------------
    def _verification(self, prepared: PreparedModel, case: Case) -> dict:
        if case.runtime == DEFAULT_RUNTIME:
            return {"runtime_agreement": None, "runtime_max_rel_diff": None}
        check = self.verify_runtime(prepared, case.runtime, case.device)
        diff = check.as_dict()["max_rel_diff"]  # null, not inf, for a runtime that returned NaN
        return {"runtime_agreement": round(check.agreement, 6), "runtime_max_rel_diff": diff}

    def record(self, case: Case, seconds: list[float], base_seconds: list[float], gpu_ms: list[float],
               watch: CpuWatch | None, blocks: int = 1) -> CaseRecord:
        """The case's typed record: identity, model facts, accuracy evidence, latency and quietness."""
        prepared, base = self.prepared(case.model), self.base
        key = case.model
        before = prepared.correct_before_finetune
        record = CaseRecord(
            schema=SCHEMA, case_id=case.id, profile=case.profile, model=self.profile.model,
            method=key.method, scope=key.scope, criterion=key.criterion, round_to=key.round_to, rate=key.rate,
            runtime=case.runtime, device=case.device, batch_size=case.batch_size,
            dataset=self.profile.dataset, num_classes=self.num_classes(prepared),
            image_size=self.profile.image_size,
            test_fingerprint=getattr(self.pipeline, "test_fingerprint", None),
            device_name=device_name(case.device), cpu_model=cpu_model(), threads=torch.get_num_threads(),
            dtype="float32", memory_format=self.settings.memory_format,
            params=prepared.params, macs=prepared.macs, base_params=base.params, base_macs=base.macs,
            theoretical_speedup=round(base.macs / prepared.macs, 4),
            conv_widths=list(prepared.model.spec.conv_widths), fc_widths=list(prepared.model.spec.fc_widths),
            size_mb=self.size_mb(prepared, case.runtime, case.device), weights_sha256=prepared.weights_sha256,
            accuracy=prepared.top1, accuracy_ci=_ci(prepared.correct), correct=prepared.correct,
            accuracy_reason=prepared.reason if prepared.top1 is None else None, top5=prepared.top5,
            base_accuracy=base.top1, base_learned=None if base.top1 is None else self.base_unlearned() is None,
            accuracy_before_finetune=prepared.top1_before_finetune,
            accuracy_before_finetune_ci=_ci(before),
            **self._verification(prepared, case),
            base_times_s=[float(s) for s in base_seconds],
            other_cpu_cores=watch.other_cores if watch else None,
            loadavg_1m=watch.loadavg_1m if watch else None, contended=bool(watch and watch.contended),
            times_s=list(seconds),
            **summarize(seconds, case.batch_size, base_seconds, gpu_ms, blocks, run_spread=self.settings.run_spread),
        )
        self.timed.append(record)
        return record
