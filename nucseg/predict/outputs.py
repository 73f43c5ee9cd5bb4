"""The files written for one predicted image, in memory or streamed, by one mechanism.

Per image ``<stem>`` in the output folder:

- ``<stem>_labels.tif``: int32 instance labels (0 = background) on the input's pixel grid, tiled
  and zlib-compressed, with the input's pixel size as XResolution/YResolution when known;
- ``<stem>.geojson``: one QuPath detection per nucleus with its measurements
  (``nucseg.export.geojson``, ``nucseg.export.measurements``);
- ``<stem>_nuclei.csv``: the same measurements, one row per nucleus, ``Label`` = its TIFF value;
- ``<stem>_mask.png`` (optional): 8-bit greyscale, 255 = nucleus pixel (a pixel of a kept
  instance, so it agrees with the labels);
- ``<stem>_overlay.png`` (optional): the input image (as read, before stain normalisation) with
  nucleus contours in green;
- ``<stem>_prob.tif`` (optional): foreground probability as uint8, ``round(255 * p)``.

Grids and frames: ``nucseg.predict.grid``.

``write_outputs`` takes bands of probability rows on the work grid (``probability_bands`` turns
``stream_logits``'s logit bands into them; an image in memory is one band) and never holds a
whole-image array: pass 1 post-processes bands of rows with a halo (``HaloBandLabeller``; an
image in memory is labelled whole, ``whole=True``), writes each nucleus's polygon and
measurements as soon as its band is done, and keeps final labels and probabilities in temporary
memory-mapped files (``nucseg.io.rows``); pass 2 writes the rasters band by band from those.
Streamed and whole labelling give identical labels, masks, overlays and polygons for the same
probabilities (and nuclei at most ``max_object_rows`` tall). Memory of pass 1 when streamed:
``band_rows + 2 * max_object_rows`` rows of the C float32 probabilities (512 rows by default:
2 KB per image column per channel) besides the prediction's own band.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from typing import Any

import numpy as np

from nucseg.export.geojson import GeoJsonWriter, features_from_labels
from nucseg.export.measurements import MeasurementCsvWriter, column_names, measure_nuclei, rows_of
from nucseg.export.overlay import overlay_contours
from nucseg.export.png import StreamingPngWriter
from nucseg.export.tiff import write_tiled_tiff
from nucseg.inference.instances import (
    DEFAULT_SETTINGS,
    HaloBandLabeller,
    Heads,
    PostprocessSettings,
    heads_of,
    instance_function,
    sigmoid,
)
from nucseg.io.regions import ArrayRegionReader, RegionReader
from nucseg.io.resample import nearest_indices, resample_region
from nucseg.io.rows import temporary_rows
from nucseg.predict.grid import ImageGrid, OutputPaths

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SETTINGS",
    "ImageGrid",
    "OutputPaths",
    "PostprocessSettings",
    "probability_bands",
    "probability_to_uint8",
    "sigmoid",
    "write_image_outputs",
    "write_outputs",
]

RowSource = Callable[[int, int], np.ndarray]


def probability_to_uint8(probability: np.ndarray) -> np.ndarray:
    """round(255 * p) as uint8."""
    return np.round(np.clip(probability, 0.0, 1.0) * 255.0).astype(np.uint8)


def _labels_to_input(labels_rows: RowSource, grid: ImageGrid, top: int, bottom: int) -> np.ndarray:
    """Input-grid label rows ``top:bottom`` by nearest neighbour from work-grid rows ``labels_rows(t, b)``."""
    if not grid.resampled:
        return labels_rows(top, bottom)
    rows = nearest_indices(top, bottom, grid.work_height, grid.height)
    cols = nearest_indices(0, grid.width, grid.work_width, grid.width)
    if len(rows) == 0:
        return np.zeros((0, grid.width), dtype=np.int32)
    block = labels_rows(int(rows[0]), int(rows[-1]) + 1)
    return block[np.ix_(rows - rows[0], cols)]


def _probability_to_input(prob_rows: RowSource, grid: ImageGrid, top: int, bottom: int) -> np.ndarray:
    """Input-grid uint8 probability rows, bilinear from work-grid rows ``prob_rows(t, b)`` (uint8)."""
    if not grid.resampled:
        return prob_rows(top, bottom)
    region = resample_region(
        lambda t, left, h, w: prob_rows(t, t + h)[:, left : left + w],
        (grid.work_height, grid.work_width),
        (grid.height, grid.width),
        top,
        0,
        bottom - top,
        grid.width,
    )
    return np.clip(np.round(region), 0, 255).astype(np.uint8)


def _write_rasters(
    paths: OutputPaths,
    grid: ImageGrid,
    image_reader: RegionReader,
    label_rows: RowSource,
    prob_rows: RowSource | None,
    band_rows: int = 256,
) -> None:
    """Label TIFF, probability TIFF and PNGs on the input grid from work-grid row sources."""
    height, width = grid.height, grid.width

    def final_rows(top: int, bottom: int) -> np.ndarray:
        return _labels_to_input(label_rows, grid, max(0, top), min(height, bottom))

    if paths.probability is not None and prob_rows is not None:
        write_tiled_tiff(
            paths.probability,
            height,
            width,
            np.uint8,
            lambda t, b: _probability_to_input(prob_rows, grid, t, b),
            mpp=grid.mpp,
        )
    write_tiled_tiff(paths.labels, height, width, np.int32, final_rows, mpp=grid.mpp)
    if paths.mask is None and paths.overlay is None:
        return
    with ExitStack() as stack:
        mask_png = overlay_png = None
        if paths.mask is not None:
            mask_png = stack.enter_context(StreamingPngWriter(paths.mask, height, width, 1))
        if paths.overlay is not None:
            overlay_png = stack.enter_context(StreamingPngWriter(paths.overlay, height, width, 3))
        for top in range(0, height, band_rows):
            bottom = min(top + band_rows, height)
            first = 1 if top > 0 else 0
            window = final_rows(top - first, bottom + 1)  # one context row above and below
            labels = window[first : first + bottom - top]
            above = window[0] if top > 0 else None
            below = window[-1] if bottom < height else None
            if mask_png is not None:
                mask_png.write_rows(np.where(labels > 0, 255, 0).astype(np.uint8))
            if overlay_png is not None:
                overlay_png.write_rows(
                    overlay_contours(
                        image_reader.read(top, 0, bottom - top, width), labels, above=above, below=below
                    )
                )


def _centroids_to_frame(table: dict[str, np.ndarray], grid: ImageGrid) -> None:
    """Move ``measure_nuclei``'s centroids (input frame) to the output frame, in place."""
    calibrated = grid.work_mpp is not None
    x_name, y_name = column_names(calibrated)[:2]
    (row_scale, col_scale), (frame_rows, frame_cols) = grid.scale, grid.output_scale
    # back to continuous work-grid coordinates, then to the frame
    to_work = (grid.work_mpp, grid.work_mpp) if calibrated else (col_scale, row_scale)
    x = table[x_name] / to_work[0] * frame_cols + grid.frame_offset[0]
    y = table[y_name] / to_work[1] * frame_rows + grid.frame_offset[1]
    unit = grid.output_mpp if calibrated else None
    table[x_name], table[y_name] = (x, y) if unit is None else (x * unit, y * unit)


