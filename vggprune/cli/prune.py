"""Commands on models without data: `vggprune params` (size and MACs over a sweep of rates), `vggprune prune`
(write one pruned model) and `vggprune breakdown` (where a pruned model's time goes, part by part)."""

from __future__ import annotations

import argparse
import json

from tabulate import tabulate

from vggprune.choices import CRITERIA, METHODS, SCOPES, VARIANTS, check_choice, check_rate, parse_rates
from vggprune.errors import UserError
from vggprune.identity import DEFAULT_RUNTIME
from vggprune.limits import MAX_BATCH, MAX_NUM_CLASSES, MAX_ROUND_TO, MAX_ROUNDS, MAX_SEED, int_in_range


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="seed", help=f"model variant: {', '.join(VARIANTS)} (default seed)")
    p.add_argument("--num-classes", default="102",
                   help=f"classifier outputs, 1..{MAX_NUM_CLASSES:,} (default 102)")
    p.add_argument("--method", default="torch-pruning",
                   help=f"{' | '.join(METHODS)} (default torch-pruning)")
    p.add_argument("--scope", default="fc", help=f"{' | '.join(SCOPES)} (default fc)")
    p.add_argument("--criterion", default="l2", help=f"{' | '.join(CRITERIA)} (default l2)")
    p.add_argument("--round-to", default="1",
                   help=f"round kept widths down to a multiple, 1..{MAX_ROUND_TO} (default 1)")
    p.add_argument("--seed", default="0", help="seed for weights and the random criterion (default 0)")


def _check_model_options(args: argparse.Namespace) -> None:
    """Every option checked before a model is built: one line each, never an allocator error."""
    check_choice("model", args.model, VARIANTS)
    check_choice("method", args.method, METHODS)
    check_choice("scope", args.scope, SCOPES)
    check_choice("criterion", args.criterion, CRITERIA)
    args.num_classes = int_in_range("--num-classes", args.num_classes, 1, MAX_NUM_CLASSES)
    args.round_to = int_in_range("--round-to", args.round_to, 1, MAX_ROUND_TO)
    args.seed = int_in_range("--seed", args.seed, 0, MAX_SEED)


def _base_model(args: argparse.Namespace):
    import torch

    torch.manual_seed(args.seed)
    from vggprune.models import build_vgg11

    return build_vgg11(args.model, num_classes=args.num_classes).eval()


def run_params(args: argparse.Namespace) -> int:
    from vggprune.counting import count_params_macs
    from vggprune.pruning import prune

    _check_model_options(args)
    rates = parse_rates(args.rates)
    base = _base_model(args)
    base_params, _ = count_params_macs(base)
    rows = []
    for rate in rates:
        model = prune(base, rate, method=args.method, scope=args.scope, criterion=args.criterion,
                      round_to=args.round_to, seed=args.seed)
        params, macs = count_params_macs(model)
        rows.append({
            "model": args.model, "method": args.method, "scope": args.scope, "criterion": args.criterion,
            "rate": rate, "params": params, "params_pct": round(100 * params / base_params, 2),
            "macs": macs, "widths": {"conv": list(model.spec.conv_widths), "fc": list(model.spec.fc_widths)},
        })
        del model
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        table = [[r["rate"], f"{r['params']:,}", f"{r['params_pct']:.1f}", f"{r['macs'] / 1e6:,.1f}",
                  "-".join(map(str, r["widths"]["fc"])), "-".join(map(str, r["widths"]["conv"]))]
                 for r in rows]
        print(f"{args.model} ({args.num_classes} classes), method {args.method}, scope {args.scope}, "
              f"criterion {args.criterion}")
        print(tabulate(table, headers=["rate", "params", "% of base", "MMACs", "FC widths", "conv widths"],
                       tablefmt="github", disable_numparse=True))
    return 0


