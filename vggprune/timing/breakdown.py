"""Where a pruned model's time goes, part by part, against its base.

The harness times whole forwards. This splits one base/pruned pair into the parts a VGG11 is made of
(each conv with its BN and ReLU, each max-pool, the average pool, each FC layer with its ReLU and
dropout) and times them in the same interleaved rounds: in PyTorch (``eager``, or ``fused`` with BN
folded) with a clock around every module (about 6 µs each: 0.2 ms of the quick model's 5.5 ms forward,
measured), in ONNX Runtime with its own per-node profiler (whose fused Conv+BN+ReLU and Gemm+ReLU nodes
are parts already). Whatever falls between the parts (framework glue, layout reorders,
the session call) is ``other``.

Beside each part's measured speed-up stands its work ratio: MACs for convs and FC layers, output
elements for pools. The *ceiling* is the speed-up the whole model would reach if every part realised
exactly its own ratio (``other`` unchanged). It is what the whole-model MAC ratio (the harness's
"theoretical" speed-up) would be if every MAC cost the same; at small batches a memory-bound FC head
costs far more per MAC than a conv, and the gap between the two shows it.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vggprune.errors import UserError
from vggprune.identity import DEFAULT_RUNTIME
from vggprune.timing.pairing import TimedForward

# Not OpenVINO: its CPU plugin reports each node's time as a running average over every inference of
# the compiled model (measured), so rounds cannot be paired part by part.
OTHER = "other"
_MODULE_KIND = {nn.Conv2d: "conv", nn.MaxPool2d: "pool", nn.AdaptiveAvgPool2d: "avgpool", nn.Linear: "fc"}
# ONNX Runtime's op names by kind (NCHWc convs and pools keep their names).
_ONNX_KIND = {"Conv": "conv", "FusedConv": "conv", "MaxPool": "pool", "AveragePool": "avgpool",
               "GlobalAveragePool": "avgpool", "ReduceMean": "avgpool", "Gemm": "fc", "FusedGemm": "fc",
               "MatMul": "fc", "FusedMatMul": "fc"}
# Nodes that finish the part before them (a conv's BN and ReLU, an FC layer's bias, ReLU and dropout).
_ONNX_TAIL = {"BatchNormalization", "Relu", "Add", "Dropout", "Identity"}
_MODULE_TAIL = (nn.BatchNorm2d, nn.ReLU, nn.Dropout, nn.Identity)


def _part_names(kinds: Iterable[str | None]) -> list[str]:
    """Name each op's part in execution order: conv1, conv2, pool1, ...; a tail op (None) joins the part
    before it; an op of no known kind ("") is other."""
    counts: dict[str, int] = defaultdict(int)
    names, current = [], OTHER
    for kind in kinds:
        if kind is None:
            names.append(current)
        elif kind:
            counts[kind] += 1
            current = kind if kind == "avgpool" else f"{kind}{counts[kind]}"
            names.append(current)
        else:
            names.append(OTHER)
    return names


def _leaves(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every leaf module in execution order (a VGG11's registration order) with the part it belongs to."""
    leaves = [m for m in model.modules() if not list(m.children())]
    kinds = [_MODULE_KIND.get(type(m), None if isinstance(m, _MODULE_TAIL) else "") for m in leaves]
    return list(zip(leaves, _part_names(kinds)))


def part_work(model: nn.Module, image_size: int) -> dict[str, int]:
    """Per image: MACs of each conv and FC part, output elements of each pool."""
    work: dict[str, int] = {}
    hooks = []

    def count(module: nn.Module, name: str):
        def hook(_m, inputs, output) -> None:
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                work[name] = output.numel() * module.in_channels // module.groups * kh * kw
            elif isinstance(module, nn.Linear):
                work[name] = module.in_features * module.out_features
            else:
                work[name] = output.numel()
        return hook

    for module, name in _leaves(model):
        if type(module) in _MODULE_KIND:
            hooks.append(module.register_forward_hook(count(module, name)))
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return work