def _add_nuclei(
    objects: np.ndarray,
    first_id: int,
    work_image: np.ndarray,
    window_top: int,
    grid: ImageGrid,
    settings: PostprocessSettings,
    geojson: GeoJsonWriter,
    csv: MeasurementCsvWriter | None,
) -> None:
    """Measure the objects (local labels 1..n) of a window and write their features and CSV rows."""
    table = measure_nuclei(objects, work_image, grid.work_mpp, offset=(window_top, 0), scale=grid.scale)
    if grid.framed:
        _centroids_to_frame(table, grid)
    by_label = {int(row.pop("label")): row for row in rows_of(table)}
    features = features_from_labels(
        objects,
        offset=(window_top, 0),
        tolerance=settings.tolerance,
        connectivity=settings.connectivity,
        scale=grid.output_scale,
        measurements={label: {"Label": label + first_id - 1, **row} for label, row in by_label.items()},
        shift=grid.frame_offset,
    )
    for feature in features:
        geojson.add(feature)
    if csv is not None:
        for label, row in by_label.items():
            csv.add(label + first_id - 1, row)


def probability_bands(
    bands: Iterable[tuple[int, np.ndarray]], heads: Heads, rows: int = 256
) -> Iterator[tuple[int, np.ndarray]]:
    """``(top, logits (C, h, W))`` bands -> ``(top, probabilities)`` bands of at most ``rows`` rows.

    Cut small so that the probabilities of a tall logit band are never all in memory at once.
    """
    for top, logits in bands:
        for start in range(0, logits.shape[1], rows):
            yield top + start, heads.probabilities(logits[:, start : start + rows])