def run_prune(args: argparse.Namespace) -> int:
    from vggprune.atomic import check_output_file
    from vggprune.checkpoint import load_model, save_model
    from vggprune.counting import count_params_macs
    from vggprune.pruning import prune

    _check_model_options(args)
    rate = check_rate(args.rate)
    check_output_file(args.out, "--out")  # before the model is built and pruned
    base = load_model(args.input)[0] if args.input else _base_model(args)
    model = prune(base, rate, method=args.method, scope=args.scope, criterion=args.criterion,
                  round_to=args.round_to, seed=args.seed)
    params, macs = count_params_macs(model)
    extra = {"method": args.method, "scope": args.scope, "criterion": args.criterion, "rate": rate,
             "source": args.input or f"random init, seed {args.seed}"}
    path = save_model(model, args.out, extra=extra)
    print(f"wrote {path}: {params:,} params, {macs:,} MACs, "
          f"conv {list(model.spec.conv_widths)}, fc {list(model.spec.fc_widths)}")
    return 0


def run_breakdown(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    import torch

    from vggprune.limits import max_threads
    from vggprune.models import spec_for
    from vggprune.pruning import prune
    from vggprune.runtimes import get_runtime
    from vggprune.settings import check_inference_batch
    from vggprune.timing.breakdown import breakdown, breakdown_runtimes, render

    _check_model_options(args)
    rate = check_rate(args.rate)
    check_choice("runtime", args.runtime, breakdown_runtimes())
    batch_size = int_in_range("--batch-size", args.batch_size, 1, MAX_BATCH)
    rounds = int_in_range("--rounds", args.rounds, 2, MAX_ROUNDS)
    if args.threads is not None:
        torch.set_num_threads(int_in_range("--threads", args.threads, 1, max_threads()))
    reason = get_runtime(args.runtime).unavailable("cpu")
    if reason:
        raise UserError(reason)
    spec = spec_for(args.model, args.num_classes)
    check_inference_batch("--batch-size", args.model, spec, spec.input_size, batch_size)  # before any model is built
    base = _base_model(args)
    pruned = prune(base, rate, method=args.method, scope=args.scope, criterion=args.criterion,
                   round_to=args.round_to, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="vggprune-breakdown-") as workdir:
        result = breakdown(base, pruned, args.runtime, batch_size, rounds, workdir=Path(workdir))
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(render(result, f"{args.model}, {args.method} {args.scope} {args.criterion} rate {rate:g} "
                             f"(random-init weights, seed {args.seed}) against its base"))
    return 0


def register(sub) -> None:
    p = sub.add_parser("params", help="parameter and MAC counts of a model pruned at several rates")
    _add_model_options(p)
    p.add_argument("--rates", default="0,0.1,0.2,0.3,0.4,0.5", help="comma-separated rates in [0, 1)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=run_params)

    p = sub.add_parser("prune", help="prune one model and save it (spec + state_dict)")
    _add_model_options(p)
    p.add_argument("--rate", type=float, required=True, help="fraction of units to remove, in [0, 1)")
    p.add_argument("--input", default=None, help="a saved vggprune model to prune (default: a fresh one)")
    p.add_argument("--out", required=True, help="where to write the pruned model (.pt)")
    p.set_defaults(func=run_prune)

    p = sub.add_parser("breakdown", help="time a pruned model and its base part by part (CPU): where the speed-up goes")
    _add_model_options(p)
    p.add_argument("--rate", type=float, required=True, help="fraction of units to remove, in [0, 1)")
    p.add_argument("--runtime", default=DEFAULT_RUNTIME,
                   help=f"one that can time its parts: eager, fused, onnxruntime (default {DEFAULT_RUNTIME})")
    p.add_argument("--batch-size", default="8", help="images per forward (default 8)")
    p.add_argument("--rounds", default="10", help="timed rounds per model, interleaved (default 10)")
    p.add_argument("--threads", default=None, help="torch and ONNX Runtime threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="print the breakdown as JSON instead of a table")
    p.set_defaults(func=run_breakdown)
