"""Per-nucleus measurements, named and scaled as QuPath shows them, for the GeoJSON and a CSV.

Each nucleus gets its centroid, area, perimeter (``skimage.measure.regionprops``), eccentricity,
solidity and the mean haematoxylin and eosin optical densities of its pixels. Names carry units
like QuPath's: ``Area µm^2``, ``Perimeter µm``, ``Centroid X µm`` when the pixel size is known,
else ``Area px^2``, ``Perimeter px``, ``Centroid X px``.

Geometry is measured on the grid the nuclei were segmented on (the model's resolution after any
resampling) with that grid's pixel size, so µm values do not depend on the input's pixel size.
Centroids are given in the input image's frame (the GeoJSON's: x = column, y = row, pixel
(r, c) covering [c, c+1) x [r, r+1)), in µm or input pixels.

Optical density follows QuPath's colour deconvolution: OD = log10(255 / max(I, 1)) per RGB
channel, unmixed with the Ruifrok & Johnston (2001) H&E(&DAB) stain vectors
(``skimage.color.hed_from_rgb``), on the pixels as read (not stain-normalised).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
from skimage.color import hed_from_rgb
from skimage.measure import regionprops_table

from nucseg.utils.atomic import atomic_path


def column_names(calibrated: bool) -> list[str]:
    """Measurement names, with µm units when the pixel size is known (``calibrated``), else px."""
    length = "µm" if calibrated else "px"
    return [
        f"Centroid X {length}",
        f"Centroid Y {length}",
        f"Area {length}^2",
        f"Perimeter {length}",
        "Eccentricity",
        "Solidity",
        "Hematoxylin OD mean",
        "Eosin OD mean",
    ]


def stain_optical_density(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 2) float32 haematoxylin and eosin optical density."""
    intensities = np.maximum(np.asarray(image, dtype=np.float32), 1.0)
    optical_density = np.log10(255.0 / intensities)
    stains = optical_density.reshape(-1, 3) @ hed_from_rgb.astype(np.float32)
    return stains[:, :2].reshape(*image.shape[:2], 2)


def measure_nuclei(
    labels: np.ndarray,
    image: np.ndarray,
    pixel_size_um: float | None = None,
    offset: tuple[int, int] = (0, 0),
    scale: tuple[float, float] = (1.0, 1.0),
) -> dict[str, np.ndarray]:
    """Measure every labelled nucleus of ``labels`` (a whole image or a window of one).

    Args:
        labels: (H, W) int labels, 0 = background, one connected object per label.
        image: (H, W, 3) uint8 RGB on the same grid as ``labels``.
        pixel_size_um: Side of one pixel of this grid in µm, or None (values in px).
        offset: (row, column) of ``labels[0, 0]`` in the grid of the whole image.
        scale: (rows, columns) of input-image pixels per grid pixel, for centroids in px.

    Returns:
        Columns: ``label`` (the label value) and :func:`column_names`, one entry per nucleus in
        increasing label order.
    """
    labels = np.asarray(labels)
    table = regionprops_table(
        labels,
        intensity_image=stain_optical_density(image),
        properties=("label", "centroid", "area", "perimeter", "eccentricity", "solidity", "intensity_mean"),
    )
    row = table["centroid-0"] + 0.5 + offset[0]  # pixel centre -> the frame's continuous coordinate
    col = table["centroid-1"] + 0.5 + offset[1]
    if pixel_size_um is None:
        x, y, area, perimeter = col * scale[1], row * scale[0], table["area"], table["perimeter"]
    else:
        x, y = col * pixel_size_um, row * pixel_size_um
        area, perimeter = table["area"] * pixel_size_um**2, table["perimeter"] * pixel_size_um
    values = [x, y, area, perimeter, table["eccentricity"], table["solidity"],
              table["intensity_mean-0"], table["intensity_mean-1"]]  # fmt: skip
    columns = {"label": np.asarray(table["label"], dtype=np.int64)}
    for name, value in zip(column_names(pixel_size_um is not None), values, strict=True):
        columns[name] = np.asarray(value, dtype=np.float64)
    return columns


def rows_of(columns: dict[str, np.ndarray]) -> Iterable[dict[str, float]]:
    """The per-nucleus dictionaries of a :func:`measure_nuclei` table."""
    names = list(columns)
    for index in range(len(columns["label"])):
        yield {name: columns[name][index].item() for name in names}


class MeasurementCsvWriter:
    """Write one CSV row per nucleus, as they come, atomically (a context manager).

    Columns: ``Label`` (the value in the label TIFF), the measurement columns, and ``Pixel size
    µm`` (the input's, empty when unknown) so a CSV carries its own scale.
    """

    def __init__(self, path: str | os.PathLike[str], names: Sequence[str], mpp: float | None) -> None:
        self.path = Path(path)
        self.names = list(names)
        self.mpp = mpp
        self.count = 0

    def __enter__(self) -> MeasurementCsvWriter:
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        self._file = open(tmp, "w", encoding="utf-8", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(["Label", *self.names, "Pixel size µm"])
        return self

    def add(self, label: int, measurements: dict[str, float]) -> None:
        """Append one nucleus."""
        values = [f"{measurements[name]:.6g}" for name in self.names]
        self._writer.writerow([label, *values, "" if self.mpp is None else f"{self.mpp:.6g}"])
        self.count += 1

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._file.close()
        self._atomic.__exit__(exc_type, exc, traceback)


__all__ = ["MeasurementCsvWriter", "column_names", "measure_nuclei", "rows_of", "stain_optical_density"]