def write_outputs(
    reader: RegionReader,
    bands: Iterable[tuple[int, np.ndarray]],
    paths: OutputPaths,
    settings: PostprocessSettings = DEFAULT_SETTINGS,
    band_rows: int = 256,
    grid: ImageGrid | None = None,
    heads: Heads | None = None,
    work_reader: RegionReader | None = None,
    model_mpp: float | None = None,
    whole: bool = False,
) -> int:
    """Write all outputs from bands of probabilities on the work grid; return the nuclei count.

    Args:
        reader: The input image, read again band by band for the overlay.
        bands: ``(top_row, probabilities (C, h, W))`` in order, covering every work-grid row.
        paths: Destinations; the temporary row files go to the folder of ``paths.labels``.
        settings: Post-processing settings (``band_rows`` and ``max_object_rows`` set the halo bands).
        band_rows: Rows per band in the raster-writing pass.
        grid: Input and work grids (default: the same, pixel size unknown).
        heads: Probabilities -> foreground (default: channel 0).
        work_reader: The image on the work grid, for measurements (default: ``reader``).
        model_mpp: Recorded in the GeoJSON.
        whole: Post-process the image in one piece (as in training) instead of in halo bands.

    Raises:
        ValueError: Bands out of order, or not covering the image.
    """
    grid = grid or ImageGrid.identity(reader.height, reader.width)
    heads = heads or heads_of(None)
    work_reader = work_reader or reader
    height, width = grid.work_height, grid.work_width
    work_dir = paths.labels.parent
    work_dir.mkdir(parents=True, exist_ok=True)
    labeller = HaloBandLabeller(
        instance_function(settings),
        height,
        height if whole else settings.band_rows,
        0 if whole else settings.max_object_rows,
        reader.name,
    )
    count = 0
    with ExitStack() as stack:
        labels = stack.enter_context(temporary_rows(height, width, np.int32, work_dir))
        probability = None
        if paths.probability is not None:
            probability = stack.enter_context(temporary_rows(height, width, np.uint8, work_dir))
        with ExitStack() as writers:
            geojson = writers.enter_context(GeoJsonWriter(paths.geojson, grid.metadata(model_mpp)))
            csv = None
            if paths.measurements is not None:
                names = column_names(grid.work_mpp is not None)
                csv = writers.enter_context(MeasurementCsvWriter(paths.measurements, names, grid.mpp))

            def emit(done: Iterable[Any]) -> None:
                nonlocal count
                for band in done:
                    labels[band.top : band.top + len(band.rows)] = band.rows
                    if band.objects.any():
                        pixels = work_reader.read(band.window_top, 0, band.objects.shape[0], width)
                        _add_nuclei(
                            band.objects, band.first_id, pixels, band.window_top, grid, settings, geojson, csv
                        )
                    count = band.first_id + int(band.objects.max(initial=0)) - 1

            for top, probabilities in bands:
                if top != labeller.rows_seen:
                    raise ValueError(
                        f"{reader.name}: bands out of order (row {top}, expected {labeller.rows_seen})"
                    )
                probabilities = np.asarray(probabilities, dtype=np.float32)
                if probabilities.ndim == 2:  # a foreground alone
                    probabilities = probabilities[None]
                if probability is not None:
                    rows = probabilities.shape[1]
                    probability[top : top + rows] = probability_to_uint8(heads.foreground(probabilities))
                emit(labeller.add(probabilities))
            emit(labeller.finish())
        _write_rasters(
            paths,
            grid,
            reader,
            lambda t, b: labels[t:b],
            None if probability is None else (lambda t, b: probability[t:b]),
            band_rows,
        )
    return count


def write_image_outputs(
    image: np.ndarray,
    probabilities: np.ndarray,
    paths: OutputPaths,
    settings: PostprocessSettings = DEFAULT_SETTINGS,
    grid: ImageGrid | None = None,
    heads: Heads | None = None,
    work_image: np.ndarray | None = None,
    model_mpp: float | None = None,
) -> int:
    """``write_outputs`` for an image and its probabilities in memory, post-processed whole.

    Args:
        image: (H, W, 3) uint8 image as read (drawn under the contours).
        probabilities: (C, h, w) probabilities on the work grid, or an (h, w) foreground.
        paths: Destinations.
        settings: Post-processing settings.
        grid: Input and work grids (default: the same, pixel size unknown).
        heads: How to get the foreground from ``probabilities`` (default: channel 0).
        work_image: ``image`` on the work grid (default: ``image``; required when resampled).
        model_mpp: Recorded in the GeoJSON.

    Raises:
        ValueError: The work image or the probabilities are not on the work grid.
    """
    grid = grid or ImageGrid.identity(image.shape[0], image.shape[1])
    work_image = image if work_image is None else work_image
    if work_image.shape[:2] != (grid.work_height, grid.work_width) or np.shape(probabilities)[-2:] != (
        grid.work_height,
        grid.work_width,
    ):
        raise ValueError(
            f"write_outputs: work image {work_image.shape[:2]} and probabilities {np.shape(probabilities)[-2:]} "
            f"must both be {(grid.work_height, grid.work_width)}"
        )
    return write_outputs(
        ArrayRegionReader(image),
        [(0, probabilities)],
        paths,
        settings,
        grid=grid,
        heads=heads,
        work_reader=ArrayRegionReader(work_image),
        model_mpp=model_mpp,
        whole=True,
    )
