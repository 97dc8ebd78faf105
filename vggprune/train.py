"""Fine-tune and evaluate: SGD with momentum under a per-step schedule, checkpoint picked on val.

Runs are seeded and deterministic on CPU (same seed, data and thread count → same weights). On CUDA,
training uses automatic mixed precision and channels_last, which is where they pay off. A loss that
stops being finite stops the run with :class:`DivergedError` instead of training on garbage.
"""

from __future__ import annotations

import copy
import math
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader

from vggprune.errors import UserError
from vggprune.profiles import SCHEDULES
from vggprune.stats import accuracy

if TYPE_CHECKING:
    from tqdm import tqdm


class DivergedError(UserError):
    """The training loss became NaN or infinite: the run is stopped, nothing is cached."""


@dataclass
class FitResult:
    """What :func:`fit` did: the val accuracy of the weights it kept and which epoch they came from."""

    best_val_top1: float | None
    best_epoch: int  # 0 = the starting weights (only when they were a candidate)
    epochs: int
    history: list[dict[str, float]] = field(default_factory=list)


# Environment switches that choose PyTorch's CPU kernels. Each one alone changes trained weights (and a
# few test images) on the same machine, as does the thread count: CPU training is bit-reproducible for
# a given machine, thread count and these settings, not across CPU types.
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS")


def pinned_kernel_env(isa: str = "avx2") -> dict[str, str]:
    """Settings that cap ATen, oneDNN and MKL to one instruction set (opt-in, not a default).

    They only take effect when in the environment before torch is first used, e.g.
    ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=AVX2 vggprune train …``. They make
    two machines agree only if the thread count matches too, and oneDNN may still block differently
    for different cache sizes; and on an AVX-512 machine they give up its faster kernels.
    """
    return {"ATEN_CPU_CAPABILITY": isa.lower(), "ONEDNN_MAX_CPU_ISA": isa.upper(), "MKL_CBWR": isa.upper()}


