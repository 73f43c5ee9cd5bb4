"""``python -m nucseg.data.check ROOT`` (or ``make check-data ROOT=...``): the check alone.

Exit status 0 when the root is usable, 2 when it has problems (each on its own line, then a
summary). The root comes from the command line here, not from ``data.root``, so the messages
about a missing root name the argument.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from nucseg.data.check.checker import OUTSIDE_TOLERANCE_PX, check_monuseg_root
from nucseg.data.monuseg import MONUSEG_ROOT_ENV, SPLITS, MonusegError

_USAGE = "python -m nucseg.data.check /path/to/monuseg"


def _root_problem(root: str | None) -> str | None:
    """Why the ``ROOT`` argument (or ``$MONUSEG_ROOT``) cannot be checked, with the fix; None when it can."""
    root = root or os.environ.get(MONUSEG_ROOT_ENV) or None
    if root is None:
        return f"MoNuSeg root not given: {_USAGE} (the folder holding train/ and test/), or set {MONUSEG_ROOT_ENV}"
    if not Path(root).expanduser().is_dir():
        return f"{Path(root).expanduser()}: MoNuSeg root not found: {_USAGE} (the folder holding train/ and test/)"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Check a root and print the changes, the problems and a summary.

    Args:
        argv: the arguments (None: ``sys.argv[1:]``).

    Returns:
        0 when the root is usable, 2 when it has problems or cannot be checked.
    """
    parser = argparse.ArgumentParser(
        prog="python -m nucseg.data.check", description="Check a MoNuSeg data root (every problem at once)."
    )
    parser.add_argument("root", nargs="?", help=f"the folder holding train/ and test/ (default: ${MONUSEG_ROOT_ENV})")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument("--tolerance-px", type=float, default=OUTSIDE_TOLERANCE_PX, help="vertices allowed past the edge")
    args = parser.parse_args(argv)
    problem = _root_problem(args.root)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        report = check_monuseg_root(args.root, args.splits, outside_tolerance_px=args.tolerance_px)
    except MonusegError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for line in report.change_lines():
        print(f"note: {line}")
    for problem_found in report.problems:
        print(problem_found.line(), file=sys.stderr)
    print(report.summary(), file=sys.stderr if report.problems else sys.stdout)
    return 0 if report.ok else 2
