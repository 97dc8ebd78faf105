"""Build every checkpoint and export a harness run will need, serially or as Ray tasks.

``pytest bench/`` trains what its cache lacks, one model after another, on the machine it times.
:func:`prepare` does that work ahead of time, with the harness's own options, so the run only loads:
serially in this process (the harness's own path through :class:`~vggprune.pipeline.Pipeline`), or
on a Ray cluster, where the base is trained first and then each pruned model is one task. A task
gets what it needs through Ray's object store (the recipe, the starting weights) and sends back the
trained model and its per-image results; this process checks the task computed the same cache key
(same data, libraries, code and training device) and writes the checkpoint into its own cache with
the cache's atomic store. Workers never write a cache, so a killed worker leaves nothing behind and
no shared filesystem is needed. Exports for the deployment runtimes are built here afterwards.
Ray is imported only by the Ray executor.
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vggprune.cache import canonical
from vggprune.errors import UserError
from vggprune.identity import BASE, ModelKey
from vggprune.limits import float_in_range
from vggprune.pipeline import Pipeline, Trained
from vggprune.profiles import Profile
from vggprune.settings import RunSettings
from vggprune.weights import InitSource

EXECUTORS = ("serial", "ray")
RETRIES = 3  # Ray re-runs a task this often when its worker dies (an application error is not retried)
PROBE_SECONDS = 5.0
WAIT_SECONDS = 0.5  # how long an explicit cluster address may take to accept a connection
MAX_PER_TASK = 1024.0  # a bound for typos, not for hardware: a cluster node can have more cores than this one
RAY_HINT = "pip install 'vggprune[ray]'"


@dataclass(frozen=True)
class PrepareOptions:
    executor: str = "serial"
    address: str | None = None  # None: start a local cluster
    cpus_per_task: float | None = None  # None: the run's threads
    gpus_per_task: float = 0.0


def resolve_prepare(raw: dict[str, Any]) -> PrepareOptions:
    """The prepare-only options, checked; Ray's options without ``--executor ray`` are refused, not ignored."""
    executor = raw.get("executor") or "serial"
    if executor not in EXECUTORS:
        raise UserError(f"--executor: unknown value {executor!r}; allowed: {', '.join(EXECUTORS)}")
    if executor == "serial":
        given = [f"--{n.replace('_', '-')}" for n in ("ray_address", "cpus_per_task", "gpus_per_task") if raw.get(n)]
        if given:
            raise UserError(f"{', '.join(given)}: only used with --executor ray")
        return PrepareOptions()
    cpus = raw.get("cpus_per_task")
    cpus = float_in_range("--cpus-per-task", cpus, 0.01, MAX_PER_TASK) if cpus else None
    gpus = raw.get("gpus_per_task")
    gpus = float_in_range("--gpus-per-task", gpus, 0.0, MAX_PER_TASK) if gpus else 0.0
    return PrepareOptions("ray", raw.get("ray_address") or None, cpus, gpus)


@dataclass(frozen=True)
class Recipe:
    """What a worker needs to train any model of the run exactly as this process would."""

    profile: Profile
    data_root: Path | None
    download: bool
    device: str  # cpu | cuda: the training device, part of every cache key
    threads: int
    init: InitSource  # resolved here: a worker never looks for weights files or downloads them


@dataclass
class TaskResult:
    cache_key: str  # canonical cache key as the worker computed it
    payload: dict[str, Any]  # the trained model (vggprune.checkpoint payload, no extra)
    info: dict[str, Any]
    results: dict[str, Any]
    seconds: float


def train_task(recipe: Recipe, key: ModelKey, start: dict[str, Any]) -> TaskResult:
    """One model trained on a Ray worker, from ``start`` (the initial or the trained base weights)."""
    from vggprune.checkpoint import model_from_payload, model_payload

    torch.set_num_threads(recipe.threads)  # the thread count changes the kernels, hence the weights
    pipe = Pipeline(recipe.profile, data_root=recipe.data_root, download=recipe.download, use_cache=False,
                    progress=False, device=recipe.device, init=recipe.init)
    if pipe.data_missing_reason:
        raise UserError(f"on this worker: {pipe.data_missing_reason}")
    trained = pipe.train(key, model_from_payload(start, "the starting weights"))
    return TaskResult(canonical(pipe.cache_entry(key)[0]), model_payload(trained.model), trained.info,
                      trained.results, trained.seconds)


@dataclass
class Outcome:
    """What a preparation did: model labels trained, found in the cache, failed (with why); exports."""

    trained: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    exports_built: int = 0
    exports_reused: int = 0
    notes: list[str] = field(default_factory=list)


def _label(key: ModelKey, profile: Profile) -> str:
    return key.cache_name(profile.name, profile.model)


def _training_device(options: PrepareOptions, settings_device: str | None = None) -> str | None:
    if options.executor == "serial":
        return settings_device  # as the harness: --train-device, else cuda when this machine has it
    return "cuda" if options.gpus_per_task > 0 else "cpu"


