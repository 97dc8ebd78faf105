"""One case identity: every label, pytest id, report key and series name is built here.

A *model* is the base or one pruned variant of it (:class:`ModelKey`); a *case* is a model timed in
one runtime on one device at one batch size (:class:`Case`). Adding an axis means adding a field to
one of these two classes. No torch here: report and compare import it.
"""

from __future__ import annotations

from dataclasses import dataclass

BASE_METHOD = "base"
DEFAULT_RUNTIME = "eager"
# Every runtime the registry (vggprune.runtimes) knows, in the order tables list them.
RUNTIME_ORDER: tuple[str, ...] = (DEFAULT_RUNTIME, "fused", "onnxruntime", "openvino", "compile")
# The identity fields of a case record, in the order a reader scans a sweep.
KEY_FIELDS: tuple[str, ...] = (
    "profile", "model", "method", "scope", "criterion", "round_to", "rate", "runtime", "device", "batch_size",
)


@dataclass(frozen=True)
class ModelKey:
    """One trained model: the base (method ``base``, scope ``none``) or one pruned variant of it."""

    method: str
    scope: str
    rate: float
    criterion: str
    round_to: int

    @property
    def is_base(self) -> bool:
        return self.method == BASE_METHOD

    def label(self) -> str:
        """``base-r0.00`` or ``by-hand-conv-r0.50`` (``-l1``, ``-x8`` only when not the default)."""
        if self.is_base:
            return "base-r0.00"
        text = f"{self.method}-{self.scope}-r{self.rate:.2f}"
        if self.criterion != "l2":
            text += f"-{self.criterion}"
        if self.round_to != 1:
            text += f"-x{self.round_to}"
        return text

    def series(self) -> str:
        """The plot/report series a pruned model belongs to: every rate of one way of pruning."""
        extra = f" · round {self.round_to}" if self.round_to != 1 else ""
        return f"{self.method} · {self.scope} · {self.criterion}{extra}"

    def cache_name(self, profile: str, model: str) -> str:
        """The readable part of a checkpoint file name (the digest of the full cache key follows it)."""
        return f"{profile}-{model}-{self.label()}"


BASE = ModelKey(BASE_METHOD, "none", 0.0, "none", 1)


@dataclass(frozen=True)
class Case:
    """One timed case: a model of a profile, in a runtime, on a device, at a batch size."""

    profile: str
    model: ModelKey
    device: str
    batch_size: int
    runtime: str = DEFAULT_RUNTIME
    variant: str = ""  # the VGG11 variant (small, seed, torchvision); part of the key, not of the id

    @property
    def id(self) -> str:
        """``quick-by-hand-conv-r0.50-cpu-b64``; a runtime other than eager is named before the device."""
        runtime = "" if self.runtime == DEFAULT_RUNTIME else f"-{self.runtime}"
        return f"{self.profile}-{self.model.label()}{runtime}-{self.device}-b{self.batch_size}"

    def key(self) -> tuple:
        """The identity as a tuple in :data:`KEY_FIELDS` order (the rate rounded so 0.3 == 0.30000000000000004)."""
        m = self.model
        return (self.profile, self.variant, m.method, m.scope, m.criterion, m.round_to, round(float(m.rate), 6),
                self.runtime, self.device, self.batch_size)

    def fields(self) -> dict:
        return dict(zip(KEY_FIELDS, self.key()))

    @classmethod
    def from_fields(cls, f: dict) -> Case:
        model = ModelKey(f["method"], f["scope"], float(f["rate"]), f["criterion"], int(f["round_to"]))
        return cls(f["profile"], model, f["device"], int(f["batch_size"]), f.get("runtime", DEFAULT_RUNTIME),
                   f.get("model", ""))
