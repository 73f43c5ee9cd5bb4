"""Resampling to the model's pixel size, region by region, so it streams like any reader.

``ResampledRegionReader`` presents an image at another pixel size as a region reader: each
region is interpolated from the source pixels it needs with ``linear_weights`` (bilinear,
antialiased when shrinking), which depend only on the output position, so a resampled image
streams in blocks exactly as it would be resampled whole. ``nearest_indices`` maps labels back.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from nucseg.io.regions import RegionReader


def linear_weights(out_start: int, out_stop: int, in_size: int, out_size: int) -> tuple[int, np.ndarray]:
    """Weights of output pixels ``out_start:out_stop`` of one axis resized from ``in_size`` to ``out_size``.

    A triangle (linear) kernel, widened by the reduction factor when shrinking (antialiasing, as
    Pillow's bilinear resize does), with pixel centres aligned (``align_corners=False``) and the
    edges handled by renormalising the weights that fall inside. Each output pixel's weights
    depend only on its position, so resizing an image region by region gives the same pixels as
    resizing it whole.

    Returns:
        ``(in_start, weights)``: weights (out_stop - out_start, n) float32 applying to input
        pixels ``in_start .. in_start + n``.
    """
    scale = out_size / in_size
    radius = max(1.0, 1.0 / scale)
    centres = (np.arange(out_start, out_stop, dtype=np.float64) + 0.5) / scale - 0.5
    if len(centres) == 0:
        return 0, np.zeros((0, 0), dtype=np.float32)
    first = max(0, int(math.floor(centres[0] - radius)) + 1)
    last = min(in_size - 1, int(math.ceil(centres[-1] + radius)) - 1)
    first, last = min(first, in_size - 1), max(last, 0)
    positions = np.arange(first, last + 1, dtype=np.float64)
    weights = np.clip(1.0 - np.abs(positions[None, :] - centres[:, None]) / radius, 0.0, None)
    sums = weights.sum(axis=1, keepdims=True)
    nearest = np.clip(np.round(centres).astype(np.int64), first, last) - first
    empty = sums[:, 0] == 0
    weights[empty, nearest[empty]] = 1.0  # cannot happen with radius >= 1; kept for safety
    sums[empty] = 1.0
    return first, (weights / sums).astype(np.float32)


def resample_region(
    source: Callable[[int, int, int, int], np.ndarray],
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    top: int,
    left: int,
    height: int,
    width: int,
) -> np.ndarray:
    """Rows ``top:top+height``, columns ``left:left+width`` of an image resized from ``in_size`` to ``out_size``.

    Args:
        source: ``source(top, left, height, width)`` reads a region of the input, (h, w) or (h, w, c).
        in_size: Input (height, width).
        out_size: Output (height, width).
        top, left, height, width: The output region (clipped to ``out_size``).

    Returns:
        float32 region, (h, w) or (h, w, c) like the source.
    """
    bottom, right = min(top + height, out_size[0]), min(left + width, out_size[1])
    row0, row_weights = linear_weights(top, bottom, in_size[0], out_size[0])
    col0, col_weights = linear_weights(left, right, in_size[1], out_size[1])
    pixels = np.asarray(source(row0, col0, row_weights.shape[1], col_weights.shape[1]), dtype=np.float32)
    rows = np.tensordot(row_weights, pixels, axes=(1, 0))  # (h', w, ...)
    out = np.tensordot(col_weights, rows, axes=(1, 1))  # (w', h', ...)
    return np.swapaxes(out, 0, 1)


def nearest_indices(out_start: int, out_stop: int, in_size: int, out_size: int) -> np.ndarray:
    """Input index of each output pixel of one axis for nearest-neighbour resizing (centres aligned)."""
    centres = (np.arange(out_start, out_stop, dtype=np.float64) + 0.5) * (in_size / out_size)
    return np.clip(np.floor(centres).astype(np.int64), 0, in_size - 1)


class ResampledRegionReader:
    """A region reader of another reader's image resized to ``height x width`` (uint8 RGB).

    Regions are resized with :func:`linear_weights`, so streaming a resampled image gives the
    same pixels as resampling it whole.
    """

    def __init__(self, reader: RegionReader, height: int, width: int) -> None:
        self.source = reader
        self.height, self.width = int(height), int(width)
        self.name = reader.name

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        region = resample_region(
            self.source.read,
            (self.source.height, self.source.width),
            (self.height, self.width),
            top,
            left,
            height,
            width,
        )
        return np.clip(np.round(region), 0, 255).astype(np.uint8)

    def close(self) -> None:
        """The source reader is closed by its owner."""
