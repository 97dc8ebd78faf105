"""What the benchmark harness does per case, without pytest: get the model, count it, gate it, describe it.

bench/conftest.py and bench/test_bench.py are thin wrappers around this. Models come from the
training pipeline (trained or loaded from the checkpoint cache once); the harness keeps only the
model being benchmarked (and its per-device copies) in memory, since a run visits cases model-major.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field

import torch

from vggprune.counting import count_params_macs
from vggprune.gates import ExpectedParams, Thresholds, check_accuracy, check_params
from vggprune.latency import prepare_for_inference
from vggprune.settings import BASE, Case, ModelKey, RunSettings


@dataclass
class PreparedModel:
    key: ModelKey
    model: torch.nn.Module  # on CPU, eval mode
    params: int
    macs: int
    top1: float | None
    top5: float | None
    reason: str | None  # why top1 is None
    on_device: dict[str, torch.nn.Module] = field(default_factory=dict)


def library_versions() -> dict[str, str]:
    import torchvision

    try:
        from importlib.metadata import version

        tp_version = version("torch-pruning")
    except Exception:  # not installed: reported, not fatal
        tp_version = "not installed"
    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "torch_pruning": tp_version}


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return platform.processor() or platform.machine()


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

    # models ----------------------------------------------------------------------------------
    def _prepare(self, key: ModelKey) -> PreparedModel:
        if key.is_base:
            res = self.pipeline.base()
        else:
            res = self.pipeline.case(key.method, key.scope, key.rate, criterion=key.criterion,
                                     round_to=key.round_to)
        model = res.model.eval()
        params, macs = count_params_macs(model, self.profile.image_size)
        return PreparedModel(key, model, params, macs, res.top1, res.top5, res.reason)

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

    def model_on(self, prepared: PreparedModel, device: str) -> torch.nn.Module:
        """The copy that is timed: on ``device``, in the run's memory format, made once per device."""
        if device not in prepared.on_device:
            prepared.on_device[device] = prepare_for_inference(prepared.model, device, self.settings.memory_format)
        return prepared.on_device[device]

    # gates -----------------------------------------------------------------------------------
    def num_classes(self, prepared: PreparedModel) -> int:
        return prepared.model.spec.num_classes

    def params_failure(self, prepared: PreparedModel) -> str | None:
        key = prepared.key
        expected = self.expected.lookup(self.profile.model, self.num_classes(prepared), key.scope, key.rate,
                                        key.round_to)
        return check_params(prepared.params, expected)

    def accuracy_gate(self, prepared: PreparedModel) -> tuple[str | None, str | None]:
        """(failure, skip reason): at most one is set; both None means the gate held."""
        if prepared.top1 is None:
            return None, f"accuracy not measured: {prepared.reason}"
        rule = self.thresholds.rule(self.profile.name, prepared.key.scope)
        if rule is None:
            return None, f"no accuracy threshold for profile {self.profile.name!r}, scope {prepared.key.scope!r}"
        base_top1 = None if prepared.key.is_base else self.base.top1
        failure = check_accuracy(rule, prepared.top1, base_top1)
        if failure:
            failure = f"{self.profile.name} {prepared.key.label()}: {failure}"
        return failure, None

    # results ---------------------------------------------------------------------------------
    def extra_info(self, case: Case, prepared: PreparedModel) -> dict:
        """The results contract's fields for one case (timing fields are added by the caller)."""
        key, base = case.model, self.base
        return {
            "case_id": case.id, "profile": case.profile, "model": self.profile.model,
            "dataset": self.profile.dataset, "num_classes": self.num_classes(prepared),
            "image_size": self.profile.image_size, "method": key.method, "scope": key.scope,
            "criterion": key.criterion, "round_to": key.round_to, "rate": key.rate,
            "device": case.device, "device_name": device_name(case.device), "batch_size": case.batch_size,
            "dtype": "float32", "memory_format": self.settings.memory_format,
            "threads": torch.get_num_threads(),
            "params": prepared.params, "macs": prepared.macs,
            "base_params": base.params, "base_macs": base.macs,
            "theoretical_speedup": round(base.macs / prepared.macs, 4),
            "conv_widths": list(prepared.model.spec.conv_widths),
            "fc_widths": list(prepared.model.spec.fc_widths),
            "accuracy": prepared.top1, "top5": prepared.top5,
            "accuracy_reason": prepared.reason if prepared.top1 is None else None,
            "base_accuracy": base.top1,
        }
