"""The files written for one predicted image, from memory or streamed, with the same content.

Per image ``<stem>`` in the output folder:

- ``<stem>_mask.png``: 8-bit greyscale, 255 = nucleus pixel (a pixel of a kept instance, so it
  agrees with the labels: components below ``min_size`` are not in it);
- ``<stem>_labels.tif``: int32 instance labels (0 = background), tiled and zlib-compressed;
- ``<stem>_overlay.png``: the input image (as read, before stain normalisation) with nucleus
  contours in green;
- ``<stem>.geojson``: one QuPath detection per nucleus (see ``nucseg.export.geojson``);
- ``<stem>_prob.tif`` (optional): foreground probability as uint8, ``round(255 * p)``.

``write_outputs`` takes an image and its probability map in memory. ``write_outputs_streamed``
takes the band stream of ``stream_logits`` and never holds a whole-image array: pass 1 stores
the probabilities (uint8) and provisional labels of each band in temporary row files and joins
components across bands (``StreamingLabeler``); then each output is written from those files
band by band. GeoJSON polygons are traced per object in a window of rows around it (objects
are numbered in order of their top row, so the window only moves down); objects taller than
``max_object_rows`` are not nuclei and are left out of the GeoJSON with a warning.
Both functions give byte-identical labels, masks and overlays for the same probabilities.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nucseg.export.geojson import features_from_labels, nucleus_feature, nucleus_ring, write_geojson
from nucseg.export.overlay import overlay_contours
from nucseg.export.png import StreamingPngWriter, write_png
from nucseg.export.tiff import write_array_tiff, write_tiled_tiff
from nucseg.inference.streaming import RawRowFile, RegionReader
from nucseg.postprocess.instances import StreamingLabeler, label_instances

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputPaths:
    """Where the outputs of one image go."""

    mask: Path
    labels: Path
    overlay: Path
    geojson: Path
    probability: Path | None = None

    @classmethod
    def for_image(
        cls, directory: str | os.PathLike[str], stem: str, probability: bool = False
    ) -> OutputPaths:
        """The standard names (module docstring) for ``stem`` in ``directory``."""
        directory = Path(directory)
        return cls(
            mask=directory / f"{stem}_mask.png",
            labels=directory / f"{stem}_labels.tif",
            overlay=directory / f"{stem}_overlay.png",
            geojson=directory / f"{stem}.geojson",
            probability=directory / f"{stem}_prob.tif" if probability else None,
        )

    def all(self) -> list[Path]:
        """Every path that is written."""
        paths = [self.mask, self.labels, self.overlay, self.geojson]
        return paths + ([self.probability] if self.probability is not None else [])


@dataclass(frozen=True)
class PostprocessSettings:
    """Probability -> instances -> polygons settings (see ``nucseg.postprocess.instances``).

    Attributes:
        threshold: Foreground when the probability is at least this.
        min_size: Instances with fewer pixels are dropped.
        connectivity: 1 (4-connected) or 2 (8-connected) components.
        tolerance: Polygon simplification in pixels.
        max_object_rows: Streamed GeoJSON skips objects taller than this (not nuclei).
    """

    threshold: float = 0.5
    min_size: int = 10
    connectivity: int = 1
    tolerance: float = 0.25
    max_object_rows: int = 1024


DEFAULT_SETTINGS = PostprocessSettings()


def probability_to_uint8(probability: np.ndarray) -> np.ndarray:
    """round(255 * p) as uint8."""
    return np.round(np.clip(probability, 0.0, 1.0) * 255.0).astype(np.uint8)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function in float32."""
    logits = np.asarray(logits, dtype=np.float32)
    return (0.5 * (1.0 + np.tanh(0.5 * logits))).astype(np.float32)


def write_outputs(
    image: np.ndarray,
    probability: np.ndarray,
    paths: OutputPaths,
    settings: PostprocessSettings = DEFAULT_SETTINGS,
) -> int:
    """Write all outputs of an image held in memory; return the number of nuclei.

    Args:
        image: (H, W, 3) uint8 image as read (drawn under the contours).
        probability: (H, W) float foreground probability.
        paths: Destinations.
        settings: Post-processing settings.
    """
    labels = label_instances(probability, settings.threshold, settings.min_size, settings.connectivity)
    if paths.probability is not None:
        write_array_tiff(paths.probability, probability_to_uint8(probability))
    write_array_tiff(paths.labels, labels)
    write_png(paths.mask, np.where(labels > 0, 255, 0).astype(np.uint8))
    write_png(paths.overlay, overlay_contours(image, labels))
    features = features_from_labels(
        labels,
        tolerance=settings.tolerance,
        connectivity=settings.connectivity,
        max_rows=settings.max_object_rows,
    )
    return write_geojson(paths.geojson, features)


