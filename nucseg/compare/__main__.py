"""Command line: ``python -m nucseg.compare [RUN_OR_SWEEP_DIR ...]``.

Without a directory it compares the newest sweep under ``logs/multiruns/``, which is what a
user who just ran ``python train.py -m model=...`` wants to see.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from nucseg.compare.collect import DEFAULT_SWEEPS, collect_runs, newest_sweep
from nucseg.compare.report import write_comparison

__all__ = ["build_parser", "main", "newest_sweep"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (separate so docs and tests can inspect it)."""
    parser = argparse.ArgumentParser(
        prog="python -m nucseg.compare",
        description="Compare runs: comparison.md, comparison.csv, curves.png, examples.png.",
    )
    add = parser.add_argument
    add("paths", nargs="*", type=Path, help=f"run or sweep folders (default: newest in {DEFAULT_SWEEPS}/)")
    add("--out", type=Path, help="output folder (default: <first path>/comparison)")
    add("--sweeps-root", type=Path, default=DEFAULT_SWEEPS, help="where to look for the newest sweep")
    add("--no-examples", action="store_true", help="skip examples.png (no checkpoint loading)")
    add("--crop-size", type=int, default=256, help="side of the example crops in pixels")
    add("--num-images", type=int, default=3, help="test images that give one example crop each")
    add("--resamples", type=int, default=10_000, help="bootstrap resamples of the test images (intervals, paired comparison)")
    add("--confidence", type=float, default=0.95, help="nominal coverage of the intervals")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; 0 on success (crashed runs included), 1 when there is nothing to compare."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0.0 < args.confidence < 1.0:
        parser.error(f"--confidence must be in (0, 1), e.g. 0.95; got {args.confidence}")
    if args.resamples < 1:
        parser.error(f"--resamples must be at least 1; got {args.resamples}")
    # WARNING, not INFO: TensorBoard's event reader logs a line per file at INFO.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")

    paths = list(args.paths)
    if not paths:
        sweep = newest_sweep(args.sweeps_root)
        if sweep is None:
            print(f"error: {args.sweeps_root}: no sweep folder; pass a run or sweep folder", file=sys.stderr)
            return 1
        paths = [sweep]
    try:
        runs = collect_runs(paths)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not runs:
        where = ", ".join(map(str, paths))
        print(f"error: {where}: no run directory (with .hydra/config.yaml or metrics.json)", file=sys.stderr)
        return 1

    out_dir = args.out or paths[0] / "comparison"
    outputs = write_comparison(
        runs,
        out_dir,
        sources=paths,
        examples=not args.no_examples,
        crop_size=args.crop_size,
        num_images=args.num_images,
        num_resamples=args.resamples,
        confidence=args.confidence,
    )

    from rich.console import Console

    # Piped output (make, CI logs) would otherwise be squeezed into rich's default 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    title = f"Test set: {len(runs)} runs from {', '.join(map(str, paths))}"
    console.print(outputs.table.to_rich(title=title))
    paired = outputs.table.paired_to_rich(title="Paired comparison: best row by Dice against each other row, per image")
    if paired is not None:
        console.print(paired)
    for written in (outputs.markdown, outputs.csv, outputs.curves, outputs.examples):
        if written is not None:
            console.print(f"wrote {written}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