class ModuleClock:
    """Seconds per part of one forward, from a clock read before and after every leaf module.

    On CPU every op has finished when its module returns, so the difference is the part's own time;
    ``other`` is the rest of the forward (Sequential and Python glue, the flatten).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model, self.times = model, defaultdict(float)
        self.records: list[dict[str, float]] = []
        self._start = 0.0
        for module, name in _leaves(model):
            module.register_forward_pre_hook(self._begin)
            module.register_forward_hook(self._end(name))

    def _begin(self, *_args) -> None:
        self._start = time.perf_counter()

    def _end(self, name: str):
        def hook(*_args) -> None:
            self.times[name] += time.perf_counter() - self._start
        return hook

    def __call__(self, batch: torch.Tensor) -> None:
        self.times.clear()
        start = time.perf_counter()
        TimedForward(self.model, batch).untimed()  # as the harness runs it: inference mode, heap-only
        whole = time.perf_counter() - start
        parts = dict(self.times)
        parts[OTHER] = parts.get(OTHER, 0.0) + whole - sum(parts.values())
        self.records.append(parts)

    def parts(self, skip: int) -> list[dict[str, float]]:
        return self.records[skip:]


def _node_parts(nodes: Iterable[tuple[str, float]], whole: float) -> dict[str, float]:
    """Seconds per part of one run from its executed graph nodes ``(op type, seconds)`` in order;
    ``other`` also gets what the run took beyond its nodes (``whole`` seconds)."""
    nodes = list(nodes)
    names = _part_names(_ONNX_KIND.get(op, None if op in _ONNX_TAIL else "") for op, _ in nodes)
    parts: dict[str, float] = defaultdict(float)
    for (_, seconds), name in zip(nodes, names):
        parts[name] += seconds
    parts[OTHER] += whole - sum(parts.values())
    return dict(parts)


def onnx_parts(events: list[dict]) -> list[dict[str, float]]:
    """Seconds per part of each ``model_run`` in an ONNX Runtime profile (a list of trace events)."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    nodes = sorted((e["ts"], e["dur"], e["args"]["op_name"]) for e in events
                   if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"))
    return [_node_parts(((op, dur / 1e6) for ts, dur, op in nodes if start <= ts <= end), (end - start) / 1e6)
            for start, end in runs]


class OnnxClock:
    """Runs one exported model in ONNX Runtime with profiling on; the parts are read at the end."""

    def __init__(self, model: nn.Module, batch: torch.Tensor, workdir: Path) -> None:
        import onnxruntime

        from vggprune.runtimes.onnx import INPUT, OrtRuntime, export_onnx

        files, _ = export_onnx(model, batch, workdir)
        options = OrtRuntime.session_options()
        options.enable_profiling = True
        options.profile_file_prefix = str(workdir / "profile")
        self.session = onnxruntime.InferenceSession(str(files[0]), options, providers=["CPUExecutionProvider"])
        self.feed = {INPUT: batch.contiguous().numpy()}

    def __call__(self, batch: torch.Tensor) -> None:
        self.session.run(None, self.feed)

    def parts(self, skip: int) -> list[dict[str, float]]:
        import json

        path = Path(self.session.end_profiling())
        try:
            return onnx_parts(json.loads(path.read_text()))[skip:]
        finally:
            path.unlink(missing_ok=True)


@dataclass(frozen=True)
class PartTiming:
    part: str
    base_ms: float  # median over rounds
    pruned_ms: float
    speedup: float  # median of per-round base/pruned, with its within-run 95 % CI
    speedup_ci: tuple[float, float]
    work_ratio: float | None  # base work / pruned work; None for other
    share: float  # of the pruned model's median forward


@dataclass(frozen=True)
class Breakdown:
    runtime: str
    batch_size: int
    rounds: int
    threads: int
    parts: list[PartTiming]
    total: PartTiming
    theoretical: float  # whole-model MAC ratio (the harness's theoretical speed-up)
    ceiling: float  # every part at its own work ratio, other unchanged

    def as_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def _timing(part: str, base: list[float], pruned: list[float], work_ratio: float | None,
            pruned_total_ms: float) -> PartTiming:
    from vggprune.stats import paired_speedup

    point, ci = paired_speedup(base, pruned) if min(base + pruned) > 0 else (float("nan"), (float("nan"),) * 2)
    pruned_ms = statistics.median(pruned) * 1e3
    return PartTiming(part, statistics.median(base) * 1e3, pruned_ms, point, ci, work_ratio,
                      pruned_ms / pruned_total_ms if pruned_total_ms else float("nan"))


def ceiling(base_ms: dict[str, float], work_ratio: dict[str, float]) -> float:
    """Whole-model speed-up if each part's time shrank by exactly its work ratio (other: by nothing)."""
    after = sum(ms / work_ratio.get(part, 1.0) for part, ms in base_ms.items())
    return sum(base_ms.values()) / after


