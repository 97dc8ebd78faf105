"""The results contract: one typed, versioned record per benchmark case (pyperf's ``_bench.py`` idea).

The harness writes :class:`CaseRecord` into each pytest-benchmark entry's ``extra_info`` (plus the
case's raw per-round seconds in pytest-benchmark's own ``stats.data``); report, compare and plots
read it back with :func:`load_run`. Validation is derived from the dataclass: each field's type,
plus the range in its metadata, so a new field is checked by declaring it. No torch here.
"""

from __future__ import annotations

import json
import math
import os
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from vggprune.errors import UserError
from vggprune.identity import BASE_METHOD, DEFAULT_RUNTIME, KEY_FIELDS, Case

SCHEMA = 5  # bump when a field changes meaning or a required field is added
# Fields a newer schema added, with the value that states what an older file meant. Schema 3: the
# speed-up interval may include a between-run term (run_spread); a schema-2 interval was within-run
# and the file says nothing about its machine's spread (None). Schema 4: peak memory, the runtime's
# providers, whether the case's checkpoint was loaded from the cache and where it was trained, and
# whether the case's base beat chance (an older file did not say: None), and loops per round (1 before).
# Schema 5: whether the case shares the timing of an identical model (before, every case was timed: None).
ADDED = {3: {"run_spread": None},
         4: {"cpu_peak_mem_mb": None, "gpu_peak_mem_mb": None, "runtime_providers": None, "from_cache": None,
             "trained_on": None, "base_learned": None, "loops": 1},
         5: {"timed_with": None}}
NOISY = 0.10  # IQR/median above this marks a case noisy (torch.utils.benchmark warns at the same level)
# What timing a case measures, as opposed to what the case is: a case that shares an identical model's
# timing (``timed_with``) carries these fields of that model's record.
MEASURED = ("size_mb", "runtime_providers", "cpu_peak_mem_mb", "gpu_peak_mem_mb", "rounds", "loops", "blocks",
            "base_times_s", "latency_p50_ms", "latency_q1_ms", "latency_q3_ms", "latency_mean_ms", "latency_noise",
            "images_per_s", "gpu_time_p50_ms", "base_latency_p50_ms", "measured_speedup", "measured_speedup_ci",
            "run_spread", "noisy", "other_cpu_cores", "loadavg_1m", "contended", "times_s")
CONTENDED = 0.10  # other processes' CPU use, in cores, during the timing window, above which a case is marked


def _range(low: float | None = None, high: float | None = None, *, open_low: bool = False,
           open_high: bool = False, default: Any = MISSING, factory: Any = MISSING) -> Any:
    """A field whose numbers (or list items) must lie in a range; the bounds feed :func:`validate`."""
    meta = {"low": low, "high": high, "open_low": open_low, "open_high": open_high}
    return field(default=default, default_factory=factory, metadata=meta)


