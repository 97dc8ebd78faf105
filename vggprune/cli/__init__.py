"""``vggprune`` command line: one sub-command per job, user mistakes reported on one line (exit 2).

Sub-commands live in this package (``prune``, ``train``, ``prepare``, ``report``);
each module exposes ``register(subparsers)`` which adds its parsers with ``set_defaults(func=...)``.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from vggprune.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (no usage dump) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from vggprune.cli import prepare, prune, report, train

    parser = _Parser(prog="vggprune", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in (prune, train, prepare, report):
        module.register(sub)
    return parser


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (a CI cancel, `timeout`) cleans up exactly like Ctrl-C


def one_line(exc: BaseException) -> str:
    """An error's message on one line (a DataLoader worker's error arrives with its traceback)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines and lines[0].startswith("Caught ") else " ".join(lines)


INTERNAL_ERROR = 3  # never 1 (compare's "regression") nor 2 (bad input)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"vggprune {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a write that failed despite the up-front checks (disk full, permissions)
        where = f" {exc.filename}" if exc.filename else ""
        print(f"vggprune {args.command}: error:{where} {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vggprune: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input; exit 1 would read as "regression" to compare's callers
        print(f"vggprune {args.command}: internal error: {type(exc).__name__}: {one_line(exc)} "
              f"(please report it; exit code {INTERNAL_ERROR})", file=sys.stderr)
        return INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
