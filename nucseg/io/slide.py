"""Whole-slide images: pyramid levels, resolution, tissue, and a region reader for streaming.

Reading goes through tiffslide (the optional extra ``wsi``: ``pip install nucseg[wsi]``), a
tifffile-based drop-in for openslide-python. Formats it opens: Aperio ``.svs``, generic pyramidal
``.tif``/``.tiff`` (levels as SubIFDs or as a series of reduced pages, e.g. from ``vips``,
QuPath or tifffile), Leica ``.scn`` and Hamamatsu ``.ndpi`` (opened; tiffslide's NDPI support is
incomplete). Formats that are not TIFF (MIRAX ``.mrxs``, Hamamatsu ``.vms``, DICOM) need
openslide-python with its library: when ``openslide`` is importable it is used for them,
otherwise opening them fails with a message saying so. Both libraries share one API.

Resolution. The level-0 microns per pixel come from the slide's properties
(``tiffslide.mpp-x`` / ``openslide.mpp-x``, which both read from the Aperio description or the
TIFF resolution tags); ``mpp=`` overrides them for files without (or with wrong) metadata.
:meth:`WholeSlide.level_for_mpp` picks the level whose resolution is nearest the model's on a
log scale (0.5 µm/px is as far from 0.25 as from 1.0). Levels are read as stored, never
resampled: :attr:`SlideRegionReader.scale_to_model` (level mpp / model mpp) says how far off
the level is, and a warning is logged when it is off by more than 25 %.

Coordinates. A reader works in the pixels of its level; ``downsample`` (level-0 pixels per
level pixel, per axis) maps results back: level-0 x = level x * ``downsample_xy[0]``.

Tissue. :meth:`WholeSlide.tissue_mask` thresholds the saturation of a thumbnail (HSV; glass
and white background are unsaturated, H&E is not) with Otsu's method, floored at
``min_saturation`` so an empty slide is not split on noise, then removes small objects and
fills small holes. The mask comes with its own downsample so it can be looked up from any level.
"""

from __future__ import annotations

import logging
import math
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nucseg.io.images import to_rgb_uint8

logger = logging.getLogger(__name__)

#: Suffixes only openslide reads (not TIFF containers).
OPENSLIDE_ONLY_SUFFIXES = {".mrxs", ".vms", ".vmu", ".dcm", ".bif"}
MPP_KEYS = ("tiffslide.mpp-x", "openslide.mpp-x", "aperio.MPP")
MPP_KEYS_Y = ("tiffslide.mpp-y", "openslide.mpp-y", "aperio.MPP")
#: Relative mismatch between a level and the model's resolution that is warned about.
RESOLUTION_TOLERANCE = 0.25


class SlideError(ValueError):
    """A slide cannot be opened, or lacks what is asked of it (resolution, level)."""


def _open_backend(path: Path) -> Any:
    """A tiffslide (or openslide) slide object for ``path``."""
    if path.suffix.lower() in OPENSLIDE_ONLY_SUFFIXES:
        try:
            import openslide
        except ImportError as error:
            raise SlideError(
                f"{path}: {path.suffix} slides need openslide-python and its library "
                "(pip install openslide-python openslide-bin); tiffslide reads TIFF-based formats only"
            ) from error
        try:
            return openslide.OpenSlide(str(path))
        except Exception as error:  # noqa: BLE001 - every backend error becomes one line
            raise SlideError(f"{path}: cannot open slide ({type(error).__name__}: {error})") from error
    try:
        import tiffslide
    except ImportError as error:
        raise SlideError(f"{path}: reading whole-slide images needs tiffslide (pip install 'nucseg[wsi]')") from error
    try:
        return tiffslide.TiffSlide(path)
    except Exception as error:  # noqa: BLE001
        raise SlideError(f"{path}: cannot open slide ({type(error).__name__}: {error})") from error


@dataclass(frozen=True)
class TissueMask:
    """Where the tissue is, on a thumbnail.

    Attributes:
        mask: (h, w) bool, True on tissue.
        downsample_xy: level-0 pixels per mask pixel, (x, y).
        threshold: the saturation threshold used (in [0, 1]).
    """

    mask: np.ndarray
    downsample_xy: tuple[float, float]
    threshold: float

    def fraction(self, top: int, left: int, height: int, width: int, downsample: float | tuple[float, float] = 1.0) -> float:
        """Share of tissue in a rectangle given in the pixels of a level of ``downsample``.

        The rectangle is mapped to mask pixels (at least one); 0.0 outside the slide.
        """
        dx, dy = (downsample, downsample) if isinstance(downsample, int | float) else downsample
        mx, my = self.downsample_xy
        row0, col0 = math.floor(top * dy / my), math.floor(left * dx / mx)
        row1 = max(row0 + 1, math.ceil((top + height) * dy / my))
        col1 = max(col0 + 1, math.ceil((left + width) * dx / mx))
        window = self.mask[max(0, row0) : row1, max(0, col0) : col1]
        return float(window.mean()) if window.size else 0.0


