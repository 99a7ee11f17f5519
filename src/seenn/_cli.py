"""The ``seenn`` command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from seenn._version import __version__


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``seenn`` command."""
    parser = argparse.ArgumentParser(
        prog="seenn",
        description="Live state of long-running jobs: tools for seenn users.",
    )
    parser.add_argument("--version", action="version", version=f"seenn {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``seenn`` command and return its exit status."""
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0
