"""The files written for one predicted image, from memory or streamed, with the same content.

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

Grids. The network sees the image at the model's pixel size (``ImageGrid``: the *work* grid);
nuclei are post-processed and measured there, so post-processing parameters and µm values mean
what they meant in training. The results are then mapped back to the input's pixel grid:
probabilities bilinearly, labels by nearest neighbour, polygon vertices by scaling, so masks,
labels and polygons line up with the input's pixels. A nucleus thinner than one input pixel can
vanish from the label TIFF when the input is coarser than the model; it stays in the GeoJSON/CSV.

Frames. Polygons and centroids can be written in a larger frame than the input's pixels
(``ImageGrid.frame_scale``, ``frame_offset``, ``frame_mpp``): for a level of a whole slide,
level-0 pixels (times the level's downsample), plus the offset of a region exported from a larger
slide, so QuPath places them on the slide. Rasters stay on the input's grid.

``write_outputs`` takes an image and its probabilities in memory. ``write_outputs_streamed``
takes the band stream of ``stream_logits`` and never holds a whole-image array: pass 1
post-processes bands of rows with a halo (``HaloBandLabeller``), writes each nucleus's polygon
and measurements as soon as its band is done, and stores final labels and probabilities in
temporary row files; pass 2 writes the rasters band by band from those files. Both give
identical labels, masks, overlays and polygons for the same probabilities (and nuclei at most
``max_object_rows`` tall). Memory of pass 1: ``band_rows + 2 * max_object_rows`` rows of the C
float32 probabilities (512 rows by default: 2 KB per image column per channel) besides the
prediction's own band.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
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
    canonical_labels,
    heads_of,
    instance_function,
    sigmoid,
)
from nucseg.inference.streaming import (
    ArrayRegionReader,
    RawRowFile,
    RegionReader,
    nearest_indices,
    resample_region,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SETTINGS",
    "ImageGrid",
    "OutputPaths",
    "PostprocessSettings",
    "probability_to_uint8",
    "sigmoid",
    "write_outputs",
    "write_outputs_streamed",
]


@dataclass(frozen=True)
class OutputPaths:
    """Where the outputs of one image go (None: that output is not written)."""

    mask: Path | None
    labels: Path
    overlay: Path | None
    geojson: Path
    probability: Path | None = None
    measurements: Path | None = None

    @classmethod
    def for_image(
        cls, directory: str | os.PathLike[str], stem: str, probability: bool = False, png: bool = True
    ) -> OutputPaths:
        """The standard names (module docstring) for ``stem`` in ``directory``."""
        directory = Path(directory)
        return cls(
            mask=directory / f"{stem}_mask.png" if png else None,
            labels=directory / f"{stem}_labels.tif",
            overlay=directory / f"{stem}_overlay.png" if png else None,
            geojson=directory / f"{stem}.geojson",
            probability=directory / f"{stem}_prob.tif" if probability else None,
            measurements=directory / f"{stem}_nuclei.csv",
        )

    def without_png(self) -> OutputPaths:
        """The same destinations minus the mask and overlay PNGs."""
        return replace(self, mask=None, overlay=None)

    def all(self) -> list[Path]:
        """Every path that is written."""
        paths = [self.mask, self.labels, self.overlay, self.geojson, self.probability, self.measurements]
        return [path for path in paths if path is not None]


@dataclass(frozen=True)
class ImageGrid:
    """The input image's pixel grid and the work grid the model predicts on (module docstring).

    Attributes:
        height, width: The input image's size.
        work_height, work_width: The size at the model's pixel size (equal when not resampled).
        mpp: The input's pixel size in µm, or None when unknown (then values are in pixels).
        frame_scale: (rows, columns) of output-frame pixels per input pixel (a slide level's
            downsample: polygons and centroids in level-0 pixels).
        frame_offset: (x, y) in output-frame pixels added to polygons and centroids.
        frame_mpp: Side of an output-frame pixel in µm (default: ``mpp / mean(frame_scale)``).
    """

    height: int
    width: int
    work_height: int
    work_width: int
    mpp: float | None = None
    frame_scale: tuple[float, float] = (1.0, 1.0)
    frame_offset: tuple[float, float] = (0.0, 0.0)
    frame_mpp: float | None = None

    @classmethod
    def identity(cls, height: int, width: int, mpp: float | None = None) -> ImageGrid:
        """No resampling."""
        return cls(height, width, height, width, mpp)

    @property
    def resampled(self) -> bool:
        """Whether the work grid differs from the input's."""
        return (self.work_height, self.work_width) != (self.height, self.width)

    @property
    def scale(self) -> tuple[float, float]:
        """(rows, columns) of input pixels per work pixel."""
        return self.height / self.work_height, self.width / self.work_width

    @property
    def framed(self) -> bool:
        """Whether polygons and centroids go to a frame other than the input's pixels."""
        return tuple(self.frame_scale) != (1.0, 1.0) or tuple(self.frame_offset) != (0.0, 0.0)

    @property
    def output_scale(self) -> tuple[float, float]:
        """(rows, columns) of output-frame pixels per work pixel."""
        rows, cols = self.scale
        return rows * self.frame_scale[0], cols * self.frame_scale[1]

    @property
    def output_mpp(self) -> float | None:
        """Side of an output-frame pixel in µm (None when the input's is unknown)."""
        if self.frame_mpp is not None or self.mpp is None:
            return self.frame_mpp
        return self.mpp / (0.5 * (self.frame_scale[0] + self.frame_scale[1]))

    @property
    def work_mpp(self) -> float | None:
        """Side of a work-grid pixel in µm (None when the input's is unknown)."""
        return None if self.mpp is None else self.mpp * self.width / self.work_width

    def metadata(self, model_mpp: float | None = None) -> dict[str, Any]:
        """What the GeoJSON records about scale."""
        metadata: dict[str, Any] = {
            "pixel_size_um": self.mpp,
            "model_pixel_size_um": model_mpp,
            "segmented_pixel_size_um": self.work_mpp,
            "units": "µm" if self.mpp is not None else "px",
        }
        if self.framed:
            metadata["coordinates"] = {
                "pixel_size_um": self.output_mpp,
                "downsample_xy": [self.frame_scale[1], self.frame_scale[0]],
                "offset_xy": list(self.frame_offset),
            }
        return metadata