def progress_enabled(progress: bool | None) -> bool:
    """``None`` = automatic: bars only on an interactive terminal and never when ``CI`` is set."""
    if progress is not None:
        return bool(progress)
    return sys.stderr.isatty() and not os.environ.get("CI")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` picks CUDA when available, else CPU; an unusable explicit choice is a user error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"device {device!r} is not supported for training; use cpu or cuda")
    return dev


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        # non_blocking only overlaps the copy when the source is pinned; from pageable memory it is a sync copy
        return x.to(device, non_blocking=x.is_pinned(), memory_format=torch.channels_last)
    return x


def _progress_bar(total: int, desc: str, enabled: bool) -> tqdm:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True, file=sys.stderr)


def topk_hits(logits: torch.Tensor, targets: torch.Tensor, ks: Iterable[int]) -> list[torch.Tensor]:
    """Per row, whether its target is among the top-k logits, for each k (k capped at the class count)."""
    ks = list(ks)
    kmax = min(max(ks), logits.shape[1])
    pred = logits.topk(kmax, dim=1).indices
    hits = pred.eq(targets.view(-1, 1))
    return [hits[:, : min(k, kmax)].any(dim=1) for k in ks]


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: Iterable[int]) -> list[int]:
    """How many rows have their target among the top-k logits, for each k (k capped at the class count)."""
    return [int(h.sum()) for h in topk_hits(logits, targets, ks)]


@dataclass(frozen=True)
class Evaluation:
    """One model scored on one split: per-item top-1 correctness in loader order, and summaries.

    ``top1`` is computed from ``correct``, so the per-image evidence and the headline figure can never
    disagree (a paired test such as McNemar's relies on that).
    """

    correct: str  # '0'/'1' per item, in the loader's (unshuffled) order
    top5_hits: int
    loss: float  # mean cross-entropy

    @property
    def n(self) -> int:
        return len(self.correct)

    @property
    def top1(self) -> float:
        return accuracy(self.correct)

    @property
    def top5(self) -> float:
        return self.top5_hits / self.n


def evaluate_images(model: nn.Module, loader: DataLoader, device: str | torch.device | None = "cpu",
                    progress: bool | None = False, desc: str = "eval") -> Evaluation:
    """Score ``model`` on every item of ``loader``, keeping which items it got right (top-1).

    The model is moved to ``device`` and left there, in eval mode (callers that hand it on move it back).
    The move happens before inference mode starts: a move inside it would turn the parameters into
    inference tensors, and a model fine-tuned afterwards could not be trained. Scored in float32, the
    precision that is timed, so a gate never judges a model under autocast that is not what it publishes.
    """
    dev = resolve_device(device)
    model.to(dev).eval()
    hits: list[torch.Tensor] = []
    c5 = 0
    loss_sum = 0.0
    bar = _progress_bar(len(loader), desc, progress_enabled(progress))
    try:
        with torch.inference_mode():
            for x, y in loader:
                x, y = _to_device(x, dev), y.to(dev)
                logits = model(x)
                loss_sum += float(nn.functional.cross_entropy(logits.float(), y, reduction="sum"))
                top1_hits, top5_hits = topk_hits(logits, y, (1, 5))
                hits.append(top1_hits.cpu())
                c5 += int(top5_hits.sum())
                bar.update(1)
    finally:
        bar.close()
    flags = torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)
    if flags.numel() == 0:
        raise UserError("cannot evaluate on an empty split")
    correct = "".join("1" if hit else "0" for hit in flags.tolist())
    return Evaluation(correct, c5, loss_sum / len(correct))


def evaluate(model: nn.Module, loader: DataLoader, device: str | torch.device | None = "cpu",
             progress: bool | None = False, desc: str = "eval") -> tuple[float, float, float]:
    """(top-1, top-5, mean cross-entropy) of ``model`` on ``loader``: :func:`evaluate_images` summarised."""
    result = evaluate_images(model, loader, device, progress, desc)
    return result.top1, result.top5, result.loss


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader: DataLoader, batches: int = 8,
                          device: str | torch.device | None = "cpu") -> nn.Module:
    """Re-estimate every BatchNorm's running statistics from ``batches`` batches of ``loader``.

    No gradients and no labels: only the BN buffers change. Why it matters: pruning conv channels
    removes their (post-ReLU, positive) contribution to the next layer, whose BN still normalises with
    the unpruned statistics; on the quick model that alone collapses every criterion to one class
    from conv rate 0.3, hiding the difference between L2, L1 and random that recalibration reveals.
    """
    if batches < 1:
        raise UserError(f"batches must be >= 1, got {batches}")
    dev = resolve_device(device)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: every batch counts equally
    model.to(dev).train()
    try:
        for i, (x, _) in enumerate(loader):
            if i == batches:
                break
            model(_to_device(x, dev))
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.eval()
    return model


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, lr: float,
                   total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: ``cosine`` anneals from ``lr`` to 0; ``onecycle`` warms up then anneals."""
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(1, total_steps),
                                                   cycle_momentum=False)  # keep the profile's momentum
    raise UserError(f"unknown schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")


def fit(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader, *, epochs: int, lr: float,
        momentum: float = 0.9, weight_decay: float = 5e-4, schedule: str = "cosine", seed: int = 0,
        device: str | torch.device | None = "cpu", progress: bool | None = None, desc: str = "train",
        initial_is_candidate: bool = False) -> FitResult:
    """Train ``model`` in place for ``epochs`` and keep the weights with the best val top-1.

    Val loss breaks ties (lower wins), so the choice is deterministic. ``initial_is_candidate`` lets
    the starting weights compete too: for fine-tuning after pruning, where a short run can be worse
    than none. The model ends on CPU in eval mode. Raises :class:`DivergedError` on a NaN/inf loss.
    """
    if epochs < 0:
        raise UserError(f"epochs must be >= 0, got {epochs}")
    dev = resolve_device(device)
    if schedule not in SCHEDULES:
        raise UserError(f"unknown schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")
    cuda = dev.type == "cuda"
    model.to(dev)
    if cuda:
        model.to(memory_format=torch.channels_last)
    history: list[dict[str, float]] = []
    best: tuple[float, float] | None = None
    best_state, best_epoch = None, 0

    def consider(epoch: int) -> None:
        nonlocal best, best_state, best_epoch
        top1, top5, loss = evaluate(model, val_loader, dev)
        history.append({"epoch": epoch, "val_top1": top1, "val_top5": top5, "val_loss": loss})
        score = (top1, -loss)
        if best is None or score > best:
            best, best_epoch = score, epoch
            best_state = copy.deepcopy(model.state_dict())

    devices = [dev.index or 0] if cuda else []
    with torch.random.fork_rng(devices=devices):  # seeded dropout without disturbing the caller's RNG
        torch.manual_seed(seed)
        if initial_is_candidate or epochs == 0:
            consider(0)
        if epochs > 0:
            _train_epochs(model, train_loader, epochs, lr, momentum, weight_decay, schedule, dev,
                          progress_enabled(progress), desc, consider)
    assert best_state is not None and best is not None
    model.load_state_dict(best_state)
    model.to("cpu", memory_format=torch.contiguous_format).eval()
    return FitResult(best[0], best_epoch, epochs, history)


def _train_epochs(model: nn.Module, loader: DataLoader, epochs: int, lr: float, momentum: float,
                  weight_decay: float, schedule: str, dev: torch.device, show: bool, desc: str,
                  after_epoch) -> None:
    steps = len(loader)
    if steps == 0:
        raise UserError("the training split is empty: nothing to train on")
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = make_scheduler(optimizer, schedule, lr, epochs * steps)
    cuda = dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    bar = _progress_bar(epochs * steps, desc, show)
    try:
        for epoch in range(1, epochs + 1):
            model.train()
            for step, (x, y) in enumerate(loader, 1):
                x, y = _to_device(x, dev), y.to(dev)
                with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
                    loss = nn.functional.cross_entropy(model(x), y)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise DivergedError(
                        f"{desc}: training diverged (loss {value}) at epoch {epoch}/{epochs}, step "
                        f"{step}/{steps}; lower the learning rate (now {lr:g}) or check the data")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{value:.3f}", refresh=False)
            after_epoch(epoch)
    finally:
        bar.close()
