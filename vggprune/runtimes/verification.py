"""A runtime's outputs against eager PyTorch on the same batches, checked before anything is timed."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch

from vggprune.runtimes.base import Runner

MIN_AGREEMENT = 0.999
# Two classes whose eager logits differ by less than this fraction of the image's largest |logit|
# are a numerical tie: float reassociation may order them either way, which is not a disagreement.
TIE_RTOL = 1e-4


@dataclass(frozen=True)
class Verification:
    """A runtime's logits against eager PyTorch on the same images."""

    runtime: str
    images: int
    agreeing: int  # top-1 equal, or a numerical tie in the eager logits (see TIE_RTOL)
    ties: int  # of those, how many only agreed as ties
    max_rel_diff: float  # max over images of max|runtime - eager| / max|eager| (that image's logits)
    max_abs_diff: float
    min_agreement: float = MIN_AGREEMENT

    @property
    def agreement(self) -> float:
        return self.agreeing / self.images if self.images else 0.0

    def failure(self) -> str | None:
        """None when the runtime may be timed, else one line with the numbers."""
        numbers = (f"top-1 agrees with eager on {self.agreeing}/{self.images} images ({self.agreement:.4%}, "
                   f"need {self.min_agreement:.1%}), max relative logit difference {self.max_rel_diff:.3g}")
        if self.images == 0:
            return f"{self.runtime}: outputs not verified: no images"
        if not math.isfinite(self.max_rel_diff):
            return f"{self.runtime}: non-finite logits: {numbers}"
        if self.agreement < self.min_agreement:
            return f"{self.runtime} disagrees with eager: {numbers}"
        return None

    def as_dict(self) -> dict:
        d = {**asdict(self), "agreement": self.agreement}
        # Strict JSON has no inf/NaN: a non-finite difference is recorded as null.
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in d.items()}


def _inputs(batches: Iterable | torch.Tensor) -> Iterable[torch.Tensor]:
    if isinstance(batches, torch.Tensor):
        batches = [batches]
    for item in batches:
        yield item[0] if isinstance(item, (tuple, list)) else item


def reference_logits(eager_model: torch.nn.Module, batches: Iterable | torch.Tensor) -> list[torch.Tensor]:
    """Eager CPU logits per batch, to verify several runtimes without rerunning eager each time."""
    eager_model.eval()
    with torch.inference_mode():
        return [eager_model(x.cpu()).float() for x in _inputs(batches)]


def verify(runner: Runner, eager_model: torch.nn.Module | None, batches: Iterable | torch.Tensor,
           reference: list[torch.Tensor] | None = None) -> Verification:
    """Compare ``runner`` with eager PyTorch on ``batches``: the test split's ``(x, y)`` batches, bare
    input tensors, or one tensor (a fixed random batch for profiles without data).

    ``eager_model`` is the CPU eval-mode model; pass ``reference`` (from :func:`reference_logits`
    on the same batches, in order) instead to skip recomputing eager. Every batch is run through
    ``runner.adapt`` first, so the runner sees its own device and layout.
    """
    if reference is None and eager_model is None:
        raise ValueError("verify needs eager_model or reference logits")
    images = agreeing = ties = 0
    max_rel = max_abs = 0.0
    finite = True
    refs = iter(reference) if reference is not None else None
    for x in _inputs(batches):
        if refs is not None:
            expected = next(refs, None)
            if expected is None:
                raise ValueError("reference has fewer batches than batches")
        else:
            expected = reference_logits(eager_model, [x])[0]
        got = runner(runner.adapt(x)).float().cpu()
        finite = finite and bool(torch.isfinite(got).all())
        if got.shape != expected.shape:
            raise ValueError(f"{runner.runtime} returned logits of shape {tuple(got.shape)}, "
                             f"eager {tuple(expected.shape)}")
        diff = (got - expected).abs().amax(dim=1)
        scale = expected.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float((diff / scale).max()))
        picked, want = got.argmax(dim=1), expected.argmax(dim=1)
        same = picked == want
        gap = expected.gather(1, want[:, None]) - expected.gather(1, picked[:, None])
        tie = ~same & (gap[:, 0] <= TIE_RTOL * scale)
        images += len(x)
        agreeing += int(same.sum()) + int(tie.sum())
        ties += int(tie.sum())
    if not finite:  # max() would skip NaNs: a runtime that returns NaN/inf must not look exact
        max_rel = max_abs = math.inf
    return Verification(runner.runtime, images, agreeing, ties, max_rel, max_abs)