def make_pipeline(settings: RunSettings, options: PrepareOptions) -> Pipeline:
    """The harness's pipeline for these settings, training (and keying checkpoints) on the executor's device."""
    device = _training_device(options, settings.train_device)
    # The Ray driver trains nothing itself: a CPU-only head may name cuda for its GPU workers.
    local = "cpu" if device == "cuda" and not torch.cuda.is_available() else device
    pipe = Pipeline(settings.profile, data_root=settings.data_root, download=settings.download,
                    weights=settings.weights, cache_dir=settings.cache_dir, use_cache=settings.use_cache,
                    progress=False, device=local)
    if device == "cuda":
        pipe.device = torch.device("cuda")
    return pipe


def prepare(settings: RunSettings, options: PrepareOptions, progress: bool = True,
            task: Callable[..., TaskResult] | None = None, write: Callable[[str], None] | None = None) -> Outcome:
    """Fill the cache with every model and export ``pytest bench/`` with ``settings`` would load.

    ``task`` replaces :func:`train_task` as the Ray task (tests inject faults with it); ``write``
    prints a line without breaking the progress bar (default: tqdm.write to stderr).
    """
    from tqdm import tqdm

    if not settings.use_cache:
        raise UserError("--no-cache: prepare only fills the checkpoint cache; leave --no-cache out")
    torch.set_num_threads(settings.threads)  # as pytest bench/ does before it trains
    pipe = make_pipeline(settings, options)
    if pipe.data_missing_reason:  # the harness would time untrained models: nothing to prepare
        raise UserError(pipe.data_missing_reason)
    write = write or (lambda line: tqdm.write(line, file=sys.stderr))
    outcome = Outcome()
    keys = settings.model_keys()
    if options.executor == "serial":
        _serial(pipe, keys, outcome, progress, write)
    else:
        _on_ray(pipe, keys, settings, options, outcome, progress, write, task or train_task)
    _exports(pipe, settings, [k for k in keys if _label(k, settings.profile) not in dict(outcome.failed)], outcome)
    return outcome


def _serial(pipe: Pipeline, keys: list[ModelKey], outcome: Outcome, progress: bool,
            write: Callable[[str], None]) -> None:
    from tqdm import tqdm

    profile = pipe.profile
    with tqdm(total=len(keys), desc="prepare", unit="model", disable=not progress, file=sys.stderr) as bar:
        for key in keys:
            label = _label(key, profile)
            try:
                res = pipe.case(key)
            except Exception as exc:
                if key.is_base:
                    raise  # nothing can be pruned without it
                outcome.failed.append((label, _one_line(exc)))
                write(f"vggprune prepare: {label} failed: {_one_line(exc)}")
            else:
                (outcome.cached if res.from_cache else outcome.trained).append(label)
            bar.update()


# ---------------------------------------------------------------- Ray