def write_outputs_streamed(
    reader: RegionReader,
    bands: Iterable[tuple[int, np.ndarray]],
    paths: OutputPaths,
    settings: PostprocessSettings = DEFAULT_SETTINGS,
    band_rows: int = 256,
) -> int:
    """Write all outputs from a stream of logit bands (``stream_logits``); return the nuclei count.

    Args:
        reader: The image, read again band by band for the overlay.
        bands: ``(top_row, logits (C, h, W))`` in order; channel 0 is the foreground logit.
        paths: Destinations; the temporary row files go to the folder of ``paths.labels``.
        settings: Post-processing settings.
        band_rows: Rows per band in the writing passes.
    """
    height, width = reader.height, reader.width
    work_dir = paths.labels.parent
    work_dir.mkdir(parents=True, exist_ok=True)
    labeler = StreamingLabeler(settings.min_size, settings.connectivity)
    with (
        RawRowFile(width, np.uint8, work_dir) as probabilities,
        RawRowFile(width, np.int32, work_dir) as provisional,
    ):
        for top, logits in bands:
            if top != labeler.rows_seen:
                raise ValueError(
                    f"{reader.name}: bands out of order (row {top}, expected {labeler.rows_seen})"
                )
            for start in range(0, logits.shape[1], band_rows):  # bounded temporaries per sub-band
                probability = sigmoid(logits[0, start : start + band_rows])
                probabilities.append(probability_to_uint8(probability))
                provisional.append(labeler.add_band(probability >= settings.threshold))
        if labeler.rows_seen != height:
            raise ValueError(f"{reader.name}: prediction covered {labeler.rows_seen} of {height} rows")
        lut = labeler.finish()

        def final_rows(top: int, bottom: int) -> np.ndarray:
            return lut[provisional.read(top, bottom)]

        if paths.probability is not None:
            write_tiled_tiff(paths.probability, height, width, np.uint8, probabilities.read)
        write_tiled_tiff(paths.labels, height, width, np.int32, final_rows)
        with (
            StreamingPngWriter(paths.mask, height, width, 1) as mask_png,
            StreamingPngWriter(paths.overlay, height, width, 3) as overlay_png,
        ):
            for top in range(0, height, band_rows):
                bottom = min(top + band_rows, height)
                window = final_rows(top - 1, bottom + 1)  # one context row above and below
                first = 1 if top > 0 else 0
                labels = window[first : first + bottom - top]
                above = window[0] if top > 0 else None
                below = window[-1] if bottom < height else None
                mask_png.write_rows(np.where(labels > 0, 255, 0).astype(np.uint8))
                overlay_png.write_rows(
                    overlay_contours(
                        reader.read(top, 0, bottom - top, width), labels, above=above, below=below
                    )
                )
        assert labeler.bboxes is not None
        features = _streamed_features(final_rows, labeler.bboxes, height, band_rows, settings, reader.name)
        return write_geojson(paths.geojson, features)


def _streamed_features(
    final_rows: Any, bboxes: np.ndarray, height: int, band_rows: int, settings: PostprocessSettings, name: str
) -> Iterator[dict[str, Any]]:
    """Features of all objects, tracing each in a window of label rows that only moves down."""
    window_top, window = 0, np.zeros((0, 0), dtype=np.int32)
    skipped = 0
    for index, (top, left, bottom, right) in enumerate(bboxes.tolist(), start=1):
        if bottom - top > settings.max_object_rows:
            skipped += 1
            continue
        if top < window_top or bottom > window_top + len(window):
            window_top = top
            window = final_rows(top, min(height, max(bottom, top + band_rows)))
        mask = window[top - window_top : bottom - window_top, left:right] == index
        ring = nucleus_ring(mask, (top, left), settings.tolerance, settings.connectivity)
        if ring is not None:
            yield nucleus_feature(ring, int(mask.sum()))
    if skipped:
        logger.warning(
            "%s: %d objects taller than %d rows left out of the GeoJSON",
            name,
            skipped,
            settings.max_object_rows,
        )
