"""Predict one image file and write its outputs: the unit of work of ``nucseg.predict``.

An image of at most ``stream_above`` pixels is read whole, stain-normalised in one call,
predicted with ``sliding_window_predict`` and post-processed whole. A larger one is streamed:
TIFFs are read region by region (``nucseg.io.regions``), PNG/JPEG are read whole (their formats
cannot be read by region) but everything after reading is streamed. Both, and whole slides,
go through one path (``_Job.run``) and one writer (``nucseg.predict.outputs``). Either way an image gets
one stain transform: a streamed image's source stains are estimated once, on a thumbnail of at
most ``overview_pixels`` pixels, and that fixed transform is applied to every block (see
``nucseg.inference.streaming``), so the result does not depend on how the image is cut into blocks.

Pixel size. The network is run at the pixel size it was trained at: an input whose pixel size
(``--mpp`` or its metadata) differs from the model's by more than ``grid.RESAMPLE_TOLERANCE`` is
resampled (``ResampledRegionReader``, region by region, so streaming works the same), nuclei are
post-processed and measured on that grid, and the outputs are mapped back to the input's pixel
grid (``nucseg.predict.grid``). Stains are estimated on the input as read: they do not
depend on the pixel size.

Whole-slide images (``.svs``, ``.ndpi``, ``.scn``, ``.mrxs``, and a ``.tif``/``.tiff`` with a
pyramid: ``is_slide``) are opened with ``nucseg.io.slide.WholeSlide``. The level nearest the
model's pixel size is read as stored (resampled only if it is more than ``RESAMPLE_TOLERANCE``
off) and always streamed, as a large TIFF is. Tissue is found on the slide's thumbnail
(``WholeSlide.tissue_mask``) and blocks without any are not predicted (``stream_logits(skip=)``:
probability 0 there). Polygons and centroids are written in level-0 pixels (the level's
coordinates times its downsample), measurements in µm at the level's pixel size; the label,
probability and PNG rasters stay on the level's grid. ``offset`` (x, y, level-0 pixels) is
added to polygons and centroids of any input, for a region exported from a larger slide.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nucseg.inference.instances import DEFAULT_SETTINGS, Heads, PostprocessSettings, heads_of
from nucseg.inference.settings import InferenceSettings
from nucseg.inference.sliding_window import sliding_window_predict
from nucseg.inference.streaming import (
    DEFAULT_OVERVIEW_PIXELS,
    SKIP_LOGIT,
    Normalizer,
    SkipFn,
    fixed_stain_transform,
    stream_logits,
)
from nucseg.io.images import TIFF_SUFFIXES
from nucseg.io.regions import ArrayRegionReader, RegionReader, open_region_reader, read_whole
from nucseg.io.resample import ResampledRegionReader
from nucseg.predict.grid import ImageGrid, OutputPaths, input_mpp, work_grid
from nucseg.predict.outputs import probability_bands, write_outputs
from nucseg.utils.resolution import DEFAULT_MODEL_MPP, plausible, read_pixel_size

logger = logging.getLogger(__name__)

DEFAULT_STREAM_ABOVE = 4096 * 4096
#: Images with more pixels get no mask/overlay PNGs unless asked (``png=True``).
PNG_MAX_PIXELS = 4096 * 4096
#: Whole-slide formats by suffix; a ``.tif``/``.tiff`` is a slide when it has a pyramid.
SLIDE_SUFFIXES = {".svs", ".ndpi", ".scn", ".mrxs"}


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
    level: int | None = None
    downsample: float = 1.0
    blocks: int = 0
    skipped_blocks: int = 0


def is_slide(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is predicted as a whole slide: a slide suffix, or a TIFF with a pyramid.

    A TIFF counts when tiffslide opens it with more than one level; without tiffslide (or when
    it cannot open the file) it is read as a plain TIFF.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in SLIDE_SUFFIXES:
        return True
    if suffix not in TIFF_SUFFIXES:
        return False
    from nucseg.io.slide import SlideError, WholeSlide

    try:
        with WholeSlide(path) as slide:
            return slide.level_count > 1
    except SlideError:
        return False


def background_logits(target: str) -> tuple[float, ...]:
    """Logits that mean "no nucleus" for a run's ``target``, for blocks that are not predicted.

    Binary and distance: every channel ``SKIP_LOGIT`` (sigmoid foreground 0, distance clamped to
    0); contour: background ``-SKIP_LOGIT`` and the others ``SKIP_LOGIT`` (softmax background 1).
    """
    from nucseg.data.targets import build_target

    try:
        channels = int(build_target(target).out_channels)
    except (ValueError, KeyError):
        channels = 1
    if target == "contour":
        return (-SKIP_LOGIT,) + (SKIP_LOGIT,) * (channels - 1)
    return (SKIP_LOGIT,) * channels


def predict_file(
    path: str | os.PathLike[str],
    predict_fn: Callable[[torch.Tensor], torch.Tensor],
    paths: OutputPaths,
    normalizer: Any | None = None,
    tiling: InferenceSettings | None = None,
    settings: PostprocessSettings = DEFAULT_SETTINGS,
    stream_above: int = DEFAULT_STREAM_ABOVE,
    progress: bool = False,
    overview_pixels: int = DEFAULT_OVERVIEW_PIXELS,
    mpp: float | None = None,
    model_mpp: float = DEFAULT_MODEL_MPP,
    png: bool | None = None,
    heads: Heads | None = None,
    offset: tuple[float, float] = (0.0, 0.0),
    tissue: bool = True,
) -> ImageResult:
    """Predict ``path`` with ``predict_fn`` and write the outputs listed in ``paths``.

    Args:
        path: A PNG, JPEG or TIFF image (RGB, RGBA, grey; 8 or 16 bit; see ``nucseg.io.images``),
            or a whole slide (``is_slide``; module docstring).
        predict_fn: (b, 3, h, w) float [0, 1] -> (b, C, h, w) logits, e.g. a loaded module.
        paths: Output destinations.
        normalizer: The training stain reference (``nucseg.data.stain``), or None to predict
            the pixels as read. In-memory images use its ``normalize(image, name=...)``;
            streamed ones need ``estimate_source`` and ``apply`` as well.
        tiling: Sliding-window settings (default: ``InferenceSettings()``); ``border_pad`` is
            not used, so that a streamed image gives what it gives predicted whole.
        settings: Post-processing settings (its ``target`` also says what a skipped block is).
        stream_above: Images with more pixels than this (input or resampled) are streamed.
        progress: Show a tqdm bar over tiles.
        overview_pixels: Most pixels of the thumbnail a streamed image's stains are estimated on.
        mpp: The input's pixel size in µm (default: from the file's metadata; when it has none,
            a warning names the file and the model's pixel size is assumed).
        model_mpp: The pixel size the model was trained at (a run's:
            ``nucseg.utils.resolution.model_pixel_size(run_config)``).
        png: Write the mask and overlay PNGs (default: for images up to ``PNG_MAX_PIXELS``;
            slides only when True).
        heads: Logits -> probabilities -> foreground (default: ``heads_of(predict_fn)``).
        offset: (x, y) added to polygon and centroid coordinates, in level-0 pixels of the slide
            the image belongs to (a region exported from a larger slide).
        tissue: Slides only: predict only blocks with tissue on the thumbnail (False: all).

    Raises:
        nucseg.io.images.ImageReadError: The file cannot be read.
        ValueError: Bad settings or an unusable network output.
        TypeError: A streamed image and a normaliser without ``estimate_source``/``apply``.
        nucseg.io.slide.SlideError: A slide cannot be opened.
    """
    path = Path(path)
    started = time.perf_counter()
    window = {key: value for key, value in (tiling or InferenceSettings()).kwargs().items() if key != "border_pad"}
    job = _Job(
        predict_fn,
        normalizer,
        window,
        settings,
        heads or heads_of(predict_fn),
        progress,
        overview_pixels,
        model_mpp,
    )
    if is_slide(path):
        return _predict_slide(path, job, paths, mpp, bool(png), offset, tissue, started)
    mpp = input_mpp(path, mpp, model_mpp)
    reader = open_region_reader(path)
    try:
        height, width = reader.height, reader.width
        grid = replace(
            work_grid(height, width, mpp, model_mpp), frame_offset=(float(offset[0]), float(offset[1]))
        )
        if png is None:
            png = height * width <= PNG_MAX_PIXELS
        streamed = max(height * width, grid.work_height * grid.work_width) > stream_above
        nuclei = job.run(reader, grid, paths if png else paths.without_png(), streamed)
    finally:
        reader.close()
    seconds = time.perf_counter() - started
    return ImageResult(path, height, width, nuclei, streamed, seconds, mpp, model_mpp, grid.resampled)


@dataclass(frozen=True)
class _Job:
    """What stays the same for every image: the model and the settings of one ``predict_file``."""

    predict_fn: Callable[[torch.Tensor], torch.Tensor]
    normalizer: Any | None
    tiling: dict[str, Any]
    settings: PostprocessSettings
    heads: Heads
    progress: bool
    overview_pixels: int
    model_mpp: float

    def run(
        self,
        reader: RegionReader,
        grid: ImageGrid,
        paths: OutputPaths,
        streamed: bool,
        skip: SkipFn | None = None,
    ) -> int:
        """Predict an opened image on ``grid`` and write its outputs; return the nuclei count.

        In memory: read whole, stain-normalised in one call, ``sliding_window_predict``,
        post-processed whole. Streamed: one stain transform from a thumbnail,
        ``stream_logits`` (``skip``: blocks left out), post-processed in halo bands.
        """
        name = reader.name
        work_reader = (
            ResampledRegionReader(reader, grid.work_height, grid.work_width) if grid.resampled else reader
        )
        if grid.resampled:
            logger.info(
                "%s: resampling %dx%d at %.4g µm/px to %dx%d at the model's %.4g µm/px",
                name, grid.width, grid.height, grid.mpp, grid.work_width, grid.work_height, self.model_mpp,
            )  # fmt: skip
        if streamed:
            normalize: Normalizer | None = None
            if self.normalizer is not None:
                normalize = fixed_stain_transform(
                    reader, self.normalizer, name, self.overview_pixels, mapped_pixels=work_reader.height * work_reader.width
                )
            skip_logits = (SKIP_LOGIT,) if skip is None else background_logits(self.settings.target)
            logits = stream_logits(
                work_reader,
                self.predict_fn,
                normalize,
                progress=self.progress,
                skip=skip,
                skip_logits=skip_logits,
                **self.tiling,
            )
            bands = probability_bands(logits, self.heads)
            measured: RegionReader = work_reader
        else:
            work_image = (
                read_whole(work_reader) if grid.resampled else reader.read(0, 0, grid.height, grid.width)
            )
            normalized = (
                work_image if self.normalizer is None else self.normalizer.normalize(work_image, name=name)
            )
            tensor = torch.from_numpy(np.require(normalized, requirements=["C", "W"])).permute(2, 0, 1)
            whole = sliding_window_predict(
                tensor.float().div_(255.0)[None], self.predict_fn, progress=self.progress, **self.tiling
            )
            bands = [(0, self.heads.probabilities(whole[0].numpy()))]
            measured = ArrayRegionReader(work_image, name)
        return write_outputs(
            reader,
            bands,
            paths,
            self.settings,
            grid=grid,
            heads=self.heads,
            work_reader=measured,
            model_mpp=self.model_mpp,
            whole=not streamed,
        )


def _predict_slide(
    path: Path,
    job: _Job,
    paths: OutputPaths,
    mpp: float | None,
    png: bool,
    offset: tuple[float, float],
    tissue: bool,
    started: float,
) -> ImageResult:
    """``predict_file`` for a whole slide: the level nearest the model, streamed, tissue only."""
    from nucseg.io.slide import WholeSlide

    name = str(path)
    slide = WholeSlide(path, mpp=mpp)
    try:
        if mpp is None and slide.mpp is not None and not plausible(slide.mpp):
            logger.info("%s: ignoring slide pixel size %.4g µm (a placeholder)", name, slide.mpp)
            slide.mpp = None
        if slide.mpp is None and path.suffix.lower() in TIFF_SUFFIXES:
            found = read_pixel_size(path)  # OME-XML and the other sources tiffslide may not read
            slide.mpp = None if found is None else found.mpp
        if slide.mpp is None:
            logger.warning(
                "%s: slide has no pixel size (pass --mpp); reading level 0 as if at the model's %.4g µm/px",
                name,
                job.model_mpp,
            )
            reader = slide.reader(0)
        else:
            reader = slide.reader(model_mpp=job.model_mpp)
        downsample_x, downsample_y = reader.downsample_xy
        grid = replace(
            work_grid(reader.height, reader.width, reader.mpp, job.model_mpp),
            frame_scale=(downsample_y, downsample_x),
            frame_offset=(float(offset[0]), float(offset[1])),
            frame_mpp=slide.mpp,
        )
        logger.info(
            "%s: level %d of %d, %dx%d at %s µm/px (downsample %.4g)",
            name,
            reader.level,
            slide.level_count,
            reader.width,
            reader.height,
            "unknown" if reader.mpp is None else f"{reader.mpp:.4g}",
            reader.downsample,
        )
        counts = {"blocks": 0, "skipped": 0}
        skip: SkipFn | None = None
        if tissue:
            mask = slide.tissue_mask()
            if not mask.mask.any():
                logger.warning(
                    "%s: no tissue found on the thumbnail; nothing is predicted (--no-tissue)", name
                )
            block_downsample = (downsample_x * grid.scale[1], downsample_y * grid.scale[0])

            def skip(top: int, left: int, block_height: int, block_width: int) -> bool:
                counts["blocks"] += 1
                empty = mask.fraction(top, left, block_height, block_width, block_downsample) == 0.0
                counts["skipped"] += int(empty)
                return empty

        nuclei = job.run(reader, grid, paths if png else paths.without_png(), streamed=True, skip=skip)
        if tissue:
            logger.info(
                "%s: %d of %d blocks had no tissue and were skipped",
                name,
                counts["skipped"],
                counts["blocks"],
            )
    finally:
        slide.close()
    return ImageResult(
        path,
        reader.height,
        reader.width,
        nuclei,
        True,
        time.perf_counter() - started,
        reader.mpp,
        job.model_mpp,
        grid.resampled,
        level=reader.level,
        downsample=reader.downsample,
        blocks=counts["blocks"],
        skipped_blocks=counts["skipped"],
    )
