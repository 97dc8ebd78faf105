"""`vggprune train` / `vggprune evaluate`: one case (profile, method, scope, rate) at a time.

``train`` builds the case through the checkpoint cache (training the base model first if needed)
and prints its test accuracy with a 95 % Wilson interval (and, for a pruned case, the accuracy of the
pruned model before fine-tuning: the damage pruning did), the test set's size and fingerprint, and
where the checkpoint is. ``evaluate`` measures a checkpoint that
already exists (the cached case, or any saved model given with ``--checkpoint``) without training.
"""

from __future__ import annotations

import argparse
import sys

from vggprune.choices import METHODS, SCOPES
from vggprune.errors import UserError
from vggprune.options import TRAINING, add_options, read_options


def _add_case_options(p: argparse.ArgumentParser) -> None:
    # The training options are the harness's own (vggprune.options): same names, help and env twins.
    add_options(p.add_argument, TRAINING + ("criterion", "round_to"))
    p.add_argument("--method", default="torch-pruning",
                   help=f"{' | '.join(METHODS)} (default torch-pruning)")
    p.add_argument("--scope", default="fc", help=f"{' | '.join(SCOPES)} (default fc)")
    p.add_argument("--rate", type=float, default=0.0,
                   help="fraction of units to remove, in [0, 1) (default 0)")
    p.add_argument("--device", dest="train_device", default=None, help="the same as --train-device")
    progress = p.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None,
                          help="always show progress bars (default: only on a terminal outside CI)")
    progress.add_argument("--no-progress", dest="progress", action="store_false", help="never show them")


def _check_case(args: argparse.Namespace) -> None:
    """Validate the case before any data is touched or model built: ``args.key`` names the model."""
    from vggprune.limits import MAX_ROUND_TO, int_in_range
    from vggprune.pruning import model_key

    args.criterion = args.criterion or "l2"
    args.round_to = int_in_range("--round-to", args.round_to or "1", 1, MAX_ROUND_TO)
    args.key = model_key(args.method, args.scope, args.rate, args.criterion, args.round_to)
    args.rate = args.key.rate


def _pipeline(args: argparse.Namespace):
    from vggprune.pipeline import Pipeline
    from vggprune.settings import check_data_root, existing_file, resolve_profile

    raw, notes = read_options(lambda dest: getattr(args, dest, None), TRAINING + ("criterion", "round_to"))
    for note in notes:
        print(f"vggprune {args.command}: warning: {note}", file=sys.stderr)
    args.criterion, args.round_to = raw["criterion"], raw["round_to"]
    profile = resolve_profile(raw)
    data_root = check_data_root(raw["data_root"])
    weights = existing_file("--weights", raw["weights"])
    _check_case(args)
    import torch

    from vggprune.settings import resolve_train_device

    device = resolve_train_device(raw["train_device"], torch.cuda.is_available())
    pipe = Pipeline(profile, data_root=data_root, download=raw["download"], weights=weights,
                    cache_dir=raw["cache_dir"], use_cache=not raw["no_cache"], progress=args.progress,
                    device=device)
    if pipe.data_missing_reason:  # the harness carries on without data; a command asked for accuracy
        raise UserError(pipe.data_missing_reason)
    return pipe


def _case_name(args: argparse.Namespace, profile: str) -> str:
    if args.rate == 0:
        return f"{profile}, unpruned"
    return f"{profile}, {args.method} {args.scope} {args.criterion} rate {args.rate:g}"


def _top1_text(correct: str) -> str:
    """``0.9861 (355/360; 95% CI 0.9680-0.9940)``: the figure, its evidence and its uncertainty."""
    from vggprune.stats import accuracy, wilson_interval

    hits, n = correct.count("1"), len(correct)
    low, high = wilson_interval(hits, n)
    return f"{accuracy(correct):.4f} ({hits}/{n}; 95% CI {low:.4f}-{high:.4f})"


def _print_accuracy(name: str, split: str, correct: str, top5: float) -> None:
    print(f"{name}: {split} top-1 {_top1_text(correct)}, top-5 {top5:.4f}")


def run_train(args: argparse.Namespace) -> int:
    from vggprune.atomic import check_output_file
    from vggprune.checkpoint import save_model

    if args.out:
        check_output_file(args.out, "--out")  # before hours of training, not after
    pipe = _pipeline(args)
    res = pipe.case(args.key)
    assert res.correct is not None and res.top5 is not None  # data present, so measured
    _print_accuracy(_case_name(args, pipe.profile.name), "test", res.correct, res.top5)
    if res.correct_before_finetune is not None:
        print(f"before fine-tuning: test top-1 {_top1_text(res.correct_before_finetune)}")
    print(f"test set: {len(res.correct)} images, fingerprint {res.test_fingerprint}")
    how = f"loaded from cache in {res.seconds:.1f} s" if res.from_cache else f"built in {res.seconds:.1f} s"
    if res.checkpoint:
        print(f"checkpoint: {res.checkpoint} ({how})")
    elif not args.out:
        print(f"checkpoint: not saved ({how}; cache off: use --out PATH to keep the weights)")
    if args.out:
        print(f"saved a copy: {save_model(res.model, args.out, extra=res.info)}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from vggprune.checkpoint import load_model

    pipe = _pipeline(args)
    if args.checkpoint:
        model, _ = load_model(args.checkpoint)
        source, name = args.checkpoint, f"{pipe.profile.name}, {args.checkpoint}"
    else:
        res = pipe.cached(args.key)
        if res is None:
            where = f"none in {pipe.cache.root}" if pipe.cache.enabled else "the cache is off"
            raise UserError(f"no trained checkpoint for {_case_name(args, pipe.profile.name)} ({where}); "
                            f"run `vggprune train` with the same options first, or pass --checkpoint PATH")
        model, source, name = res.model, res.checkpoint, _case_name(args, pipe.profile.name)
    result = pipe.evaluate_images(model, args.split)
    _print_accuracy(name, args.split, result.correct, result.top5)
    if args.split == "test":
        print(f"test set: {result.n} images, fingerprint {pipe.test_fingerprint}")
    print(f"checkpoint: {source}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train (or fetch from the cache) one case and print its test accuracy")
    _add_case_options(p)
    p.add_argument("--out", default=None, help="also save the trained model here (.pt)")
    p.set_defaults(func=run_train)

    p = sub.add_parser("evaluate", help="evaluate a cached case, or --checkpoint PATH, on the profile's data")
    _add_case_options(p)
    p.add_argument("--checkpoint", default=None,
                   help="a saved vggprune model to evaluate instead of the cached case")
    p.add_argument("--split", default="test", choices=("val", "test"), help="which split (default test)")
    p.set_defaults(func=run_evaluate)