class SlideRegionReader(AbstractContextManager["SlideRegionReader"]):
    """Read (h, w, 3) uint8 RGB rectangles of one pyramid level (``streaming.RegionReader``).

    Attributes:
        height, width: size of the level in its own pixels.
        name: the slide path.
        level: the pyramid level read.
        downsample_xy: level-0 pixels per level pixel, (x, y).
        mpp: microns per pixel of this level (``None`` when the slide has no resolution).
        scale_to_model: level mpp / model mpp (``None`` without a model resolution).
    """

    def __init__(self, slide: WholeSlide, level: int, model_mpp: float | None = None) -> None:
        if not 0 <= level < slide.level_count:
            raise SlideError(f"{slide.path}: level {level} does not exist (0..{slide.level_count - 1})")
        self._slide = slide
        self.level = level
        self.width, self.height = slide.level_dimensions[level]
        self.name = str(slide.path)
        self.downsample_xy = slide.level_downsample_xy(level)
        self.mpp = slide.mpp * slide.level_downsamples[level] if slide.mpp is not None else None
        self.scale_to_model = self.mpp / model_mpp if (self.mpp is not None and model_mpp) else None

    @property
    def downsample(self) -> float:
        """Mean level-0 pixels per level pixel (openslide's ``level_downsamples`` entry)."""
        return self._slide.level_downsamples[self.level]

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        """The rectangle at (top, left) of this level; parts outside the slide are an error."""
        if top < 0 or left < 0 or height <= 0 or width <= 0 or top + height > self.height or left + width > self.width:
            raise SlideError(
                f"{self.name}: region top={top} left={left} {height}x{width} is outside level {self.level} "
                f"({self.height}x{self.width})"
            )
        return self._slide.read_level_region(self.level, top, left, height, width)

    def to_level0(self, y: float, x: float) -> tuple[float, float]:
        """(y, x) in this level's pixels -> (y, x) in level-0 pixels."""
        return y * self.downsample_xy[1], x * self.downsample_xy[0]

    def close(self) -> None:
        """Close the slide this reader belongs to."""
        self._slide.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


