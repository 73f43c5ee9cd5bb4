"""Tiled TIFF writing from a row source, so no output has to be whole in memory.

tifffile writes a tiled page from an iterator of tiles in row-major order (incomplete edge tiles
are zero-padded by tifffile and cropped by every reader); tiles are cut from one band of
``tile[0]`` rows at a time, fetched from ``read_rows``. The same writer serves in-memory
results (``read_rows`` slices an array) and streamed ones (it reads a temporary row file).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from nucseg.utils.atomic import atomic_path
from nucseg.utils.resolution import tiff_resolution

RowSource = Callable[[int, int], np.ndarray]


def write_tiled_tiff(
    path: str | os.PathLike[str],
    height: int,
    width: int,
    dtype: np.dtype | type,
    read_rows: RowSource,
    tile: tuple[int, int] = (256, 256),
    compression: str = "zlib",
    mpp: float | None = None,
) -> Path:
    """Write an (height, width) single-channel image atomically as a tiled, compressed TIFF.

    Args:
        path: Destination.
        height: Image height.
        width: Image width.
        dtype: Pixel type (uint8 for masks and probabilities, int32 for labels).
        read_rows: ``read_rows(top, bottom)`` returns rows ``top:bottom`` as (h, width) arrays.
        tile: Tile (height, width), multiples of 16 as TIFF requires.
        compression: Any tifffile compression name (zlib is lossless and everywhere).
        mpp: Pixel size in µm, written as XResolution/YResolution in pixels per centimetre
            (QuPath, Fiji and tifffile read it back); None writes no resolution.
    """
    import tifffile

    dtype = np.dtype(dtype)

    def tiles() -> Iterator[np.ndarray]:
        for top in range(0, height, tile[0]):
            band = np.asarray(read_rows(top, min(top + tile[0], height)), dtype=dtype)
            for left in range(0, width, tile[1]):
                yield band[:, left : left + tile[1]]

    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            tiles(),
            shape=(height, width),
            dtype=dtype,
            tile=tile,
            compression=compression,
            photometric="minisblack",
            **tiff_resolution(mpp),
        )
    return Path(path)

