"""`vggprune prepare`: train, fine-tune and export ahead of `pytest bench/`, serially or on Ray.

It takes the harness's options (the same flags and env twins, so the same command line works for
both) plus the executor's; see vggprune.prepare for what is built where. Exit 0 when every model
is in the cache, 1 with the list of failed models, 2 for a bad option or an unreachable cluster.
"""

from __future__ import annotations

import argparse
import sys

from vggprune.options import HARNESS, PREPARE, add_options, read_options


def run_prepare(args: argparse.Namespace) -> int:
    import torch

    from vggprune.prepare import prepare, resolve_prepare
    from vggprune.settings import resolve_settings

    raw, notes = read_options(lambda dest: getattr(args, dest, None), HARNESS + PREPARE)
    for note in notes:
        print(f"vggprune prepare: warning: {note}", file=sys.stderr)
    options = resolve_prepare(raw)
    settings = resolve_settings(raw, torch.cuda.is_available())
    outcome = prepare(settings, options, progress=not args.no_progress)
    where = "on Ray" if options.executor == "ray" else "here"
    print(f"vggprune prepare: {len(outcome.trained)} model(s) trained {where}, {len(outcome.cached)} already in "
          f"the cache, {len(outcome.failed)} failed; exports: {outcome.exports_built} built, "
          f"{outcome.exports_reused} already there")
    for note in outcome.notes:
        print(f"vggprune prepare: {note}")
    if outcome.failed:
        print(f"vggprune prepare: failed: {', '.join(label for label, _ in outcome.failed)}", file=sys.stderr)
        return 1
    return 0


def register(sub) -> None:
    p = sub.add_parser("prepare", help="build every checkpoint and export `pytest bench/` with the same options "
                                       "needs (serially, or as Ray tasks with --executor ray)")
    add_options(p.add_argument, HARNESS + PREPARE)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_prepare)
