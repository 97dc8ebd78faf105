"""Every command-line option of the harness and the CLI, defined once.

Like pytest-benchmark's ``add_display_options(addoption, prefix)``, :func:`add_options` takes the
caller's ``addoption`` (pytest's ``group.addoption`` or argparse's ``parser.add_argument``), so the
root conftest and ``vggprune train/evaluate`` declare the same options with the same help and env
twins. :func:`read_options` then turns them into raw strings (option first, then its environment
variable, read through vggprune.env), ready for vggprune.settings to check. Values are not parsed
here, only shaped: a single-value option given a comma list is refused instead of silently keeping
one value; an explicitly empty value is refused instead of meaning "the default". An option given
twice keeps the last, the usual command-line override (e.g. `make bench BENCH_ARGS=...`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from vggprune.env import env_flag, env_name, env_value
from vggprune.errors import UserError
from vggprune.gates import DEFAULT_MAX_DROP
from vggprune.profiles import (
    AUGMENTS,
    FINETUNE_RECIPE,
    SCHEDULES,
    SCRATCH_MAX_BATCH,
    SCRATCH_RECIPE,
    SCRATCH_STEPS_PER_EPOCH,
)

LIST, VALUE, PATH, FLAG = "list", "value", "path", "flag"


@dataclass(frozen=True)
class Option:
    flag: str
    kind: str  # LIST (comma-separated, plural name) | VALUE (one value) | PATH (one path) | FLAG
    help: str
    old: str | None = None  # the previous spelling, still accepted for one release with a warning

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def env(self) -> str:
        return env_name(self.flag)


OPTIONS: dict[str, Option] = {o.dest: o for o in (
    # what is trained (shared by the harness and `vggprune train/evaluate`)
    Option("--profile", VALUE, "quick (default: digits, small VGG11, offline) | seed (the study: Flowers102, "
                               "133M-param VGG11) | imagefolder (your train/val/test folders)"),
    Option("--model", VALUE, "imagefolder only: small | torchvision (default) | seed"),
    Option("--image-size", VALUE, "imagefolder only: image side in pixels, 32..1024 (default 224)"),
    Option("--epochs", VALUE, "base-model training epochs (default: 20 from scratch, 10 from pretrained weights)"),
    Option("--finetune-epochs", VALUE, "fine-tuning epochs after pruning, 0 = one-shot (default: the profile's)"),
    Option("--seed", VALUE, "training seed, 0..2**32-1 (default: the profile's)"),
    Option("--data-root", PATH, "where datasets live (Flowers102, imagefolder); given but missing is an error"),
    Option("--download", FLAG, "download Flowers102 if it is missing under --data-root"),
    Option("--weights", PATH, "a local ImageNet vgg11_bn state_dict for the seed/torchvision models"),
    Option("--cache-dir", PATH, "checkpoint cache (default $XDG_CACHE_HOME/vggprune)"),
    Option("--no-cache", FLAG, "neither read nor write the checkpoint cache"),
    Option("--train-device", VALUE, "where models are trained and scored: auto (default: cuda when present) | "
                                    "cpu | cuda; timing devices are --devices"),
    Option("--criterion", VALUE, "unit ranking: l2 (default), l1, random"),
    Option("--round-to", VALUE, "round kept widths down to a multiple, 1..4096 (default 1)"),
    # the training recipe: defaults follow the model's starting point (docs/own-data.md)
    Option("--augment", VALUE, f"training augmentation: {' | '.join(AUGMENTS)} (default: imagenet from pretrained "
                               f"weights at >= 224 px, crop on smaller images; quick crop, seed imagenet+flip)"),
    Option("--lr", VALUE, f"base-model learning rate, (0, 10] (default: {SCRATCH_RECIPE['lr']:g} from scratch "
                          f"(small model), {FINETUNE_RECIPE['lr']:g} from pretrained weights)"),
    Option("--train-batch-size", VALUE, f"training batch size (default: from scratch "
                                        f"{SCRATCH_MAX_BATCH}, or fewer so an epoch has {SCRATCH_STEPS_PER_EPOCH} "
                                        f"steps; {FINETUNE_RECIPE['train_batch_size']} from pretrained weights)"),
    Option("--schedule", VALUE, f"learning-rate schedule: {' | '.join(SCHEDULES)} (default: "
                                f"{SCRATCH_RECIPE['schedule']} from scratch, {FINETUNE_RECIPE['schedule']} from "
                                f"pretrained weights)"),
    Option("--max-accuracy-drop", VALUE, f"largest top-1 drop vs the base a pruned case may show, significant "
                                         "by McNemar's test, a fraction in [0, 1] (default: the thresholds "
                                         f"file's max_drop, else {DEFAULT_MAX_DROP:g})"),
    # the harness's sweep and measurement
    Option("--rates", LIST, "comma-separated pruning rates in [0, 1) (default 0,0.1,...,0.5)"),
    Option("--methods", LIST, "torch-pruning,by-hand (default both)"),
    Option("--scopes", LIST, "comma-separated scopes: fc, conv, all (default: the profile's)", old="--scope"),
    Option("--devices", LIST, "auto (default: cpu, plus cuda when present) | cpu | cuda | cpu,cuda"),
    Option("--batch-sizes", LIST, "comma-separated inference batch sizes (default: the profile's)"),
    Option("--runtimes", LIST, "eager, fused, onnxruntime, openvino, compile (default eager,fused,onnxruntime,"
                               "openvino); runtimes other than eager time the base and each scope's largest rate"),
    Option("--latency-rounds", VALUE, "timed batches per case (default: the profile's)"),
    Option("--latency-warmup", VALUE, "untimed warm-up batches per case (default: the profile's)"),
    Option("--memory-format", VALUE, "layout for timing: channels_last (default) | contiguous"),
    Option("--threads", VALUE, "torch CPU threads, fixed for the run (default: cores available)"),
    Option("--timing-processes", VALUE, "processes a CPU case's rounds are timed in (default 1: this one, in 5 "
                                        "blocks on fresh model copies); N > 1: this one plus N-1 fresh worker "
                                        "processes, one block each, so the CI covers process-to-process "
                                        "differences (pyperf's approach; 5 costs about 30 s more on quick)"),
    Option("--run-spread", VALUE, "between-run standard deviation (log scale) every speed-up "
                                  "interval allows for, 0..1 (default 0.05; 0 = within this run only); "
                                  "`vggprune calibration` measures your machine's"),
    Option("--thresholds", PATH, "accuracy gates file (default: the harness's bench/thresholds.json)"),
    Option("--expected-params", PATH, "exact parameter counts file (default: bench/expected_params.json)"),
    # `vggprune prepare` only: where the models are trained (PREPARE below)
    Option("--executor", VALUE, "serial (default: one model after another in this process) | ray (each pruned "
                                "model a Ray task; needs pip install 'vggprune[ray]')"),
    Option("--ray-address", VALUE, "Ray cluster to join: auto (the one running on this machine) or HOST:PORT "
                                   "(default: start a local cluster for this run)"),
    Option("--cpus-per-task", VALUE, "CPUs Ray reserves per task (default: --threads, the threads each task "
                                     "trains with)"),
    Option("--gpus-per-task", VALUE, "GPUs Ray reserves per task, e.g. 1 or 0.5 (default 0); above 0 the "
                                     "models are trained, and keyed, on cuda"),
)}
PREPARE = ("executor", "ray_address", "cpus_per_task", "gpus_per_task")
RECIPE = ("augment", "lr", "train_batch_size", "schedule")
TRAINING = ("profile", "model", "image_size", "epochs", "finetune_epochs", "seed", "data_root", "download",
            "weights", "cache_dir", "no_cache", "train_device") + RECIPE
HARNESS = tuple(name for name in OPTIONS if name not in PREPARE)


def add_options(addoption: Callable[..., Any], names: Iterable[str] = HARNESS, prefix: str = "",
                env_help: bool = True) -> None:
    """Declare ``names`` through ``addoption`` (pytest's or argparse's), each flag prefixed by ``prefix``."""
    for name in names:
        opt = OPTIONS[name]
        flag = f"--{prefix}{opt.flag[2:]}"
        env = f" [env {opt.env}{'=1' if opt.kind == FLAG else ''}]" if env_help else ""
        if opt.kind == FLAG:
            addoption(flag, dest=opt.dest, action="store_true", default=False, help=opt.help + env)
            continue
        addoption(flag, dest=opt.dest, default=None, help=opt.help + env)
        if opt.old:
            addoption(f"--{prefix}{opt.old[2:]}", dest=f"{opt.dest}_old", default=None,
                      help=f"deprecated spelling of {flag} (removed in the next release)")


def read_options(get: Callable[[str], Any], names: Iterable[str] = HARNESS,
                 use_env: bool = True) -> tuple[dict[str, Any], list[str]]:
    """(raw values, deprecation notes): strings or None (not given), bools for flags.

    ``get(dest)`` returns the parsed option value. The environment fills what the command line left
    out (empty variables count as unset); an explicitly empty option is an error.
    """
    raw: dict[str, Any] = {}
    notes: list[str] = []
    for name in names:
        opt = OPTIONS[name]
        if opt.kind == FLAG:
            raw[name] = bool(get(opt.dest)) or (use_env and env_flag(opt.env))
            continue
        value, source = get(opt.dest), opt.flag
        if value is None and opt.old and get(f"{opt.dest}_old") is not None:
            value, source = get(f"{opt.dest}_old"), opt.old
            notes.append(f"{opt.old} is deprecated and will be removed in the next release; use {opt.flag}")
        if value is None and use_env:
            value, source = env_value(opt.env), opt.env
            old_env = env_name(opt.old) if opt.old else None
            if value is None and old_env and env_value(old_env) is not None:
                value, source = env_value(old_env), old_env
                notes.append(f"{old_env} is deprecated and will be removed in the next release; use {opt.env}")
        if value is not None:
            value = str(value).strip()
            if not value:
                raise UserError(f"{source}: empty value; leave the option out to get the default")
            if opt.kind == VALUE and "," in value:
                raise UserError(f"{source}: takes one value, got the list {value!r}")
        raw[name] = value
    return raw, notes
