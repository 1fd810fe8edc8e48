"""Command line of the `dask-operator` process.

Every subcommand is a small function that parses its own flags; `main` only dispatches.
Held by test/unit/test_packaging.py, test/unit/test_run.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dask_operator import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dask-operator",
        description="A level-triggered Kubernetes operator for Dask (kubernetes.dask.org/v1).",
    )
    parser.add_argument("--version", action="version", version=f"dask-operator {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    from dask_operator.controller.run import add_run_parser

    add_run_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return int(args.handler(args))