def probability_to_uint8(probability: np.ndarray) -> np.ndarray:
    """round(255 * p) as uint8."""
    return np.round(np.clip(probability, 0.0, 1.0) * 255.0).astype(np.uint8)


def _as_channels(probabilities: np.ndarray) -> np.ndarray:
    """(H, W) foreground or (C, H, W) probabilities -> (C, H, W) float32."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    return probabilities[None] if probabilities.ndim == 2 else probabilities


def _labels_to_input(labels_rows: Any, grid: ImageGrid, top: int, bottom: int) -> np.ndarray:
    """Input-grid label rows ``top:bottom`` by nearest neighbour from work-grid rows ``labels_rows(t, b)``."""
    if not grid.resampled:
        return labels_rows(top, bottom)
    rows = nearest_indices(top, bottom, grid.work_height, grid.height)
    cols = nearest_indices(0, grid.width, grid.work_width, grid.width)
    if len(rows) == 0:
        return np.zeros((0, grid.width), dtype=np.int32)
    block = labels_rows(int(rows[0]), int(rows[-1]) + 1)
    return block[np.ix_(rows - rows[0], cols)]


def _probability_to_input(prob_rows: Any, grid: ImageGrid, top: int, bottom: int) -> np.ndarray:
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
    label_rows: Any,
    prob_rows: Any | None,
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


def write_outputs(
    image: np.ndarray,
    probabilities: np.ndarray,
    paths: OutputPaths,
    settings: PostprocessSettings = DEFAULT_SETTINGS,
    grid: ImageGrid | None = None,
    heads: Heads | None = None,
    work_image: np.ndarray | None = None,
    model_mpp: float | None = None,
) -> int:
    """Write all outputs of an image held in memory; return the number of nuclei.

    Args:
        image: (H, W, 3) uint8 image as read (drawn under the contours).
        probabilities: (C, h, w) probabilities on the work grid, or an (h, w) foreground.
        paths: Destinations.
        settings: Post-processing settings.
        grid: Input and work grids (default: the same, pixel size unknown).
        heads: How to get the foreground from ``probabilities`` (default: channel 0).
        work_image: ``image`` on the work grid (default: ``image``; required when resampled).
        model_mpp: Recorded in the GeoJSON.
    """
    probabilities = _as_channels(probabilities)
    grid = grid or ImageGrid.identity(image.shape[0], image.shape[1])
    work_image = image if work_image is None else work_image
    if (
        work_image.shape[:2] != (grid.work_height, grid.work_width)
        or probabilities.shape[1:] != work_image.shape[:2]
    ):
        raise ValueError(
            f"write_outputs: work image {work_image.shape[:2]} and probabilities {probabilities.shape[1:]} "
            f"must both be {(grid.work_height, grid.work_width)}"
        )
    labels = canonical_labels(instance_function(settings)(probabilities))
    foreground = (heads or heads_of(None)).foreground(probabilities) if paths.probability else None
    prob_u8 = None if foreground is None else probability_to_uint8(foreground)
    _write_rasters(
        paths,
        grid,
        ArrayRegionReader(image),
        lambda t, b: labels[t:b],
        None if prob_u8 is None else (lambda t, b: prob_u8[t:b]),
    )
    with ExitStack() as stack:
        geojson = stack.enter_context(GeoJsonWriter(paths.geojson, grid.metadata(model_mpp)))
        csv = None
        if paths.measurements is not None:
            names = column_names(grid.work_mpp is not None)
            csv = stack.enter_context(MeasurementCsvWriter(paths.measurements, names, grid.mpp))
        _add_nuclei(labels, 1, work_image, 0, grid, settings, geojson, csv)
    return int(labels.max(initial=0))


def write_outputs_streamed(
    reader: RegionReader,
    bands: Iterable[tuple[int, np.ndarray]],
    paths: OutputPaths,
    settings: PostprocessSettings = DEFAULT_SETTINGS,
    band_rows: int = 256,
    grid: ImageGrid | None = None,
    heads: Heads | None = None,
    work_reader: RegionReader | None = None,
    model_mpp: float | None = None,
) -> int:
    """Write all outputs from a stream of logit bands (``stream_logits``); return the nuclei count.

    Args:
        reader: The input image, read again band by band for the overlay.
        bands: ``(top_row, logits (C, h, W))`` in order, on the work grid.
        paths: Destinations; the temporary row files go to the folder of ``paths.labels``.
        settings: Post-processing settings (``band_rows`` and ``max_object_rows`` set the halo bands).
        band_rows: Rows per band in the raster-writing pass.
        grid: Input and work grids (default: the same, pixel size unknown).
        heads: Logits -> probabilities -> foreground (default: sigmoid, channel 0).
        work_reader: The image on the work grid, for measurements (default: ``reader``).
        model_mpp: Recorded in the GeoJSON.
    """
    grid = grid or ImageGrid.identity(reader.height, reader.width)
    heads = heads or heads_of(None)
    work_reader = work_reader or reader
    width = grid.work_width
    work_dir = paths.labels.parent
    work_dir.mkdir(parents=True, exist_ok=True)
    labeller = HaloBandLabeller(
        instance_function(settings),
        grid.work_height,
        settings.band_rows,
        settings.max_object_rows,
        reader.name,
    )
    count = 0
    with ExitStack() as stack:
        probabilities_file = stack.enter_context(RawRowFile(width, np.uint8, work_dir))
        labels_file = stack.enter_context(RawRowFile(width, np.int32, work_dir))
        with ExitStack() as writers:
            geojson = writers.enter_context(GeoJsonWriter(paths.geojson, grid.metadata(model_mpp)))
            csv = None
            if paths.measurements is not None:
                names = column_names(grid.work_mpp is not None)
                csv = writers.enter_context(MeasurementCsvWriter(paths.measurements, names, grid.mpp))

            def emit(done: Iterable[Any]) -> None:
                nonlocal count
                for band in done:
                    labels_file.append(band.rows)
                    if band.objects.any():
                        pixels = work_reader.read(band.window_top, 0, band.objects.shape[0], width)
                        _add_nuclei(
                            band.objects, band.first_id, pixels, band.window_top, grid, settings, geojson, csv
                        )
                    count = band.first_id + int(band.objects.max(initial=0)) - 1

            for top, logits in bands:
                if top != labeller.rows_seen:
                    raise ValueError(
                        f"{reader.name}: bands out of order (row {top}, expected {labeller.rows_seen})"
                    )
                for start in range(0, logits.shape[1], band_rows):  # bounded temporaries per sub-band
                    probabilities = heads.probabilities(logits[:, start : start + band_rows])
                    if paths.probability is not None:
                        probabilities_file.append(probability_to_uint8(heads.foreground(probabilities)))
                    emit(labeller.add(probabilities))
            emit(labeller.finish())
        _write_rasters(
            paths,
            grid,
            reader,
            labels_file.read,
            probabilities_file.read if paths.probability is not None else None,
            band_rows,
        )
    return count
