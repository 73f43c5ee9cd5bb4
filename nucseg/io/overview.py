"""A thumbnail of a large image read region by region: every k-th pixel in both axes.

Streamed prediction estimates an image's stains once, on such a thumbnail of at most
``DEFAULT_OVERVIEW_PIXELS`` (2048 x 2048) pixels (``nucseg.inference.streaming``), without
holding the image in memory.
"""

from __future__ import annotations

import math

import numpy as np

from nucseg.io.regions import RegionReader

#: Most pixels of the thumbnail on which a streamed image's stains are estimated (2048 x 2048).
DEFAULT_OVERVIEW_PIXELS = 2048 * 2048
#: Most pixels read at once while building the thumbnail (48 MB of RGB).
OVERVIEW_READ_PIXELS = 16 * 1024 * 1024


def overview_stride(height: int, width: int, max_pixels: int = DEFAULT_OVERVIEW_PIXELS) -> int:
    """The smallest k for which every k-th row and column of the image give at most ``max_pixels``."""
    if max_pixels < 1:
        raise ValueError(f"overview: max_pixels must be >= 1, got {max_pixels}")
    stride = max(1, math.ceil(math.sqrt(height * width / max_pixels)))
    while math.ceil(height / stride) * math.ceil(width / stride) > max_pixels:
        stride += 1
    return stride


def read_overview(
    reader: RegionReader,
    max_pixels: int = DEFAULT_OVERVIEW_PIXELS,
    read_pixels: int = OVERVIEW_READ_PIXELS,
) -> np.ndarray:
    """A thumbnail of the whole image: every k-th pixel in both axes, at most ``max_pixels``.

    Why strided and not resampled: the stain estimate needs real pixel colours (averaging
    would mix nuclei with background). The image is read in full-width bands of about
    ``read_pixels`` (a multiple of k rows, so band boundaries keep the global grid); when k
    rows alone are wider than that, only the sampled rows are read.

    Returns:
        (ceil(H / k), ceil(W / k), 3) uint8.
    """
    height, width = reader.height, reader.width
    stride = overview_stride(height, width, max_pixels)
    rows_per_read = max(1, read_pixels // max(1, width))
    parts = []
    if stride <= rows_per_read:
        band = stride * (rows_per_read // stride)
        for top in range(0, height, band):
            parts.append(reader.read(top, 0, min(band, height - top), width)[::stride, ::stride])
    else:
        for top in range(0, height, stride):
            parts.append(reader.read(top, 0, 1, width)[:, ::stride])
    return np.ascontiguousarray(np.concatenate(parts, axis=0))
