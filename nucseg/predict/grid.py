"""Where one image's outputs go (``OutputPaths``) and on which pixel grids they are made (``ImageGrid``).

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
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nucseg.utils.resolution import read_pixel_size

logger = logging.getLogger(__name__)

#: Pixel sizes within this relative difference of the model's are not resampled (5 %).
RESAMPLE_TOLERANCE = 0.05


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


def work_grid(height: int, width: int, mpp: float | None, model_mpp: float) -> ImageGrid:
    """The grid to predict on: the image resized to ``model_mpp`` (unchanged within 5 % or unknown)."""
    if mpp is None or abs(mpp / model_mpp - 1.0) <= RESAMPLE_TOLERANCE:
        return ImageGrid.identity(height, width, mpp)
    factor = mpp / model_mpp
    return ImageGrid(height, width, max(1, round(height * factor)), max(1, round(width * factor)), mpp)


def input_mpp(path: Path, mpp: float | None, model_mpp: float) -> float | None:
    """The input's pixel size: ``mpp``, else its metadata's (warned about when there is none)."""
    if mpp is not None:
        return mpp
    found = read_pixel_size(path)
    if found is None:
        logger.warning(
            "%s: pixel size unknown (no usable resolution metadata; pass --mpp); assuming the model's %.4g µm/px",
            path,
            model_mpp,
        )
        return None
    if abs(found.y_um / found.x_um - 1.0) > 0.01:
        logger.warning("%s: pixels are %.4g x %.4g µm; using the width", path, found.x_um, found.y_um)
    return found.mpp
