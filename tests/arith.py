"""Parameter counts derived by arithmetic from the pruning rule, independent of vggprune's code.

Used by the tests and to check bench/expected_params.json. Nothing here imports vggprune: the rule
(remove floor(n·r) units, keep the rest) is re-derived with Decimal arithmetic on the rate's text.
"""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal

VGG11_CONV = (64, 128, 256, 256, 512, 512, 512, 512)
# unpruned (conv widths, hidden FC widths, pool side, num_classes) per model variant
ARCH = {
    "seed": (VGG11_CONV, (4096, 4096, 1000), 7),
    "torchvision": (VGG11_CONV, (4096, 4096), 7),
    "small": (tuple(w // 4 for w in VGG11_CONV), (512, 512), 1),
}


def kept(n: int, rate: float | str, round_to: int = 1) -> int:
    removed = int((Decimal(str(rate)) * n).to_integral_value(rounding=ROUND_FLOOR))
    k = n - removed
    if round_to > 1:
        k = max(k - k % round_to, min(n, round_to))
    return k


def pruned_widths(variant: str, rate: float | str, scope: str, round_to: int = 1):
    conv, fc, _ = ARCH[variant]
    if scope in ("conv", "all"):
        conv = tuple(kept(n, rate, round_to) for n in conv)
    if scope in ("fc", "all"):
        fc = tuple(kept(n, rate, round_to) for n in fc)
    return conv, fc


def vgg11_params(conv: tuple[int, ...], fc: tuple[int, ...], pool: int, num_classes: int) -> int:
    """Conv (weight + bias) + BN (weight + bias) per conv layer, then weight + bias per Linear."""
    total, c_in = 0, 3
    for c in conv:
        total += c_in * c * 9 + c + 2 * c
        c_in = c
    f_in = c_in * pool * pool
    for f in (*fc, num_classes):
        total += f_in * f + f
        f_in = f
    return total


def expected_params(variant: str, num_classes: int, rate: float | str, scope: str, round_to: int = 1) -> int:
    conv, fc = pruned_widths(variant, rate, scope, round_to)
    return vgg11_params(conv, fc, ARCH[variant][2], num_classes)


# The committed bench/expected_params.json is this table; tests/test_gates.py checks they agree.
EXPECTED_MODELS = (("small", 10), ("seed", 102), ("torchvision", 102))
EXPECTED_RATES = tuple(f"{i * 0.05:.2f}" for i in range(20))  # 0.00 … 0.95


def expected_table() -> dict:
    counts = {}
    for variant, classes in EXPECTED_MODELS:
        counts[f"{variant}-{classes}"] = {
            scope: {rate: expected_params(variant, classes, rate, scope) for rate in EXPECTED_RATES}
            for scope in ("fc", "conv", "all")
        }
    return {"_comment": "Exact parameter counts per model-classes / scope / rate (round_to 1), derived by "
                        "arithmetic in tests/arith.py, independently of vggprune. Regenerate with "
                        "`python -m tests.arith > bench/expected_params.json`.",
            "counts": counts}


if __name__ == "__main__":
    import json

    print(json.dumps(expected_table(), indent=1))