def _probe(address: str) -> None:
    """An explicit HOST:PORT must accept a connection within seconds: Ray itself retries for minutes."""
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"--ray-address: expected auto or HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_SECONDS).close()
    except OSError as exc:
        raise UserError(f"--ray-address {address}: cannot reach a Ray cluster there "
                        f"({exc.strerror or type(exc).__name__})") from None


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join the cluster at ``address`` (``auto``: the one on this machine) or start a local one.

    Returns True when this call connected (and the caller should ``ray.shutdown()``), False when
    Ray was already initialised here. Tasks run this process's vggprune code: it is shipped with
    the job (Ray's ``py_modules``), so a worker never imports another installed copy.
    """
    try:
        import ray
    except ImportError:
        raise UserError(f"--executor ray needs Ray, which is not installed: {RAY_HINT}") from None
    if address and address != "auto":
        _probe(address)
    if ray.is_initialized():
        return False
    import vggprune

    runtime_env = {"py_modules": [str(Path(vggprune.__file__).parent)], "excludes": ["__pycache__"]}
    try:
        ray.init(address=address, num_cpus=num_cpus if not address else None, runtime_env=runtime_env,
                 include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        where = f"--ray-address {address}" if address else "a local Ray cluster"
        raise UserError(f"{where}: cannot connect ({_one_line(exc)})") from None
    return True


def _one_line(exc: BaseException) -> str:
    from vggprune.cli import one_line

    cause = getattr(exc, "cause", None)  # a RayTaskError wraps the task's own exception
    if isinstance(cause, BaseException):
        exc = cause
    text = one_line(exc) if not isinstance(exc, UserError) else str(exc).splitlines()[0]
    return text if isinstance(exc, UserError) else f"{type(exc).__name__}: {text}"


def _key_difference(ours: dict[str, Any], theirs: dict[str, Any], where: str = "") -> list[str]:
    diff = []
    for name in sorted(set(ours) | set(theirs)):
        a, b = ours.get(name), theirs.get(name)
        if isinstance(a, dict) and isinstance(b, dict):
            diff += _key_difference(a, b, f"{where}{name}.")
        elif canonical({"v": a}) != canonical({"v": b}):
            diff.append(f"{where}{name}")
    return diff


def _on_ray(pipe: Pipeline, keys: list[ModelKey], settings: RunSettings, options: PrepareOptions,
            outcome: Outcome, progress: bool, write: Callable[[str], None], task: Callable[..., TaskResult]) -> None:
    import json

    from tqdm import tqdm

    from vggprune.checkpoint import model_from_payload, model_payload

    started = connect(options.address)
    import ray

    profile = pipe.profile
    recipe = Recipe(profile, settings.data_root, settings.download, pipe.device.type, settings.threads,
                    pipe.init_source())
    remote = ray.remote(task).options(num_cpus=options.cpus_per_task or settings.threads,
                                      num_gpus=options.gpus_per_task, max_retries=RETRIES, retry_exceptions=False)
    pending: dict[Any, ModelKey] = {}

    def receive(ref, key: ModelKey):
        """The task's trained model stored in this process's cache, or None with the failure noted."""
        label = _label(key, profile)
        try:
            result: TaskResult = ray.get(ref)
            cache_key = pipe.cache_entry(key)[0]
            if result.cache_key != canonical(cache_key):
                theirs = json.loads(result.cache_key)
                raise UserError(f"the worker computed another cache key (it differs in "
                                f"{', '.join(_key_difference(cache_key, theirs)) or 'its layout'}): its data, "
                                f"libraries or training device differ from this machine's")
        except (UserError, ray.exceptions.RayError) as exc:
            outcome.failed.append((label, _one_line(exc)))
            write(f"vggprune prepare: {label} failed: {_one_line(exc)}")
            return None
        model = model_from_payload(result.payload, f"the model {label} a worker sent")
        stored = pipe.store(key, Trained(model, result.info, result.results, result.seconds))
        outcome.trained.append(label)
        return stored

    try:
        todo = []
        base = pipe.lookup(BASE)
        if base is not None:
            outcome.cached.append(_label(BASE, profile))
        for key in keys:
            if key.is_base:
                continue
            hit = pipe.lookup(key)
            if hit is not None:
                outcome.cached.append(_label(key, profile))
            else:
                todo.append(key)
            del hit  # one model in memory at a time
        total = len(todo) + (base is None)
        with tqdm(total=total, desc="prepare (ray)", unit="model", disable=not progress, file=sys.stderr) as bar:
            if base is None:  # trained first: every pruned model starts from it
                ref = remote.remote(recipe, BASE, model_payload(pipe.initial_model()))
                pending[ref] = BASE
                base = receive(ref, BASE)
                del pending[ref]
                bar.update()
                if base is None:
                    outcome.failed += [(_label(k, profile), "the base model failed") for k in todo]
                    return
            if todo:
                start = ray.put(model_payload(base.model))
                for key in todo:
                    pending[remote.remote(recipe, key, start)] = key
            while pending:
                # with a timeout, so Ctrl-C is seen while every task is still running
                done, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_SECONDS)
                for ref in done:
                    receive(ref, pending.pop(ref))
                    bar.update()
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        write(f"vggprune prepare: interrupted: {len(outcome.trained)} model(s) stored, "
              f"{len(pending)} task(s) cancelled")
        raise
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------- exports

def _exports(pipe: Pipeline, settings: RunSettings, keys: list[ModelKey], outcome: Outcome) -> None:
    """The runtimes' files the harness would export (its ``runner()``), built here one model at a time.

    Exports depend on the weights only, not on the device, so each is built once with the first of
    the run's devices the runtime can run on; a runtime unavailable on all of them is skipped, as the
    harness would skip its cases.
    """
    from vggprune.runtimes import get_runtime
    from vggprune.timing.pairing import make_batch

    example = make_batch(1, settings.profile.image_size, "cpu")
    skipped: dict[str, str] = {}
    for key in keys:
        runtimes = [r for r in settings.runtimes_for(key) if get_runtime(r).exports]
        if not runtimes:
            continue
        res = pipe.lookup(key)
        if res is None:  # not stored (cache unwritable): the harness will build and export it itself
            continue
        for name in runtimes:  # the runtimes that write files of their own
            runtime = get_runtime(name)
            device = next((d for d in settings.devices if runtime.unavailable(d) is None), None)
            if device is None:
                skipped[name] = runtime.unavailable(settings.devices[0]) or name
                continue
            runner = runtime.prepare(res.model, device, settings.memory_format, example, pipe.export_dir(key))
            if runner.reused:
                outcome.exports_reused += 1
            else:
                outcome.exports_built += 1
            del runner
    outcome.notes += [f"no {name} exports: {why}" for name, why in skipped.items()]
