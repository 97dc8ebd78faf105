"""`vggprune report` (tables, CSV/JSON and plots from benchmark JSON) and `vggprune compare` (CI gate)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vggprune.results.report import FORMATS


def run_report(args: argparse.Namespace) -> int:
    from vggprune.atomic import check_output_dir
    from vggprune.results.report import load_rows, remove_stale, render, write_summaries

    out = check_output_dir(Path(args.out) if args.out else Path(args.runs[0]).parent, "--out")  # before work
    runs, rows = load_rows(args.runs)
    written = write_summaries(runs, rows, out)
    if not args.no_plots:
        from vggprune.results.plots import write_plots

        written += write_plots(rows, out)
    stale = remove_stale(out, written)
    sys.stdout.write(render(runs, rows, args.format))
    # stdout stays pure table/CSV/JSON so it can be redirected; the file list goes to stderr
    print(f"wrote {len(written)} files to {out}: {', '.join(p.name for p in written)}", file=sys.stderr)
    if stale:
        print(f"removed {len(stale)} stale files of an earlier report: {', '.join(p.name for p in stale)}",
              file=sys.stderr)
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from vggprune.results.compare import Tolerances, compare_files, render_comparison

    tol = Tolerances(max_accuracy_drop=args.max_accuracy_drop, latency_tolerance=args.latency_tolerance,
                     alpha=args.alpha, latency_metric=args.latency_metric, check_latency=not args.no_latency,
                     run_spread=args.run_spread,
                     gate_across_machines=args.gate_across_machines, fail_on_missing=args.fail_on_missing)
    result = compare_files(args.baseline, args.candidate, tol)
    sys.stdout.write(render_comparison(result, args.format))
    return result.exit_code


def run_calibration(args: argparse.Namespace) -> int:
    from vggprune.choices import SCOPES, check_choice
    from vggprune.results.calibration import coverage, render, total_coverage
    from vggprune.results.record import load_runs

    scopes = [check_choice("scope", s.strip(), SCOPES) for s in args.scopes.split(",") if s.strip()]
    cases = coverage(load_runs(args.runs), scopes, args.batch_size)
    sys.stdout.write(render(cases))
    return 1 if args.min_coverage is not None and total_coverage(cases) < args.min_coverage else 0


def register(sub) -> None:
    p = sub.add_parser("report", help="summary tables, CSV/JSON and PNG plots from --benchmark-json runs",
                       description="Build the report from pytest-benchmark JSON alone. Several runs (e.g. a "
                                   "CPU run and a GPU run from different machines) are merged.")
    p.add_argument("runs", nargs="+", metavar="RUN.json", help="pytest bench/ --benchmark-json output")
    p.add_argument("--format", choices=FORMATS, default="github",
                   help="what to print on stdout (default github); the files are written either way")
    p.add_argument("--out", default=None,
                   help="where summary.md/.csv/.json and the PNGs go (default: the first run's directory)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.set_defaults(func=run_report)

    p = sub.add_parser("compare", help="compare a candidate run with a baseline; exit 1 on a regression",
                       description="Verdicts from each run's raw evidence: exact params/MACs; top-1 by McNemar's "
                                   "exact test on per-image correctness; speed-up by a test of the medians of the "
                                   "paired rounds. A case regresses only when the change is significant and its "
                                   "whole 95 %% CI lies beyond the tolerance. Exit 0: no regression; 1: a "
                                   "regression; 2: bad input.")
    p.add_argument("baseline", metavar="BASELINE.json")
    p.add_argument("candidate", metavar="CANDIDATE.json")
    p.add_argument("--max-accuracy-drop", type=float, default=0.01,
                   help="top-1 tolerance: a significant drop must exceed this fraction (default 0.01 = 1 point)")
    p.add_argument("--latency-tolerance", type=float, default=0.05,
                   help="a significant speed-up (or latency) change must exceed this fraction (default 0.05)")
    p.add_argument("--run-spread", type=float, default=None,
                   help="between-run SD (log scale) each run's speed-up may carry (default: the larger the two "
                        "runs recorded, 0.05 for files that recorded none); `vggprune calibration` measures it")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of every test (default 0.05)")
    p.add_argument("--latency-metric", choices=("speedup", "absolute"), default="speedup",
                   help="speedup (default): against each run's own base, valid across sessions; absolute: "
                        "the case's own latency, only between runs of one machine")
    p.add_argument("--gate-across-machines", action="store_true",
                   help="let latency and retrained-accuracy verdicts fail the comparison even when the runs "
                        "come from different machines (default: advisory)")
    p.add_argument("--no-latency", action="store_true", help="do not judge latency")
    p.add_argument("--fail-on-missing", action="store_true",
                   help="count baseline cases missing from the candidate as regressions")
    p.add_argument("--format", choices=("github", "plain", "json"), default="github",
                   help="output format (default github)")
    p.set_defaults(func=run_compare)

    p = sub.add_parser("calibration", help="how often each run's speed-up CI holds the median of same-code runs",
                       description="Coverage check of the speed-up intervals: run the same code several times "
                                   "on a quiet machine, then give every run's JSON. A case counts as covered in a "
                                   "run when that run's 95 %% CI contains the median speed-up over all runs.")
    p.add_argument("runs", nargs="+", metavar="RUN.json", help="three or more --benchmark-json files of one code")
    p.add_argument("--scopes", default="conv,all", help="scopes to count (default conv,all)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size to count (default: the largest)")
    p.add_argument("--min-coverage", type=float, default=None,
                   help="exit 1 when the coverage is below this fraction (default: only report it)")
    p.set_defaults(func=run_calibration)
