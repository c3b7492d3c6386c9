"""The ``ecrstream`` command (placeholder until the CLI lands)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    print("ecrstream: the command line is not written yet", file=sys.stderr)
    return 2
