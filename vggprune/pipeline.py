"""Profile → data + base model → prune → fine-tune → evaluate, with every trained model cached.

:class:`Pipeline` is what the benchmark harness and the ``train``/``evaluate`` commands call. The base
model is trained once per profile (disk cache, and memoised in-process); each pruned case starts from
the base weights, is pruned, scored on test as pruned (the damage before fine-tuning), then fine-tuned
for the profile's ``finetune_epochs`` (0 = one-shot), and the weights picked on val are scored on test.
Test scores are kept per image (a '0'/'1' string in test-split order) with a fingerprint of the test
labels, so two runs can be compared image by image (McNemar) when they scored the same test set.
When the data is missing the pipeline still hands out usable models (ImageNet weights, a ``--weights``
file, or a seeded random init) with accuracy ``None`` and the reason, so parameter and latency
measurements can go ahead without data.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vggprune.cache import CACHE_LAYOUT, NO_CACHE_ENV, CheckpointCache, library_versions, rebuilding
from vggprune.data import (
    DOWNLOAD_ENV,
    SPLITS,
    DataBundle,
    check_dataset,
    describe,
    download_flowers102,
    env_flag,
    load_data,
    split_labels,
)
from vggprune.errors import UserError
from vggprune.gates import chance_level
from vggprune.identity import BASE, ModelKey
from vggprune.machine import trained_on
from vggprune.models import VGG11, VGGSpec, spec_for
from vggprune.profiles import Profile, scratch_batch_size
from vggprune.pruning import prune
from vggprune.stats import accuracy, check_correct, correct_interval
from vggprune.train import Evaluation, evaluate_images, fit, resolve_device
from vggprune.weights import InitSource, build_initial_model, resolve_init, resolve_weights_path

# Without data nor a class count (imagefolder profile, no folder), the head gets ImageNet's 1000
# classes, so the torchvision variant is exactly torchvision's vgg11_bn and can still be timed.
FALLBACK_NUM_CLASSES = 1000
# Results stored beside the weights in a cache entry (everything else in it is CaseResult.info).
_RESULT_FIELDS = ("correct", "top5", "correct_before_finetune", "test_fingerprint")


@dataclass
class CaseResult:
    """One trained (or, without data, untrained) model and how good it is.

    Accuracy is kept per test image; ``top1`` and ``top1_before_finetune`` are the means of those
    strings, so a figure and its evidence cannot disagree.
    """

    model: VGG11  # on CPU, eval mode; the caller's own copy
    correct: str | None  # top-1 per test image, '0'/'1' in test-split order; None when not measured (see reason)
    top5: float | None
    reason: str | None  # why correct/top1 is None
    checkpoint: Path | None  # the cache file holding these weights, if any
    seconds: float  # time spent building it in this process (loading it, on a cache hit)
    from_cache: bool
    info: dict[str, Any] = field(default_factory=dict)  # val accuracy, picked epoch, starting weights…
    # Pruned cases: the pruned model on the test split before any fine-tuning. None for the base.
    correct_before_finetune: str | None = None
    test_fingerprint: str | None = None  # data.labels_fingerprint of the test split scored

    @property
    def top1(self) -> float | None:
        """Top-1 on the test split (the mean of ``correct``), or None when not measured."""
        return None if self.correct is None else accuracy(self.correct)

    @property
    def top1_before_finetune(self) -> float | None:
        return None if self.correct_before_finetune is None else accuracy(self.correct_before_finetune)

    @property
    def top1_ci(self) -> tuple[float, float] | None:
        """95 % Wilson interval of ``top1``."""
        return correct_interval(self.correct)

    @property
    def top1_before_finetune_ci(self) -> tuple[float, float] | None:
        return correct_interval(self.correct_before_finetune)


@dataclass
class Trained:
    """A model just trained and scored, not yet stored: what a preparation task hands back to the
    process that owns the cache (see :meth:`Pipeline.train` and :meth:`Pipeline.store`)."""

    model: VGG11  # on CPU, eval mode
    info: dict[str, Any]  # CaseResult.info: val accuracy, picked epoch, where it was trained…
    results: dict[str, Any]  # the _RESULT_FIELDS: per-image test results and the test fingerprint
    seconds: float  # pruning, training and scoring time


class Pipeline:
    """Trains, prunes, fine-tunes and evaluates the cases of one profile; see the module docstring.

    ``data_root``, ``weights`` and ``cache_dir`` default to ``VGGPRUNE_DATA_ROOT``,
    ``VGGPRUNE_WEIGHTS`` and ``VGGPRUNE_CACHE_DIR``; ``download`` and ``use_cache`` are also switched by
    ``VGGPRUNE_DOWNLOAD=1`` and ``VGGPRUNE_NO_CACHE=1``. ``progress`` None = bars only on a terminal
    outside CI. ``device`` None = CUDA when available (training only; results are returned on CPU).
    """

    def __init__(self, profile: Profile, data_root: str | os.PathLike | None = None, download: bool = False,
                 weights: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                 use_cache: bool = True, progress: bool | None = None, device: str | None = None,
                 init: InitSource | None = None) -> None:
        self.profile = profile
        check_dataset(profile.dataset)
        self.device = resolve_device(device)
        self.progress = progress
        self.data_root = data_root
        self.weights_path = resolve_weights_path(weights)
        self.cache = CheckpointCache(cache_dir, enabled=use_cache and not env_flag(NO_CACHE_ENV))
        self.info = describe(profile.dataset, data_root)
        if self.info.missing and profile.dataset == "flowers102" and (download or env_flag(DOWNLOAD_ENV)):
            failure = download_flowers102(data_root)
            self.info = describe(profile.dataset, data_root) if failure is None else replace(
                self.info, missing=failure)
        if profile.train_batch_size is None:  # from scratch: sized to the training split, then keyed as such
            profile = self.profile = replace(profile, train_batch_size=scratch_batch_size(self.info.train_images))
        found = self.info.num_classes
        if profile.num_classes is not None and found is not None and found != profile.num_classes:
            raise UserError(f"dataset {profile.dataset} has {found} classes but profile {profile.name}'s "
                            f"model expects {profile.num_classes}")
        self.num_classes: int = profile.num_classes or found or FALLBACK_NUM_CLASSES
        # input_size follows the profile (imagefolder --image-size), so a model can be checked against it
        self.spec: VGGSpec = replace(spec_for(profile.model, self.num_classes), input_size=profile.image_size)
        self._data: DataBundle | None = None
        self._init: InitSource | None = init  # given: another process resolved it (see prepare)
        self._base: CaseResult | None = None
        self._test_fingerprint: str | None = None
        self._test_chance: float | None = None

    @property
    def data_missing_reason(self) -> str | None:
        """None when the data is usable, else one line: what is missing and how to provide it."""
        return self.info.missing

    @property
    def test_fingerprint(self) -> str | None:
        """Fingerprint of the test split's labels in order (None without data): equal fingerprints mean
        per-image results of two runs can be paired. Loads the data's labels on first use, not images."""
        if self.data_missing_reason:
            return None
        if self._test_fingerprint is None:
            self._test_fingerprint = self.data().fingerprint("test")
        return self._test_fingerprint

    @property
    def test_chance(self) -> float | None:
        """The largest class's share of the test split (None without data): what a model that learned
        nothing scores by always answering that class, the bar the "it learned" gate sets."""
        if self.data_missing_reason:
            return None
        if self._test_chance is None:
            self._test_chance = chance_level(split_labels(self.data().datasets["test"]))
        return self._test_chance

    # --- public -----------------------------------------------------------------------------------
    def base(self, shared: bool = False) -> CaseResult:
        """The unpruned model, trained once (cached on disk and in this process); a fresh copy per call,
        or with ``shared`` the pipeline's own instance, for a caller that never changes it (no second
        copy of a 532 MB model)."""
        result = self._base_result()
        return result if shared else replace(result, model=copy.deepcopy(result.model))

    def case(self, key: ModelKey) -> CaseResult:
        """The base model pruned as ``key`` says (see ``pruning.model_key``) and fine-tuned; the base key
        is the base result itself."""
        if key.is_base:
            return self.base()
        label = key.cache_name(self.profile.name, self.profile.model)
        if self.data_missing_reason:
            base = self._base_result()
            t0 = time.perf_counter()
            model = self._prune(base.model, key)
            return CaseResult(model, None, None, self.data_missing_reason, None, time.perf_counter() - t0,
                              False, {**self._init_info(), "epochs": 0})

        return self._cached_or_built(self.case_key(key), label, lambda: self.store(key, self.train(key)))

    def cached(self, key: ModelKey) -> CaseResult | None:
        """The case from the disk cache only (None if it was never trained with these settings)."""
        return self.lookup(key)

    def cache_entry(self, key: ModelKey) -> tuple[dict[str, Any], str]:
        """(cache key, file label) of one model of this profile."""
        if key.is_base:
            return self.base_key(), self._base_label()
        return self.case_key(key), key.cache_name(self.profile.name, self.profile.model)

    def lookup(self, key: ModelKey) -> CaseResult | None:
        """One model of this profile from the disk cache only (None if not there, or without data)."""
        if self.data_missing_reason:
            return None
        cache_key, label = self.cache_entry(key)
        return self._from_cache(cache_key, label, time.perf_counter())

    def export_dir(self, key: ModelKey) -> Path | None:
        """Where the deployment runtimes' files for one model live (None with the cache off)."""
        if not self.cache.enabled:
            return None
        return self.cache.root / "exports" / key.cache_name(self.profile.name, self.profile.model)

    def initial_model(self) -> VGG11:
        """The base model's starting weights (ImageNet, a ``--weights`` file or a seeded init)."""
        return build_initial_model(self.spec, self.init_source(), seed=self.profile.seed)

    def train(self, key: ModelKey, start: VGG11 | None = None) -> Trained:
        """Train one model without reading or writing the cache: the base from ``start`` (default
        :meth:`initial_model`), a pruned case by pruning ``start`` (default the base) and fine-tuning."""
        label = self.cache_entry(key)[1]
        if key.is_base:
            t0 = time.perf_counter()
            model = start if start is not None else self.initial_model()
            return self._train(model, label, t0, epochs=self.profile.base_epochs, lr=self.profile.lr,
                               pruned=False, info=self._init_info())
        rate = key.rate
        base = start if start is not None else self._base_result().model  # outside this case's time
        t0 = time.perf_counter()
        model = self._prune(base, key)
        return self._train(model, label, t0, epochs=self.profile.finetune_epochs, lr=self.profile.finetune_lr,
                           pruned=True, info={**self._init_info(), "method": key.method, "scope": key.scope,
                                              "rate": rate, "criterion": key.criterion, "round_to": key.round_to})

    def store(self, key: ModelKey, trained: Trained) -> CaseResult:
        """Write a trained model into this pipeline's cache (atomically) and return it as a result."""
        cache_key, label = self.cache_entry(key)
        path = self.cache.store(cache_key, label, trained.model, {**trained.info, **trained.results})
        r = trained.results
        return CaseResult(trained.model, r["correct"], r["top5"], None, path, trained.seconds, False, trained.info,
                          correct_before_finetune=r["correct_before_finetune"], test_fingerprint=r["test_fingerprint"])

    def evaluate(self, model: VGG11, split: str = "test") -> tuple[float, float]:
        """(top-1, top-5) of any of our models on one split of this profile's data."""
        result = self.evaluate_images(model, split)
        return result.top1, result.top5

    def evaluate_images(self, model: VGG11, split: str = "test") -> Evaluation:
        """Any of our models scored on one split, per image (``.correct``) and summarised."""
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
        if model.spec.num_classes != self.num_classes:
            raise UserError(f"the model has {model.spec.num_classes} outputs but dataset {self.profile.dataset} "
                            f"has {self.num_classes} classes")
        if (model.spec.variant, model.spec.input_size) != (self.profile.model, self.profile.image_size):
            # e.g. a 224-px seed model on 32-px digits would "work" and score chance
            raise UserError(f"the model is a {model.spec.variant} model for {model.spec.input_size}-px images but "
                            f"profile {self.profile.name} uses the {self.profile.model} model at "
                            f"{self.profile.image_size} px")
        result = evaluate_images(model, self.data().loader(split), self.device, self.progress,
                                 desc=f"{self.profile.name} {split}")
        model.to("cpu")
        return result

    def data(self) -> DataBundle:
        """The loaders (built on first use; raises a UserError saying what is missing)."""
        if self._data is None:
            p = self.profile
            self._data = load_data(p.dataset, self.data_root, image_size=p.image_size,
                                   batch_size=p.train_batch_size, eval_batch_size=p.eval_batch_size,
                                   seed=p.seed, info=self.info, augment=p.augment)
        return self._data

    def init_source(self) -> InitSource:
        """Where the base model's starting weights come from (resolved once: may try a download)."""
        if self._init is None:
            self._init = resolve_init(self.profile.model, self.weights_path, seed=self.profile.seed)
        return self._init

    def base_key(self) -> dict[str, Any]:
        """Everything that determines the trained base weights."""
        # All of the base training config (fine-tuning lives apart in TrainingConfig, so it cannot leak in).
        return {"layout": "base", "cache_layout": CACHE_LAYOUT, "training": self.profile.training.base_key(),
                "spec": self.spec.to_dict(), "data": self.info.identity, "init": self.init_source().identity,
                "device": self.device.type, "versions": library_versions()}

    def case_key(self, key: ModelKey) -> dict[str, Any]:
        """Everything that determines a pruned, fine-tuned case's weights (the base key included)."""
        return {"layout": "case", "base": self.base_key(), "training": self.profile.training.key(),
                "method": key.method, "scope": key.scope, "rate": key.rate, "criterion": key.criterion,
                "round_to": key.round_to}

    # --- internals --------------------------------------------------------------------------------
    def _prune(self, base: VGG11, key: ModelKey) -> VGG11:
        return prune(base, key.rate, method=key.method, scope=key.scope, criterion=key.criterion,
                     round_to=key.round_to, seed=self.profile.seed).eval()

    def _base_label(self) -> str:
        return BASE.cache_name(self.profile.name, self.profile.model)

    def _init_info(self) -> dict[str, Any]:
        init = self.init_source()
        return {"init": init.kind, "init_note": init.note}

    def _base_result(self) -> CaseResult:
        if self._base is None:
            self._base = self._build_base()
        return self._base

    def _build_base(self) -> CaseResult:
        if self.data_missing_reason:
            t0 = time.perf_counter()
            model = build_initial_model(self.spec, self.init_source(), seed=self.profile.seed)
            return CaseResult(model, None, None, self.data_missing_reason, None, time.perf_counter() - t0,
                              False, self._init_info())

        key, label = self.base_key(), self._base_label()
        return self._cached_or_built(key, label, lambda: self.store(BASE, self.train(BASE)))

    def _cached_or_built(self, key: dict[str, Any], label: str, build: Callable[[], CaseResult]) -> CaseResult:
        """A cache hit, else ``build()`` under the entry's lock (re-checking: a concurrent run may have built it)."""
        hit = self._from_cache(key, label, time.perf_counter())
        if hit:
            return hit
        with self.cache.lock(key, label):
            return self._from_cache(key, label, time.perf_counter()) or build()

    def _from_cache(self, key: dict[str, Any], label: str, t0: float) -> CaseResult | None:
        entry = self.cache.load(key, label)
        if entry is None:
            return None
        extra = entry.extra
        try:  # the layout is in the key, so this only trips on a hand-made or damaged entry
            check_correct(extra["correct"])
            before = extra["correct_before_finetune"]
            if key["layout"] == "case":
                check_correct(before)
            elif before is not None:
                raise ValueError("a base entry has a before-fine-tuning result")
            if not isinstance(extra["test_fingerprint"], str):
                raise ValueError("no test-set fingerprint")
        except (KeyError, TypeError, ValueError) as exc:
            rebuilding(entry.path, f"it lacks valid per-image results ({type(exc).__name__}: {str(exc)[:120]})")
            return None
        info = {k: v for k, v in extra.items() if k not in ("cache_key", *_RESULT_FIELDS)}
        return CaseResult(entry.model, extra["correct"], extra["top5"], None, entry.path, time.perf_counter() - t0,
                          True, info, correct_before_finetune=before, test_fingerprint=extra["test_fingerprint"])

    def _train(self, model: VGG11, label: str, t0: float, *, epochs: int, lr: float, pruned: bool,
               info: dict[str, Any]) -> Trained:
        p, data = self.profile, self.data()
        info = {**info, "trained_on": trained_on(self.device.type)}
        # The one-shot damage: the classic pruning curve, and where criteria (L2, L1, random) differ.
        before = evaluate_images(model, data.test, self.device) if pruned else None
        fitted = fit(model, data.train, data.val, epochs=epochs, lr=lr, momentum=p.momentum,
                     weight_decay=p.weight_decay, schedule=p.schedule, seed=p.seed, device=self.device,
                     progress=self.progress, desc=label, initial_is_candidate=pruned)
        # With no fine-tuning the weights are the ones just scored: skip a second identical pass.
        after = before if before is not None and epochs == 0 else evaluate_images(model, data.test, self.device)
        model.to("cpu").eval()
        info = {**info, "val_top1": fitted.best_val_top1, "best_epoch": fitted.best_epoch, "epochs": epochs,
                "train_seconds": time.perf_counter() - t0}
        results = {"correct": after.correct, "top5": after.top5,
                   "correct_before_finetune": before.correct if before else None,
                   "test_fingerprint": self.test_fingerprint}
        return Trained(model, info, results, time.perf_counter() - t0)
