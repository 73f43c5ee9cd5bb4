"""PNG writing row by row, so a mask or overlay of any size never sits whole in memory.

Pillow needs the whole image to write a PNG; a 10 000 x 10 000 RGB overlay is 300 MB that way.
A PNG is a signature, an IHDR chunk, zlib-compressed scanlines (each prefixed by its filter
type) split over IDAT chunks, and an IEND chunk, so rows can be compressed and written as they
come. Rows use filter type 1 ("Sub"), which compresses masks and overlays well and costs one
vectorised subtraction per row band.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from types import TracebackType

import numpy as np

from nucseg.utils.atomic import atomic_path

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPES = {1: 0, 3: 2}  # channels -> PNG colour type (grey, RGB)


class StreamingPngWriter:
    """Write an 8-bit greyscale or RGB PNG from bands of rows, atomically.

    Use as a context manager; :meth:`write_rows` takes (h, W) or (h, W, 3) uint8 bands in order.
    On leaving the block the file is complete (all rows given) or the destination is untouched.

    Args:
        path: Destination file.
        height: Image height; exactly this many rows must be written.
        width: Image width.
        channels: 1 (greyscale) or 3 (RGB).
        level: zlib compression level.
    """

    def __init__(
        self, path: str | os.PathLike[str], height: int, width: int, channels: int = 1, level: int = 6
    ):
        if channels not in _COLOUR_TYPES:
            raise ValueError(f"{path}: PNG writer supports 1 or 3 channels, got {channels}")
        self.path = Path(path)
        self.height, self.width, self.channels = int(height), int(width), channels
        self._level = level
        self._rows = 0

    def __enter__(self) -> StreamingPngWriter:
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        self._file = open(tmp, "wb")
        self._compressor = zlib.compressobj(self._level)
        self._file.write(_SIGNATURE)
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, _COLOUR_TYPES[self.channels], 0, 0, 0)
        self._chunk(b"IHDR", header)
        return self

    def write_rows(self, rows: np.ndarray) -> None:
        """Append a band of rows (uint8)."""
        rows = np.asarray(rows)
        expected = (self.width,) if self.channels == 1 else (self.width, self.channels)
        if rows.dtype != np.uint8 or rows.shape[1:] != expected:
            raise ValueError(
                f"{self.path}: PNG rows must be uint8 of shape (h, {expected}), got {rows.dtype} {rows.shape}"
            )
        if self._rows + len(rows) > self.height:
            raise ValueError(f"{self.path}: more than {self.height} rows written")
        flat = rows.reshape(len(rows), -1)
        filtered = np.empty((len(rows), flat.shape[1] + 1), dtype=np.uint8)
        filtered[:, 0] = 1  # Sub: each byte minus the byte one pixel to the left
        filtered[:, 1 : 1 + self.channels] = flat[:, : self.channels]
        np.subtract(flat[:, self.channels :], flat[:, : -self.channels], out=filtered[:, 1 + self.channels :])
        data = self._compressor.compress(filtered.tobytes())
        if data:
            self._chunk(b"IDAT", data)
        self._rows += len(rows)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                if self._rows != self.height:
                    raise ValueError(f"{self.path}: {self._rows} of {self.height} PNG rows written")
                self._chunk(b"IDAT", self._compressor.flush())
                self._chunk(b"IEND", b"")
        except BaseException as error:
            self._file.close()
            self._atomic.__exit__(type(error), error, error.__traceback__)
            raise
        self._file.close()
        self._atomic.__exit__(exc_type, exc, traceback)

    def _chunk(self, kind: bytes, data: bytes) -> None:
        self._file.write(struct.pack(">I", len(data)) + kind + data)
        self._file.write(struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def write_png(path: str | os.PathLike[str], image: np.ndarray) -> Path:
    """Write an in-memory (H, W) or (H, W, 3) uint8 image as PNG, atomically."""
    image = np.asarray(image)
    channels = 1 if image.ndim == 2 else image.shape[2]
    with StreamingPngWriter(path, image.shape[0], image.shape[1], channels) as writer:
        for top in range(0, image.shape[0], 1024):
            writer.write_rows(image[top : top + 1024])
    return Path(path)
