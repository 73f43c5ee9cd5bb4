"""Command line: ``python -m nucseg.export RUN --format torchscript|onnx [--output DIR]``.

Writes the network with its input standardisation (``model.torchscript.pt`` or ``model.onnx``)
and a JSON of what it expects (resolution, tiling, stain reference, threshold, channels), after
checking that it reproduces the trained module's logits (see ``nucseg.export.network``).
Exit status: 0 written, 1 export failed or did not match, 2 usage error or unreadable run.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from nucseg.export.network import DEFAULT_TOLERANCE, FORMATS, ExportError, export_network


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (separate so docs and tests can inspect it)."""
    parser = argparse.ArgumentParser(
        prog="python -m nucseg.export",
        description="Export a trained nucseg network (with its preprocessing) to TorchScript or ONNX.",
    )
    parser.add_argument("run", type=Path, help="run directory (logs/runs/<run>) or .ckpt file")
    parser.add_argument("--format", choices=FORMATS, default="torchscript", help="output format")
    parser.add_argument("--output", type=Path, help="output folder (default: <run>/export)")
    parser.add_argument("--image", type=Path, help="image to verify the export on (default: a synthetic tile)")
    parser.add_argument("--mpp", type=float, help="training resolution (µm/px) when the run did not record it")
    parser.add_argument(
        "--tolerance", type=float, default=DEFAULT_TOLERANCE, help="largest accepted |logit difference|"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the export; return the exit status (module docstring)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from nucseg.checkpoint import CheckpointError, load_model

    try:
        model = load_model(args.run, map_location="cpu")
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        result = export_network(
            args.run, args.format, args.output, args.image, args.tolerance, args.mpp, model=model
        )
    except ExportError as error:
        print(f"error: {args.run}: {error}", file=sys.stderr)
        return 1
    print(f"wrote {result.model_path} and {result.metadata_path.name}")
    print(f"max |logit difference| to the module: {result.max_abs_difference:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
