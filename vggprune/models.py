"""VGG11 variants, each fully described by a small, serialisable spec.

Every model this package builds or prunes is a :class:`VGG11` whose ``spec`` lists the width of each
conv and hidden FC layer, so a pruned model can be rebuilt from ``(spec, state_dict)`` alone. The module
names (``features.N``, ``avgpool``, ``classifier.N``) match torchvision's ``vgg11_bn`` so its ImageNet
weights load straight into the ``seed`` and ``torchvision`` variants.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from torch import Tensor, nn

from vggprune.choices import VARIANTS  # noqa: E402  (one definition, importable without torch)
from vggprune.errors import UserError

# torchvision's VGG11 ("A") configuration: conv widths, "M" = 2x2 max-pool.
VGG11_CFG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
VGG11_CONV_WIDTHS: tuple[int, ...] = tuple(c for c in VGG11_CFG if c != "M")
SMALL_WIDTH_MULT = 0.25


@dataclass(frozen=True)
class VGGSpec:
    """Everything that fixes a VGG11's architecture (and hence its parameter count).

    ``fc_widths`` are the hidden FC layers only; the final classifier maps the last of them
    (or the flattened features when there are none) to ``num_classes``.
    """

    variant: str
    num_classes: int
    conv_widths: tuple[int, ...]
    fc_widths: tuple[int, ...]
    pool_size: int  # side of the adaptive average pool before the classifier
    input_size: int  # the image side the model is meant for (used for example inputs)
    dropout: float = 0.5
    # Whether a ReLU+Dropout follows each hidden FC layer. The seed model's last hidden layer is
    # torchvision's 1000-way logits layer, which has none before the appended classifier.
    fc_activations: tuple[bool, ...] = ()

    def __post_init__(self) -> None:
        if not self.fc_activations:
            object.__setattr__(self, "fc_activations", (True,) * len(self.fc_widths))
        object.__setattr__(self, "conv_widths", tuple(int(w) for w in self.conv_widths))
        object.__setattr__(self, "fc_widths", tuple(int(w) for w in self.fc_widths))
        object.__setattr__(self, "fc_activations", tuple(bool(a) for a in self.fc_activations))
        if len(self.conv_widths) != len(VGG11_CONV_WIDTHS):
            raise UserError(
                f"a VGG11 has {len(VGG11_CONV_WIDTHS)} conv layers, spec gives {len(self.conv_widths)}"
            )
        if len(self.fc_activations) != len(self.fc_widths):
            raise UserError("fc_activations must have one entry per hidden FC layer")
        if any(w < 1 for w in self.conv_widths + self.fc_widths) or self.num_classes < 1:
            raise UserError(f"every layer width and num_classes must be >= 1: {self}")

    @property
    def flat_features(self) -> int:
        return self.conv_widths[-1] * self.pool_size * self.pool_size

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VGGSpec:
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**fields)

    def with_widths(self, conv_widths: tuple[int, ...], fc_widths: tuple[int, ...]) -> VGGSpec:
        return replace(self, conv_widths=tuple(conv_widths), fc_widths=tuple(fc_widths))


class VGG11(nn.Module):
    """VGG11 with batch norm, laid out like torchvision's ``vgg11_bn``."""

    def __init__(self, spec: VGGSpec) -> None:
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = []
        in_ch, widths = 3, iter(spec.conv_widths)
        for item in VGG11_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out_ch = next(widths)
                layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch),
                           nn.ReLU(inplace=True)]
                in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((spec.pool_size, spec.pool_size))
        head: list[nn.Module] = []
        in_f = spec.flat_features
        for width, act in zip(spec.fc_widths, spec.fc_activations):
            head.append(nn.Linear(in_f, width))
            if act:
                head += [nn.ReLU(inplace=True), nn.Dropout(p=spec.dropout)]
            in_f = width
        head.append(nn.Linear(in_f, spec.num_classes))
        self.classifier = nn.Sequential(*head)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's VGG initialisation, so from-scratch training behaves like the reference.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(x.flatten(1))

    # Named views used by the pruning backends -------------------------------------------
    def conv_layers(self) -> list[nn.Conv2d]:
        return [m for m in self.features if isinstance(m, nn.Conv2d)]

    def fc_layers(self) -> list[nn.Linear]:
        """All Linear layers, the final classifier last."""
        return [m for m in self.classifier if isinstance(m, nn.Linear)]


def spec_for(variant: str, num_classes: int = 102, width_mult: float | None = None) -> VGGSpec:
    """The unpruned spec of a variant.

    * ``seed``: the study's model, torchvision ``vgg11_bn`` keeping its 1000-way layer with a
      ``Linear(1000, num_classes)`` appended (FC: 25088→4096→4096→1000→num_classes).
    * ``torchvision``: the usual transfer head, last layer replaced (25088→4096→4096→num_classes).
    * ``small``: the same layer configuration scaled by ``width_mult`` (default 0.25) for 32×32
      inputs: five pools leave 1×1, so the first FC sees just the last conv's channels.
    """
    if variant not in VARIANTS:
        raise UserError(f"unknown model {variant!r}; allowed: {', '.join(VARIANTS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
    if variant == "seed":
        return VGGSpec("seed", num_classes, VGG11_CONV_WIDTHS, (4096, 4096, 1000), 7, 224,
                       fc_activations=(True, True, False))
    if variant == "torchvision":
        return VGGSpec("torchvision", num_classes, VGG11_CONV_WIDTHS, (4096, 4096), 7, 224)
    mult = SMALL_WIDTH_MULT if width_mult is None else width_mult
    if not (isinstance(mult, (int, float)) and 0 < mult and math.isfinite(mult)):
        raise UserError(f"width_mult must be a positive number, got {width_mult!r}")
    conv = tuple(max(1, round(w * mult)) for w in VGG11_CONV_WIDTHS)
    fc = (max(1, round(4096 * mult / 2)),) * 2
    return VGGSpec("small", num_classes, conv, fc, 1, 32, dropout=0.2)


def build_vgg11(variant: str, num_classes: int = 102, width_mult: float | None = None) -> VGG11:
    """Build an unpruned, randomly initialised VGG11 of the given variant (see :func:`spec_for`)."""
    return VGG11(spec_for(variant, num_classes, width_mult))


def build_from_spec(spec: VGGSpec | dict[str, Any]) -> VGG11:
    """Rebuild a (possibly pruned) model from its spec."""
    return VGG11(VGGSpec.from_dict(spec) if isinstance(spec, dict) else spec)


def check_vgg11(model: Any) -> VGG11:
    """Raise a ValueError unless ``model`` is one of ours whose layers still match its spec."""
    if not isinstance(model, VGG11):
        raise UserError(f"expected a vggprune VGG11 (see build_vgg11), got {type(model).__name__}")
    convs, fcs = model.conv_layers(), model.fc_layers()
    widths = (tuple(c.out_channels for c in convs), tuple(f.out_features for f in fcs[:-1]))
    if widths != (model.spec.conv_widths, model.spec.fc_widths):
        raise UserError("model layers no longer match its spec (modified outside vggprune?)")
    return model
