"""`vggprune report` (tables, CSV/JSON and plots from benchmark JSON) and `vggprune compare` (CI gate)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vggprune.report import FORMATS


def run_report(args: argparse.Namespace) -> int:
    from vggprune.atomic import check_output_dir
    from vggprune.report import load_rows, render, write_summaries

    out = check_output_dir(Path(args.out) if args.out else Path(args.runs[0]).parent, "--out")  # before work
    runs, rows = load_rows(args.runs)
    written = write_summaries(runs, rows, out)
    if not args.no_plots:
        from vggprune.plots import write_plots

        written += write_plots(rows, out)
    sys.stdout.write(render(runs, rows, args.format))
    # stdout stays pure table/CSV/JSON so it can be redirected; the file list goes to stderr
    print(f"wrote {len(written)} files to {out}: {', '.join(p.name for p in written)}", file=sys.stderr)
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from vggprune.compare import Tolerances, compare_files, render_comparison

    tol = Tolerances(max_accuracy_drop=args.max_accuracy_drop, max_latency_ratio=args.max_latency_ratio,
                     check_latency=not args.no_latency, fail_on_missing=args.fail_on_missing)
    result = compare_files(args.baseline, args.candidate, tol)
    sys.stdout.write(render_comparison(result, args.format))
    return result.exit_code


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
                       description="Exit 0: no regression; 1: a regression (params/MACs changed, top-1 "
                                   "dropped, p50 slower than allowed); 2: bad input.")
    p.add_argument("baseline", metavar="BASELINE.json")
    p.add_argument("candidate", metavar="CANDIDATE.json")
    p.add_argument("--max-accuracy-drop", type=float, default=0.01,
                   help="largest allowed top-1 drop, absolute fraction (default 0.01 = 1 point)")
    p.add_argument("--max-latency-ratio", type=float, default=1.5,
                   help="largest allowed candidate p50 / baseline p50 (default 1.5)")
    p.add_argument("--no-latency", action="store_true", help="do not judge latency (e.g. different machines)")
    p.add_argument("--fail-on-missing", action="store_true",
                   help="count baseline cases missing from the candidate as regressions")
    p.add_argument("--format", choices=("github", "plain", "json"), default="github",
                   help="output format (default github)")
    p.set_defaults(func=run_compare)
