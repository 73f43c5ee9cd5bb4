"""The command line: ``python -m nucseg.predict`` / ``predict.py``.

Inputs are files, folders (their PNG/JPEG/TIFF files; ``--recursive`` descends) or glob patterns
(quote them so the shell leaves them alone). Images may be RGB, RGBA (alpha is dropped),
greyscale (replicated to RGB), 8 or 16 bit (16 bit is scaled by 255/65535); see
``nucseg.io.images``. Every image is stain-normalised with the reference fitted at training
time (stored in the checkpoint), predicted by sliding window with the run's test settings
(``module.inference``, ``nucseg.inference.settings``) unless overridden here, and written to
``--output`` (names in ``nucseg.predict.outputs``): ``<stem>_labels.tif`` (instances of the
run's post-processing), ``<stem>.geojson`` (QuPath detections with measurements),
``<stem>_nuclei.csv`` (one row per nucleus), ``<stem>_mask.png`` and ``<stem>_overlay.png`` (for
images up to 4096 x 4096 pixels unless ``--png``/``--no-png``) and, with ``--probability``,
``<stem>_prob.tif``.

Pixel size. The input's pixel size comes from its metadata (OME-XML, Aperio ``MPP``, TIFF
resolution tags; see ``nucseg.utils.resolution``) or ``--mpp``; the model's from the run
(``data.mpp``). An input at another pixel size is resampled to the model's, predicted, and the
results mapped back to the input's pixels; areas and lengths are in µm whenever the input's
pixel size is known, in pixels otherwise (then a warning names the file and the model's pixel
size is assumed).
Images above ``--stream-above`` pixels are streamed with bounded memory; each still gets one
stain transform, estimated on a thumbnail of at most 2048 x 2048 pixels and applied to every
block (``nucseg.inference.streaming``).

Whole-slide images (``.svs``, ``.ndpi``, ``.scn``, ``.mrxs``, or a pyramidal ``.tif``; needs the
``wsi`` extra) are read at the pyramid level nearest the model's pixel size and streamed; only
blocks with tissue on the slide's thumbnail are predicted (``--no-tissue``: all). Their polygons
and centroids are in level-0 slide pixels, so QuPath overlays them on the slide; the label TIFF
is on the level's grid, and PNGs are written only with ``--png``. ``--offset X Y`` adds a shift
in level-0 pixels to polygons and centroids of every input, for a region exported from a larger
slide (see ``nucseg.predict.runner``).

A file that cannot be read or predicted is reported on stderr by name and skipped (its partial
outputs are removed); the others are still written. Exit status: 0 when every image was
written, 1 when any failed, 2 for a usage error (bad arguments, no inputs, unreadable model).
"""

from __future__ import annotations

import argparse
import glob
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from nucseg.inference.instances import PostprocessSettings, postprocess_settings
from nucseg.inference.settings import InferenceSettings
from nucseg.inference.tiling import BLEND_MODES
from nucseg.inference.tta import TTA_MODES
from nucseg.io.images import IMAGE_SUFFIXES
from nucseg.predict.grid import OutputPaths
from nucseg.predict.runner import DEFAULT_STREAM_ABOVE, SLIDE_SUFFIXES, predict_file
from nucseg.utils.resolution import PLAUSIBLE_MPP, model_pixel_size, plausible

if TYPE_CHECKING:
    from nucseg.checkpoint import TrainedModel

logger = logging.getLogger("nucseg.predict")
#: The sliding-window settings the command line can change (``add_inference_options``).
INFERENCE_OPTIONS = ("tile_size", "overlap", "batch_size", "blend", "tta", "amp")

#: What folder and glob inputs pick up: images and whole slides.
INPUT_SUFFIXES = IMAGE_SUFFIXES | SLIDE_SUFFIXES