class WholeSlide(AbstractContextManager["WholeSlide"]):
    """An open whole-slide image (see the module docstring).

    Args:
        path: the slide file.
        mpp: level-0 microns per pixel, overriding the slide's properties (``None``: read them).

    Raises:
        SlideError: the file is missing or cannot be opened, or ``mpp`` is not positive.
    """

    def __init__(self, path: str | os.PathLike[str], mpp: float | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise SlideError(f"{self.path}: no such slide file")
        if mpp is not None and not mpp > 0:
            raise SlideError(f"{self.path}: mpp must be positive, got {mpp}")
        self._backend = _open_backend(self.path)
        self.properties: dict[str, Any] = dict(self._backend.properties)
        self.level_count: int = int(self._backend.level_count)
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(
            (int(w), int(h)) for w, h in self._backend.level_dimensions
        )
        self.level_downsamples: tuple[float, ...] = tuple(float(d) for d in self._backend.level_downsamples)
        self.mpp: float | None = mpp if mpp is not None else self._mpp_from_properties()

    def _mpp_from_properties(self) -> float | None:
        values = []
        for keys in (MPP_KEYS, MPP_KEYS_Y):
            value = next((self.properties[k] for k in keys if self.properties.get(k) not in (None, "")), None)
            try:
                values.append(float(value) if value is not None else None)
            except (TypeError, ValueError):
                values.append(None)
        known = [v for v in values if v is not None and math.isfinite(v) and v > 0]
        if not known:
            return None
        if len(known) == 2 and abs(known[0] - known[1]) > 0.01 * known[0]:
            logger.warning("%s: pixels are not square (mpp x %.4g, y %.4g); using x", self.path, *known)
        return known[0]

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0."""
        return self.level_dimensions[0]

    def level_downsample_xy(self, level: int) -> tuple[float, float]:
        """Exact level-0 pixels per pixel of ``level``, per axis (x, y)."""
        (w0, h0), (w, h) = self.level_dimensions[0], self.level_dimensions[level]
        return w0 / w, h0 / h

    # -- resolution ----------------------------------------------------------------------------
    def level_mpp(self, level: int) -> float:
        """Microns per pixel of ``level``.

        Raises:
            SlideError: the slide has no resolution (pass ``mpp=`` when opening it).
        """
        if self.mpp is None:
            raise SlideError(
                f"{self.path}: the slide has no resolution (mpp) in its properties; give it, e.g. mpp=0.25"
            )
        return self.mpp * self.level_downsamples[level]

    def level_for_mpp(self, target_mpp: float) -> int:
        """The level whose resolution is nearest ``target_mpp`` (log scale; ties go to the finer)."""
        if not target_mpp > 0:
            raise SlideError(f"{self.path}: target mpp must be positive, got {target_mpp}")
        distances = [abs(math.log(self.level_mpp(level) / target_mpp)) for level in range(self.level_count)]
        return int(np.argmin(np.round(distances, 9)))

    def reader(self, level: int | None = None, model_mpp: float | None = None) -> SlideRegionReader:
        """A region reader of ``level``, or of the level nearest ``model_mpp`` (else level 0).

        Logs a warning when the level differs from ``model_mpp`` by more than 25 %.
        """
        if level is None:
            level = self.level_for_mpp(model_mpp) if model_mpp is not None else 0
        reader = SlideRegionReader(self, level, model_mpp)
        if reader.scale_to_model is not None and abs(reader.scale_to_model - 1) > RESOLUTION_TOLERANCE:
            logger.warning(
                "%s: level %d is at %.3g µm/px, the model expects %.3g: predictions may suffer",
                self.path, level, reader.mpp, model_mpp,
            )
        return reader

    # -- pixels --------------------------------------------------------------------------------
    def read_level_region(self, level: int, top: int, left: int, height: int, width: int) -> np.ndarray:
        """(height, width, 3) uint8 RGB at (top, left) in the pixels of ``level``."""
        downsample = self.level_downsamples[level]
        location = (_level0_index(left, downsample), _level0_index(top, downsample))
        region = self._backend.read_region(location, level, (width, height))
        return to_rgb_uint8(np.asarray(region.convert("RGB") if hasattr(region, "convert") else region), self.name)

    @property
    def name(self) -> str:
        return str(self.path)

    def thumbnail(self, max_side: int = 1024) -> np.ndarray:
        """An (h, w, 3) uint8 overview whose longer side is at most ``max_side``."""
        image = self._backend.get_thumbnail((max_side, max_side))
        return to_rgb_uint8(np.asarray(image.convert("RGB")), self.name)

    def tissue_mask(
        self, max_side: int = 1024, min_saturation: float = 0.05, min_object_fraction: float = 0.001
    ) -> TissueMask:
        """Tissue on a thumbnail (module docstring).

        Args:
            max_side: longer side of the thumbnail the mask is computed on.
            min_saturation: the threshold never goes below this (an empty slide finds no tissue).
            min_object_fraction: tissue pieces and holes smaller than this share of the thumbnail
                are removed / filled (dust, pen dots, folds' gaps).
        """
        from skimage.color import rgb2hsv
        from skimage.filters import threshold_otsu

        thumbnail = self.thumbnail(max_side)
        saturation = rgb2hsv(thumbnail)[..., 1]
        threshold = max(float(threshold_otsu(saturation)), min_saturation) if np.ptp(saturation) > 0 else 1.0
        mask = saturation > threshold
        smallest = max(1, int(min_object_fraction * mask.size))
        mask = ~_without_small_components(~_without_small_components(mask, smallest), smallest)
        width0, height0 = self.dimensions
        downsample = (width0 / thumbnail.shape[1], height0 / thumbnail.shape[0])
        return TissueMask(mask=mask, downsample_xy=downsample, threshold=threshold)

    def close(self) -> None:
        """Release the file."""
        self._backend.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _without_small_components(mask: np.ndarray, max_size: int) -> np.ndarray:
    """``mask`` less its 4-connected components of at most ``max_size`` pixels."""
    from scipy import ndimage

    labels, _ = ndimage.label(mask)
    keep = np.bincount(labels.ravel()) > max_size
    keep[0] = False
    return keep[labels]


def _level0_index(index: int, downsample: float) -> int:
    """The level-0 coordinate that tiffslide/openslide map back to ``index`` of a level.

    Both compute ``int(level0 / downsample)``; with a non-integer downsample, ``index *
    downsample`` rounded may land one pixel short, so step up until it maps back exactly.
    """
    base = math.floor(index * downsample)
    while int(base / downsample) < index:
        base += 1
    return base


def open_slide(path: str | os.PathLike[str], mpp: float | None = None) -> WholeSlide:
    """Open a whole-slide image (``WholeSlide(path, mpp)``)."""
    return WholeSlide(path, mpp)
