"""Predict one image file and write its outputs: the unit of work of ``nucseg.predict``.

An image of at most ``stream_above`` pixels is read whole, stain-normalised in one call,
predicted with ``sliding_window_predict`` and written from memory. A larger one is streamed:
TIFFs are read region by region (``TiffRegionReader``), PNG/JPEG are read whole (their formats
cannot be read by region) but everything after reading is streamed. Either way an image gets
one stain transform: a streamed image's source stains are estimated once, on a thumbnail of at
most ``overview_pixels`` pixels, and that fixed transform is applied to every block (see
``streaming.py``), so the result does not depend on how the image is cut into blocks.

Pixel size. The network is run at the pixel size it was trained at: an input whose pixel size
(``--mpp`` or its metadata) differs from the model's by more than ``RESAMPLE_TOLERANCE`` is
resampled (``ResampledRegionReader``, region by region, so streaming works the same), nuclei are
post-processed and measured on that grid, and the outputs are mapped back to the input's pixel
grid (``nucseg.inference.outputs``). Stains are estimated on the input as read: they do not
depend on the pixel size.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nucseg.inference.instances import Heads, heads_of
from nucseg.inference.outputs import (
    DEFAULT_SETTINGS,
    ImageGrid,
    OutputPaths,
    PostprocessSettings,
    write_outputs,
    write_outputs_streamed,
)
from nucseg.inference.sliding_window import sliding_window_predict
from nucseg.inference.streaming import (
    DEFAULT_OVERVIEW_PIXELS,
    ArrayRegionReader,
    Normalizer,
    ResampledRegionReader,
    TiffRegionReader,
    fixed_stain_transform,
    stream_logits,
)
from nucseg.utils.image_io import TIFF_SUFFIXES, read_rgb_image
from nucseg.utils.resolution import DEFAULT_MODEL_MPP, model_pixel_size, read_pixel_size

logger = logging.getLogger(__name__)

DEFAULT_STREAM_ABOVE = 4096 * 4096
#: Images with more pixels get no mask/overlay PNGs unless asked (``png=True``).
PNG_MAX_PIXELS = 4096 * 4096
#: Pixel sizes within this relative difference of the model's are not resampled (5 %).
RESAMPLE_TOLERANCE = 0.05
TILING_KEYS = ("tile_size", "overlap", "batch_size", "blend", "tta", "amp", "tile_multiple")


@dataclass(frozen=True)
class ImageResult:
    """What happened to one image."""

    path: Path
    height: int
    width: int
    nuclei: int
    streamed: bool
    seconds: float
    mpp: float | None = None
    model_mpp: float = DEFAULT_MODEL_MPP
    resampled: bool = False


def work_grid(height: int, width: int, mpp: float | None, model_mpp: float) -> ImageGrid:
    """The grid to predict on: the image resized to ``model_mpp`` (unchanged within 5 % or unknown)."""
    if mpp is None or abs(mpp / model_mpp - 1.0) <= RESAMPLE_TOLERANCE:
        return ImageGrid.identity(height, width, mpp)
    factor = mpp / model_mpp
    return ImageGrid(height, width, max(1, round(height * factor)), max(1, round(width * factor)), mpp)


def _read_whole(
    reader: ArrayRegionReader | ResampledRegionReader | TiffRegionReader, block: int = 1024
) -> np.ndarray:
    """The whole image of a reader, read in blocks (bounded temporaries when it resamples)."""
    out = np.empty((reader.height, reader.width, 3), dtype=np.uint8)
    for top in range(0, reader.height, block):
        for left in range(0, reader.width, block):
            region = reader.read(top, left, block, block)
            out[top : top + region.shape[0], left : left + region.shape[1]] = region
    return out


def predict_file(
    path: str | os.PathLike[str],
    predict_fn: Callable[[torch.Tensor], torch.Tensor],
    paths: OutputPaths,
    normalizer: Any | None = None,
    tiling: dict[str, Any] | None = None,
    settings: PostprocessSettings = DEFAULT_SETTINGS,
    stream_above: int = DEFAULT_STREAM_ABOVE,
    progress: bool = False,
    overview_pixels: int = DEFAULT_OVERVIEW_PIXELS,
    mpp: float | None = None,
    model_mpp: float | None = None,
    png: bool | None = None,
    heads: Heads | None = None,
) -> ImageResult:
    """Predict ``path`` with ``predict_fn`` and write the outputs listed in ``paths``.

    Args:
        path: A PNG, JPEG or TIFF image (RGB, RGBA, grey; 8 or 16 bit; see ``image_io``).
        predict_fn: (b, 3, h, w) float [0, 1] -> (b, C, h, w) logits, e.g. a loaded module.
        paths: Output destinations.
        normalizer: The training stain reference (``nucseg.data.stain``), or None to predict
            the pixels as read. In-memory images use its ``normalize(image, name=...)``;
            streamed ones need ``estimate_source`` and ``apply`` as well.
        tiling: ``sliding_window_predict`` settings (tile_size, overlap, batch_size, blend, tta,
            amp, tile_multiple); unknown keys are an error.
        settings: Post-processing settings.
        stream_above: Images with more pixels than this (input or resampled) are streamed.
        progress: Show a tqdm bar over tiles.
        overview_pixels: Most pixels of the thumbnail a streamed image's stains are estimated on.
        mpp: The input's pixel size in µm (default: from the file's metadata; when it has none,
            a warning names the file and the model's pixel size is assumed).
        model_mpp: The pixel size the model was trained at (default: ``data.mpp`` of
            ``predict_fn.run_config``, else 0.25).
        png: Write the mask and overlay PNGs (default: for images up to ``PNG_MAX_PIXELS``).
        heads: Logits -> probabilities -> foreground (default: ``heads_of(predict_fn)``).

    Raises:
        nucseg.utils.image_io.ImageReadError: The file cannot be read.
        ValueError: Bad settings or an unusable network output.
        TypeError: A streamed image and a normaliser without ``estimate_source``/``apply``.
    """
    path = Path(path)
    tiling = dict(tiling or {})
    unknown = set(tiling) - set(TILING_KEYS)
    if unknown:
        raise ValueError(f"predict: unknown tiling settings {sorted(unknown)}")
    started = time.perf_counter()
    name = str(path)
    if model_mpp is None:
        run_config = getattr(predict_fn, "run_config", None)
        model_mpp = DEFAULT_MODEL_MPP if run_config is None else model_pixel_size(run_config, "model")
    if mpp is None:
        found = read_pixel_size(path)
        if found is None:
            logger.warning(
                "%s: pixel size unknown (no usable resolution metadata; pass --mpp); assuming the model's %.4g µm/px",
                name,
                model_mpp,
            )
        else:
            mpp = found.mpp
            if abs(found.y_um / found.x_um - 1.0) > 0.01:
                logger.warning("%s: pixels are %.4g x %.4g µm; using the width", name, found.x_um, found.y_um)
    heads = heads or heads_of(predict_fn)

    if path.suffix.lower() in TIFF_SUFFIXES:
        reader: TiffRegionReader | ArrayRegionReader = TiffRegionReader(path)
    else:
        reader = ArrayRegionReader(read_rgb_image(path), name=name)
    try:
        height, width = reader.height, reader.width
        grid = work_grid(height, width, mpp, model_mpp)
        if grid.resampled:
            logger.info(
                "%s: resampling %dx%d at %.4g µm/px to %dx%d at the model's %.4g µm/px",
                name,
                width,
                height,
                mpp,
                grid.work_width,
                grid.work_height,
                model_mpp,
            )
        work_reader = (
            ResampledRegionReader(reader, grid.work_height, grid.work_width) if grid.resampled else reader
        )
        if png is None:
            png = height * width <= PNG_MAX_PIXELS
        if not png:
            paths = paths.without_png()
        streamed = max(height * width, grid.work_height * grid.work_width) > stream_above
        if streamed:
            normalize: Normalizer | None = None
            if normalizer is not None:
                normalize = fixed_stain_transform(reader, normalizer, name, overview_pixels)
            bands = stream_logits(work_reader, predict_fn, normalize, progress=progress, **tiling)
            nuclei = write_outputs_streamed(
                reader,
                bands,
                paths,
                settings,
                grid=grid,
                heads=heads,
                work_reader=work_reader,
                model_mpp=model_mpp,
            )
        else:
            image = reader.read(0, 0, height, width)
            work_image = _read_whole(work_reader) if grid.resampled else image
            normalized = work_image if normalizer is None else normalizer.normalize(work_image, name=name)
            tensor = (
                torch.from_numpy(np.require(normalized, requirements=["C", "W"]))
                .permute(2, 0, 1)
                .float()
                .div_(255.0)
            )
            logits = sliding_window_predict(tensor, predict_fn, progress=progress, **tiling)
            probabilities = heads.probabilities(logits[0].numpy())
            nuclei = write_outputs(
                image,
                probabilities,
                paths,
                settings,
                grid=grid,
                heads=heads,
                work_image=work_image,
                model_mpp=model_mpp,
            )
    finally:
        reader.close()
    seconds = time.perf_counter() - started
    return ImageResult(path, height, width, nuclei, streamed, seconds, mpp, model_mpp, grid.resampled)