@dataclass(kw_only=True)
class CaseRecord:
    """Everything one case reports. ``times_s`` is read from ``stats.data``, never from ``extra_info``."""

    # identity (see vggprune.identity)
    schema: int
    case_id: str
    profile: str
    model: str
    method: str
    scope: str
    criterion: str
    round_to: int = _range(1)
    rate: float = _range(0, 1, open_high=True)
    runtime: str = DEFAULT_RUNTIME
    device: str = "cpu"
    batch_size: int = _range(1)
    # data and machine
    dataset: str = ""
    num_classes: int = _range(1, default=1)
    image_size: int = _range(1, default=1)
    test_fingerprint: str | None = None  # hash of the test labels: same value = same test images
    device_name: str = ""
    cpu_model: str = ""
    threads: int = _range(1, default=1)
    dtype: str = "float32"
    memory_format: str = "channels_last"
    # model facts (one counter: vggprune.counting)
    params: int = _range(1, default=1)
    macs: int = _range(1, default=1)
    base_params: int = _range(1, default=1)
    base_macs: int = _range(1, default=1)
    theoretical_speedup: float = _range(0, open_low=True, default=1.0)
    conv_widths: list[int] = field(default_factory=list)
    fc_widths: list[int] = field(default_factory=list)
    size_mb: float | None = _range(0, default=None)  # what a user ships in this runtime
    weights_sha256: str | None = None  # of the trained state_dict: same value = same trained weights
    # True: the run loaded the checkpoint from the cache instead of training it (None: not recorded)
    from_cache: bool | None = None
    # the machine that trained the weights (hostname, cpu_model, gpu, device, threads); None: untrained
    # (no data) or not recorded
    trained_on: dict[str, Any] | None = None
    # accuracy on the test split (fractions), with per-image evidence
    accuracy: float | None = _range(0, 1, default=None)
    accuracy_ci: list[float] | None = _range(0, 1, default=None)  # 95 % Wilson score interval
    correct: str | None = None  # "0"/"1" per test image, in test-split order; accuracy is its mean
    accuracy_reason: str | None = None  # why accuracy is null
    top5: float | None = _range(0, 1, default=None)
    base_accuracy: float | None = _range(0, 1, default=None)
    # did the base beat chance (the harness's "it learned" gate)? None: not checked (no accuracy, or older)
    base_learned: bool | None = None
    accuracy_before_finetune: float | None = _range(0, 1, default=None)  # one-shot pruned, not fine-tuned
    accuracy_before_finetune_ci: list[float] | None = _range(0, 1, default=None)
    # the runtime's outputs checked against eager PyTorch before timing
    runtime_agreement: float | None = _range(0, 1, default=None)  # top-1 agreement fraction
    runtime_max_rel_diff: float | None = _range(0, default=None)
    runtime_providers: list[str] | None = None  # the execution providers the session actually ran on (ORT)
    # peak memory while the case was prepared and timed (TorchBench's cpu_peak_mem / gpu_peak_mem)
    cpu_peak_mem_mb: float | None = _range(0, default=None)  # resident, this process and its workers
    gpu_peak_mem_mb: float | None = _range(0, default=None)  # torch's CUDA allocator peak
    # latency: the case's rounds are stats.data; base_times_s are the paired base's, same rounds, same order
    rounds: int = _range(0, default=0)
    loops: int = _range(1, default=1)  # consecutive forwards per round; every time here is per batch (round / loops)
    blocks: int = _range(1, default=1)  # rounds in this many contiguous blocks, each on fresh model copies
    base_times_s: list[float] = _range(0, open_low=True, factory=list)
    latency_p50_ms: float | None = _range(0, open_low=True, default=None)
    latency_q1_ms: float | None = _range(0, open_low=True, default=None)
    latency_q3_ms: float | None = _range(0, open_low=True, default=None)
    latency_mean_ms: float | None = _range(0, open_low=True, default=None)
    latency_noise: float | None = _range(0, default=None)  # IQR / median of the case's rounds
    images_per_s: float | None = _range(0, open_low=True, default=None)
    gpu_time_p50_ms: float | None = _range(0, open_low=True, default=None)  # CUDA events
    base_latency_p50_ms: float | None = _range(0, open_low=True, default=None)
    measured_speedup: float | None = _range(0, open_low=True, default=None)  # median of per-round ratios
    measured_speedup_ci: list[float] | None = _range(0, open_low=True, default=None)
    # the between-run standard deviation (log scale) added to measured_speedup_ci; 0 = within-run only,
    # None = not recorded (schema 2: within-run)
    run_spread: float | None = _range(0, 1, default=None)
    noisy: bool = False
    # was the machine quiet while this case was timed?
    other_cpu_cores: float | None = _range(0, default=None)  # CPU used by other processes / wall time
    loadavg_1m: float | None = _range(0, default=None)
    contended: bool = False
    # the case whose timing this one shares: the same model (weights, layout) in the same runtime, device and
    # batch size, timed once in this run (by-hand and torch-pruning at one rate); None: timed itself
    timed_with: str | None = None
    times_s: list[float] = field(default_factory=list)  # from stats.data, not written to extra_info

    # identity -------------------------------------------------------------------------------------
    @property
    def case(self) -> Case:
        return Case.from_fields(asdict(self))

    def key(self) -> tuple:
        return self.case.key()

    @property
    def is_base(self) -> bool:
        return self.method == BASE_METHOD

    # serialisation --------------------------------------------------------------------------------
    def to_extra_info(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("times_s")
        return data

    @classmethod
    def from_extra_info(cls, extra: Any, times_s: list[float] | None = None, where: str = "record") -> CaseRecord:
        """Check ``extra`` against the schema and the fields' types and ranges; one UserError per bad file."""
        if not isinstance(extra, dict):
            raise UserError(f"{where} has no extra_info object (not written by the vggprune harness?)")
        version = extra.get("schema")
        if version is None:
            raise UserError(f"{where} was written by vggprune's first release (no 'schema' field); "
                            f"regenerate it with `pytest bench/ --benchmark-json=...`")
        if version not in range(2, SCHEMA + 1) or isinstance(version, bool):
            raise UserError(f"{where} has results schema {version!r}; this vggprune reads schemas 2..{SCHEMA}")
        extra = dict(extra)
        for later in range(version + 1, SCHEMA + 1):  # an older file: what its missing fields meant
            for name, value in ADDED.get(later, {}).items():
                extra.setdefault(name, value)
        extra["schema"] = SCHEMA
        known = {f.name for f in fields(cls)} - {"times_s"}
        unknown = sorted(set(extra) - known)
        if unknown:
            raise UserError(f"{where}: unknown fields in extra_info: {', '.join(unknown)}")
        missing = sorted(known - set(extra))  # the harness writes every field, null when unknown
        if missing:
            raise UserError(f"{where} lacks fields in extra_info: {', '.join(missing)}")
        record = cls(**{k: v for k, v in extra.items() if k in known}, times_s=list(times_s or []))
        validate(record, where)
        if version == SCHEMA:  # an older file's summaries followed the rules of its day
            check_derived(record, where)
        return record


_HINTS: dict[str, Any] = {}


def _hints() -> dict[str, Any]:
    if not _HINTS:
        _HINTS.update(typing.get_type_hints(CaseRecord))
    return _HINTS


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin is dict:
        return isinstance(value, dict)
    return True


def _in_range(value: float, meta: dict) -> bool:
    low, high = meta.get("low"), meta.get("high")
    if low is not None and (value < low or (meta["open_low"] and value == low)):
        return False
    return not (high is not None and (value > high or (meta["open_high"] and value == high)))


def validate(record: CaseRecord, where: str = "record") -> None:
    """Types and ranges of every field, then the relations between fields; raises one UserError."""
    hints = _hints()
    for f in fields(record):
        value = getattr(record, f.name)
        if not _type_ok(value, hints[f.name]):
            raise UserError(f"{where}: {f.name} has the wrong type or is not finite: {value!r:.80}")
        if value is None or "low" not in f.metadata:
            continue
        numbers = value if isinstance(value, list) else [value]
        if not all(_in_range(v, f.metadata) for v in numbers):
            raise UserError(f"{where}: {f.name} = {value!r:.80} is out of range (accuracies are fractions "
                            f"in [0, 1], times and sizes positive)")
    for name in KEY_FIELDS:
        if isinstance(getattr(record, name), str) and not getattr(record, name):
            raise UserError(f"{where}: {name} must not be empty")
    if record.correct is not None:
        if record.correct.strip("01") or not record.correct:
            raise UserError(f"{where}: correct must be a non-empty string of 0s and 1s")
        if record.accuracy is None or abs(record.correct.count("1") / len(record.correct) - record.accuracy) > 1e-9:
            raise UserError(f"{where}: accuracy {record.accuracy!r} is not the mean of its per-image 'correct'")
    for name in ("accuracy_ci", "accuracy_before_finetune_ci", "measured_speedup_ci"):
        ci = getattr(record, name)
        if ci is not None and (len(ci) != 2 or ci[0] > ci[1]):
            raise UserError(f"{where}: {name} must be [low, high], got {ci!r}")
    if record.base_times_s and record.times_s and len(record.base_times_s) != len(record.times_s):
        raise UserError(f"{where}: base_times_s has {len(record.base_times_s)} rounds but stats.data has "
                        f"{len(record.times_s)}; they are paired round by round")
    if any(t <= 0 or not math.isfinite(t) for t in record.times_s):
        raise UserError(f"{where}: stats.data holds a non-positive or non-finite time")


# The summaries a record stores that its own rounds determine (vggprune.results.summary.summarize).
DERIVED = ("rounds", "latency_p50_ms", "latency_q1_ms", "latency_q3_ms", "latency_mean_ms", "latency_noise",
           "images_per_s", "noisy", "base_latency_p50_ms", "measured_speedup", "measured_speedup_ci")


def check_derived(record: CaseRecord, where: str = "record") -> None:
    """The evidence comes first: every summary in :data:`DERIVED` must be what the record's raw rounds
    (``stats.data`` and ``base_times_s``) give, so a table or a verdict never rests on an edited figure."""
    from vggprune.results.summary import summarize

    if not record.times_s:
        return
    derived = summarize(record.times_s, record.batch_size, record.base_times_s or None, blocks=record.blocks,
                        run_spread=record.run_spread or 0.0)
    for name in DERIVED:
        stored, want = getattr(record, name), derived[name]
        if stored != want:
            raise UserError(f"{where}: {name} = {stored!r} is not what its rounds give ({want!r}): "
                            f"the summaries were edited, or written by another vggprune")


# ---------------------------------------------------------------- runs

@dataclass(frozen=True)
class Run:
    """One ``--benchmark-json`` file: where it came from, its machine, and its case records."""

    path: str
    machine_info: dict[str, Any]
    datetime: str | None
    cases: list[CaseRecord]

    @property
    def node(self) -> str:
        return str(self.machine_info.get("node") or Path(self.path).stem)


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def load_run(path: str | os.PathLike) -> Run:
    """Read and check one pytest-benchmark JSON file; any problem is a one-line :class:`UserError`."""
    path = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f, parse_constant=_no_constants)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, NaN/Infinity, absurdly deep nesting
        raise UserError(f"{path} is not valid JSON ({str(exc)[:120]})") from None
    if not (isinstance(data, dict) and isinstance(data.get("benchmarks"), list)
            and isinstance(data.get("machine_info"), dict)):
        raise UserError(f"{path} is not pytest-benchmark JSON (expected an object with 'machine_info' and "
                        f"a 'benchmarks' list, as written by pytest --benchmark-json)")
    if not data["benchmarks"]:
        raise UserError(f"{path} holds no benchmarks (were all cases skipped or deselected?)")
    cases: list[CaseRecord] = []
    seen: dict[tuple, str] = {}
    for i, bench in enumerate(data["benchmarks"]):
        bench = bench if isinstance(bench, dict) else {}
        name = str(bench.get("name", f"#{i}"))
        stats = bench.get("stats") if isinstance(bench.get("stats"), dict) else {}
        times = stats.get("data") or []
        if not isinstance(times, list):
            raise UserError(f"{path}: benchmark {name!r}: stats.data must be a list of seconds")
        record = CaseRecord.from_extra_info(bench.get("extra_info"), times, f"{path}: benchmark {name!r}")
        key = record.key()
        if key in seen:
            raise UserError(f"{path}: benchmarks {seen[key]!r} and {name!r} are the same case {record.case_id}")
        seen[key] = name
        cases.append(record)
    return Run(path=path, machine_info=data["machine_info"], datetime=data.get("datetime"), cases=cases)


def load_runs(paths: typing.Sequence[str | os.PathLike]) -> list[Run]:
    if not paths:
        raise UserError("give at least one --benchmark-json file")
    return [load_run(p) for p in paths]