def build_parser() -> argparse.ArgumentParser:
    """The command line (sliding-window and post-processing options default to the run's)."""
    parser = argparse.ArgumentParser(
        prog="python -m nucseg.predict",
        description="Segment nuclei in H&E images with a trained nucseg model.",
    )
    parser.add_argument("inputs", nargs="+", help="image files, folders or quoted glob patterns")
    parser.add_argument("-c", "--checkpoint", required=True, help="run directory or .ckpt file")
    parser.add_argument("-o", "--output", required=True, type=Path, help="folder for the outputs")
    parser.add_argument("--recursive", action="store_true", help="descend into sub-folders of folder inputs")
    add_inference_options(parser)
    post = parser.add_argument_group("post-processing (default: the run's)")
    post.add_argument("--threshold", type=float, help="foreground where probability > this (the rule of the run's test)")
    post.add_argument("--min-size", type=int, help="drop smaller nuclei, in pixels at the model's scale")
    post.add_argument(
        "--connectivity", type=int, choices=[1, 2], help="binary runs: 1 4-connected, 2 8-connected"
    )
    post.add_argument(
        "--max-nucleus-rows",
        type=int,
        default=PostprocessSettings.max_object_rows,
        help="streamed images: halo rows around each band; taller nuclei may be cut",
    )
    scale = parser.add_argument_group("pixel size")
    scale.add_argument(
        "--mpp",
        type=float,
        help="the inputs' pixel size in µm, level 0 for slides (default: from their metadata; unknown: the model's)",
    )
    scale.add_argument(
        "--offset",
        type=float,
        nargs=2,
        metavar=("X", "Y"),
        default=(0.0, 0.0),
        help="add X, Y (level-0 slide pixels) to polygons and centroids: a region exported from a slide",
    )
    _switch(scale, "--tissue", True, "slides: predict only where the thumbnail shows tissue (default; --no-tissue: everywhere)")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument(
        "--probability", action="store_true", help="also write <stem>_prob.tif (uint8, 255 * p)"
    )
    _switch(outputs, "--png", None, "mask and overlay PNGs (default: for images up to 4096 x 4096 pixels)")
    parser.add_argument("--no-stain", action="store_true", help="skip stain normalisation")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--stream-above", type=int, default=DEFAULT_STREAM_ABOVE, help="stream images with more pixels"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def add_inference_options(parser: argparse.ArgumentParser) -> None:
    """The :class:`InferenceSettings` a user may change, with the engine's choices; unset: the run's."""
    window = parser.add_argument_group("sliding window (default: the run's settings)")
    window.add_argument("--tile-size", type=int, help="tile side in pixels")
    window.add_argument("--overlap", type=float, help="pixels (>= 1) or a fraction of the tile (< 1)")
    window.add_argument("--batch-size", type=int, help="tiles per forward pass")
    window.add_argument("--blend", choices=BLEND_MODES)
    window.add_argument("--tta", choices=TTA_MODES)
    _switch(window, "--amp", None, "autocast the network (fp16 on CUDA, bf16 on CPU); --no-amp: float32, what tests score")


def inference_from(args: argparse.Namespace, run: InferenceSettings) -> InferenceSettings:
    """The run's sliding-window settings with the options given on the command line."""
    given = {key: getattr(args, key) for key in INFERENCE_OPTIONS if getattr(args, key) is not None}
    if "overlap" in given:
        given["overlap"] = int(given["overlap"]) if given["overlap"] >= 1 else float(given["overlap"])
    return run.updated(given)


def _switch(group: argparse._ActionsContainer, flag: str, default: bool | None, text: str) -> None:
    """``--flag`` / ``--no-flag``."""
    group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)


def collect_inputs(specs: Sequence[str], recursive: bool = False) -> tuple[list[Path], list[str]]:
    """Expand files, folders and globs into image files (sorted, no duplicates) and errors."""
    files: list[Path] = []
    errors: list[str] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(
                p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES
            )
            if not found:
                errors.append(f"{spec}: no PNG, JPEG, TIFF images or slides in this folder")
            files.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in INPUT_SUFFIXES:
                errors.append(
                    f"{spec}: not a PNG, JPEG, TIFF or slide file ({', '.join(sorted(SLIDE_SUFFIXES))})"
                )
            else:
                files.append(path)
        elif glob.has_magic(spec):
            found = sorted(
                Path(p)
                for p in glob.glob(spec, recursive=True)
                if Path(p).is_file() and Path(p).suffix.lower() in INPUT_SUFFIXES
            )
            if not found:
                errors.append(f"{spec}: pattern matches no images")
            files.extend(found)
        else:
            errors.append(f"{spec}: no such file or folder")
    unique = list(dict.fromkeys(p.resolve() for p in files))
    return unique, errors


