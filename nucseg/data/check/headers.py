"""Image headers without decoding pixels: size, channels, bit depth, and whether a TIFF is whole.

Reading the header and the file's bytes (hashed for the run's record) is what keeps the data
check at seconds on MoNuSeg.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nucseg.io.images import TIFF_SUFFIXES, ImageReadError


@dataclass(frozen=True)
class ImageHeader:
    """What the check needs to know of an image without decoding its pixels."""

    height: int
    width: int
    channels: int
    dtype: np.dtype



def _tiff_header(data: bytes, path: Path) -> ImageHeader:
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            if not len(tif.pages):
                raise ImageReadError(f"{path}: TIFF without an image")
            page = tif.pages[0]
            height, width, channels, dtype = page.imagelength, page.imagewidth, page.samplesperpixel, page.dtype
            offsets, counts = list(page.dataoffsets), list(page.databytecounts)
    except tifffile.TiffFileError as error:
        raise ImageReadError(f"{path}: not a readable TIFF ({error})") from error
    except (OSError, ValueError, struct.error, IndexError) as error:
        raise ImageReadError(f"{path}: damaged TIFF header ({type(error).__name__}: {error})") from error
    if dtype is None:
        raise ImageReadError(f"{path}: TIFF pixel type not supported")
    if not counts or min(counts) == 0:
        raise ImageReadError(f"{path}: TIFF with missing image data (empty strips or tiles)")
    needed = max(offset + count for offset, count in zip(offsets, counts, strict=True))
    if needed > len(data):
        raise ImageReadError(f"{path}: truncated: the file has {len(data)} bytes, its image data needs {needed}")
    return ImageHeader(int(height), int(width), int(channels), np.dtype(dtype))


# PIL modes: samples per pixel and pixel type as ``np.asarray`` returns them.
_PIL_MODES: dict[str, tuple[int, str]] = {
    "RGB": (3, "uint8"),
    "RGBA": (4, "uint8"),
    "L": (1, "uint8"),
    "1": (1, "bool"),
    "I;16": (1, "uint16"),
    "I;16L": (1, "uint16"),
    "I;16B": (1, "uint16"),
    "F": (1, "float32"),
}


def _pil_header(data: bytes, path: Path) -> ImageHeader:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as opened:
            mode, (width, height) = opened.mode, opened.size
            opened.verify()  # walks the chunks and their checksums; catches truncation without decoding
    except Exception as error:  # noqa: BLE001 - every decoder error becomes one line
        raise ImageReadError(f"{path}: cannot read image ({type(error).__name__}: {error})") from error
    if mode not in _PIL_MODES:
        raise ImageReadError(f"{path}: image mode {mode!r} is not RGB, RGBA or greyscale (save it as RGB)")
    channels, dtype = _PIL_MODES[mode]
    return ImageHeader(int(height), int(width), channels, np.dtype(dtype))


def read_image_header(path: str | os.PathLike[str]) -> tuple[ImageHeader, bytes]:
    """Read an image's bytes and header without decoding its pixels.

    Args:
        path: a TIFF or PNG image.

    Returns:
        The header and the file's bytes.

    Raises:
        ImageReadError: the file is empty, not an image, truncated, or of a layout the reader
            refuses (see :func:`nucseg.io.images.rgb_conversions`).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageReadError(f"{path}: cannot read ({error.strerror})") from error
    if not data:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    header = _tiff_header(data, path) if path.suffix.lower() in TIFF_SUFFIXES else _pil_header(data, path)
    if header.height < 1 or header.width < 1:
        raise ImageReadError(f"{path}: image of size {header.width}x{header.height}")
    return header, data

