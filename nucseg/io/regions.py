"""Region readers: rectangles of an image as (h, w, 3) uint8 RGB, without reading the rest.

TIFF (``TiffRegionReader``). The first page is opened through tifffile's public interfaces:
an uncompressed, contiguous page as a ``numpy.memmap`` (``tifffile.memmap``; only the touched
rows are paged in, however tall its strips), any other page as a read-only zarr array over
tifffile's store (``TiffPage.aszarr``), which decodes only the tiles or strips a region
intersects (any compression tifffile decodes, JPEG tiles of slides included). A compressed TIFF
stored as one huge strip (rare) must be decoded whole: the reader warns, because memory then
grows with the image. PNG and JPEG cannot be read by region; they are read whole
(``ArrayRegionReader``). Pixels are converted like ``read_rgb_image``
(``nucseg.io.images.to_rgb_uint8``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from nucseg.io.images import TIFF_SUFFIXES, ImageReadError, read_rgb_image, to_rgb_uint8

logger = logging.getLogger(__name__)

#: Compressed segments above this many pixels are decoded whole: warned about.
LARGE_SEGMENT_PIXELS = 64 * 1024 * 1024


class RegionReader(Protocol):
    """Anything that reads (h, w, 3) uint8 RGB rectangles of an image of ``height x width``."""

    height: int
    width: int
    name: str

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray: ...

    def close(self) -> None: ...


class ArrayRegionReader:
    """A region reader over an image already in memory (PNG/JPEG, tests)."""

    def __init__(self, image: np.ndarray, name: str = "<array>") -> None:
        self.image = to_rgb_uint8(image, name)
        self.height, self.width = self.image.shape[:2]
        self.name = name

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        return self.image[top : top + height, left : left + width]

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> ArrayRegionReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TiffRegionReader:
    """Read rectangles of the first page of a TIFF, decoding only the segments needed.

    Handles tiled and striped pages, contiguous and separate planes, and 8/16-bit grey, RGB or
    RGBA samples (module docstring).

    Raises:
        ImageReadError: When the file cannot be opened or its first page is not a 2-D image.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import tifffile

        self.path = Path(path)
        self.name = str(self.path)
        try:
            self._tif = tifffile.TiffFile(self.path)
            page = self._tif.pages.first
            if page.shaped[1] != 1:
                raise ImageReadError(f"{self.path}: volumetric TIFF pages are not supported")
            self._pixels = self._open_pixels(page)
        except ImageReadError:
            self._close_file()
            raise
        except Exception as error:  # noqa: BLE001 - every parser error becomes one clear line
            self._close_file()
            raise ImageReadError(f"{self.path}: cannot read TIFF ({type(error).__name__}: {error})") from error
        self.height, self.width = int(page.shaped[2]), int(page.shaped[3])
        self._axes = page.axes  # e.g. "YXS", "SYX", "YX"

    def _open_pixels(self, page: Any) -> Any:
        """A lazily read array of the page: memmap when uncompressed and contiguous, else zarr."""
        import tifffile

        if page.is_memmappable:
            return tifffile.memmap(self.path, page=0, mode="r")
        import zarr

        height, width = int(page.shaped[2]), int(page.shaped[3])
        if page.is_tiled:
            segment = (int(page.tilelength), int(page.tilewidth))
        else:
            segment = (min(int(page.rowsperstrip or height), height), width)
        if segment[0] * segment[1] > LARGE_SEGMENT_PIXELS:
            logger.warning(
                "%s: compressed segments of %dx%d pixels must be decoded whole", self.path, *segment
            )
        return zarr.open_array(page.aszarr(), mode="r")

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        """Read an (h, w, 3) uint8 RGB rectangle (clipped to the image)."""
        bottom, right = min(top + height, self.height), min(left + width, self.width)
        index = tuple(
            slice(top, bottom) if axis == "Y" else slice(left, right) if axis == "X" else slice(None)
            for axis in self._axes
        )
        try:
            raw = np.asarray(self._pixels[index])
        except Exception as error:  # noqa: BLE001 - a corrupt segment becomes one clear line
            raise ImageReadError(
                f"{self.path}: cannot read region y={top}..{bottom} x={left}..{right} "
                f"({type(error).__name__}: {error})"
            ) from error
        if "S" in self._axes:
            raw = np.moveaxis(raw, self._axes.index("S"), -1)
        return to_rgb_uint8(raw, self.name)

    def _close_file(self) -> None:
        tif = getattr(self, "_tif", None)
        if tif is not None:
            tif.close()

    def close(self) -> None:
        """Close the file (and drop the memory map)."""
        self._pixels = None
        self._close_file()

    def __enter__(self) -> TiffRegionReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_region_reader(path: str | os.PathLike[str]) -> TiffRegionReader | ArrayRegionReader:
    """A region reader for ``path``: by region for TIFF, whole for PNG/JPEG."""
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        return TiffRegionReader(path)
    return ArrayRegionReader(read_rgb_image(path), name=str(path))


def read_whole(reader: RegionReader, block: int = 1024) -> np.ndarray:
    """The whole image of a reader, read in blocks (bounded temporaries when it resamples)."""
    out = np.empty((reader.height, reader.width, 3), dtype=np.uint8)
    for top in range(0, reader.height, block):
        for left in range(0, reader.width, block):
            region = reader.read(top, left, block, block)
            out[top : top + region.shape[0], left : left + region.shape[1]] = region
    return out