def unique_stems(files: Sequence[Path]) -> list[str]:
    """Output stems: the file stem, with ``-2``, ``-3``... added when two inputs share one."""
    seen: dict[str, int] = {}
    stems = []
    for path in files:
        count = seen.get(path.stem, 0) + 1
        seen[path.stem] = count
        stems.append(path.stem if count == 1 else f"{path.stem}-{count}")
    return stems


def _load(checkpoint: str, device_name: str) -> TrainedModel:
    """Load the trained run onto the chosen device."""
    import torch

    from nucseg.checkpoint import load_model

    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    return load_model(checkpoint, map_location=torch.device(device_name))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (module docstring)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    files, input_errors = collect_inputs(args.inputs, args.recursive)
    for error in input_errors:
        print(f"error: {error}", file=sys.stderr)
    if not files:
        print("error: no images to predict", file=sys.stderr)
        return 2
    try:
        model = _load(args.checkpoint, args.device)
    except Exception as error:  # noqa: BLE001 - one line, not a traceback, for a bad model path
        print(
            f"error: {args.checkpoint}: cannot load model ({type(error).__name__}: {error})", file=sys.stderr
        )
        return 2
    try:
        inference = inference_from(args, model.inference)
        settings = postprocess_settings(
            model.postprocess.target,
            model.postprocess.params,
            args.threshold,
            args.min_size,
            args.connectivity,
            max_object_rows=args.max_nucleus_rows,
        )
    except ValueError as error:
        print(f"error: {args.checkpoint}: {error}", file=sys.stderr)
        return 2
    model_mpp = model_pixel_size(model.run_config, str(args.checkpoint))
    if args.mpp is not None and not plausible(args.mpp):
        print(
            f"error: --mpp {args.mpp}: not a pixel size in µm/px (expected {PLAUSIBLE_MPP})", file=sys.stderr
        )
        return 2
    normalizer = None if args.no_stain else model.stain_normalizer
    progress = not args.no_progress
    failed_images = 0
    items = list(zip(files, unique_stems(files), strict=True))
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc="images", unit="image")
    report = items.write if progress else print  # type: ignore[union-attr]
    for path, stem in items:
        paths = OutputPaths.for_image(args.output, stem, probability=args.probability)
        try:
            result = predict_file(
                path,
                model.module,
                paths,
                normalizer,
                inference,
                settings,
                args.stream_above,
                progress,
                mpp=args.mpp,
                model_mpp=model_mpp,
                png=args.png,
                offset=(args.offset[0], args.offset[1]),
                tissue=args.tissue,
            )
        except Exception as error:  # noqa: BLE001 - report the file, keep going with the others
            failed_images += 1
            for written in paths.all():
                written.unlink(missing_ok=True)
            print(f"error: {path}: {type(error).__name__}: {error}", file=sys.stderr)
            continue
        mode = "streamed" if result.streamed else "in memory"
        scale = "pixel size unknown" if result.mpp is None else f"{result.mpp:.4g} µm/px"
        if result.resampled:
            scale += f", resampled to {result.model_mpp:.4g}"
        if result.level is not None:
            scale += f", slide level {result.level} (downsample {result.downsample:.4g})"
            if result.blocks:
                scale += f", {result.skipped_blocks} of {result.blocks} blocks without tissue skipped"
        report(
            f"{path}: {result.width}x{result.height} ({scale}), {result.nuclei} nuclei, "
            f"{result.seconds:.1f} s ({mode})"
        )
    summary = f"{len(files) - failed_images} of {len(files)} images written to {args.output}"
    if failed_images or input_errors:
        summary += f"; {failed_images} failed, {len(input_errors)} input errors"
    print(summary)
    return 1 if failed_images or input_errors else 0