def breakdown_runtimes() -> tuple[str, ...]:
    """The runtimes that can say where their time goes (each gives a :meth:`Runtime.part_clock`)."""
    from vggprune.runtimes import RUNTIMES, get_runtime

    return tuple(name for name in RUNTIMES if get_runtime(name).has_parts)


def breakdown(base: nn.Module, pruned: nn.Module, runtime: str = DEFAULT_RUNTIME, batch_size: int = 8,
              rounds: int = 10, warmup: int = 2, workdir: Path | None = None, seed: int = 0) -> Breakdown:
    """Time ``base`` and ``pruned`` (eval-mode VGG11s on CPU) part by part in paired rounds, the order
    in each round drawn at random as the harness pairs them (a fixed order biases an A/A pair)."""
    from vggprune.counting import count_params_macs
    from vggprune.runtimes import get_runtime
    from vggprune.timing.allocator import steady_allocator
    from vggprune.timing.pairing import make_batch

    if runtime not in breakdown_runtimes():
        raise UserError(f"breakdown runs in {', '.join(breakdown_runtimes())}, not {runtime!r}")
    rt = get_runtime(runtime)
    steady_allocator()  # the harness's allocator setting, so the parts add up to what the harness times
    size = base.spec.input_size
    work = {"base": part_work(base, size), "pruned": part_work(pruned, size)}
    theoretical = count_params_macs(base)[1] / count_params_macs(pruned)[1]
    batch = make_batch(batch_size, size, "cpu", memory_format="channels_last")
    clocks = {key: rt.part_clock(m, batch, workdir / key if workdir else None)
              for key, m in (("base", base), ("pruned", pruned))}
    rng = random.Random(seed)
    for _ in range(warmup + rounds):
        for key in ("base", "pruned") if rng.random() < 0.5 else ("pruned", "base"):
            clocks[key](batch)
    samples = {key: clock.parts(skip=warmup) for key, clock in clocks.items()}
    return _summarise(samples, work, runtime, batch_size, rounds, theoretical)


def _summarise(samples: dict[str, list[dict[str, float]]], work: dict[str, dict[str, int]], runtime: str,
               batch_size: int, rounds: int, theoretical: float) -> Breakdown:
    names = list(dict.fromkeys(name for s in samples["base"] for name in s))
    if set(names) != {name for s in samples["pruned"] for name in s}:
        raise ValueError(f"base and pruned models have different parts: {names} vs {samples['pruned'][0]}")
    names.sort(key=lambda n: n == OTHER)  # other last
    base_totals = [sum(s.values()) for s in samples["base"]]
    pruned_totals = [sum(s.values()) for s in samples["pruned"]]
    pruned_total_ms = statistics.median(pruned_totals) * 1e3
    ratios = {n: work["base"][n] / work["pruned"][n] for n in names if n in work["base"]}
    parts = [_timing(n, [s.get(n, 0.0) for s in samples["base"]], [s.get(n, 0.0) for s in samples["pruned"]],
                     ratios.get(n), pruned_total_ms) for n in names]
    total = _timing("total", base_totals, pruned_totals, None, pruned_total_ms)
    return Breakdown(runtime, batch_size, rounds, torch.get_num_threads(), parts, total, theoretical,
                     ceiling({p.part: p.base_ms for p in parts}, ratios))


def render(result: Breakdown, title: str) -> str:
    from tabulate import tabulate

    def ratio(v: float | None) -> str:
        return "–" if v is None else f"{v:.2f}"

    rows = [[p.part, f"{p.base_ms:.2f}", f"{p.pruned_ms:.2f}",
             f"{p.speedup:.2f} ({p.speedup_ci[0]:.2f}–{p.speedup_ci[1]:.2f})", ratio(p.work_ratio),
             f"{100 * p.share:.1f}"] for p in (*result.parts, result.total)]
    table = tabulate(rows, headers=["part", "base ms", "pruned ms", "× measured (95 % CI)", "× by work",
                                    "% of pruned"], tablefmt="github", disable_numparse=True)
    t = result.total
    return (f"{title}\n{result.runtime}, cpu, batch {result.batch_size}, {result.threads} threads, "
            f"{result.rounds} interleaved rounds (medians; CIs within this run)\n{table}\n"
            f"theoretical (whole-model MACs) {result.theoretical:.2f}×; every part at its own work ratio "
            f"{result.ceiling:.2f}× ({result.ceiling / result.theoretical:.3f} of theoretical); "
            f"measured {t.speedup:.2f}× ({t.speedup / result.theoretical:.3f} of theoretical, "
            f"{t.speedup / result.ceiling:.3f} of the ceiling)")


