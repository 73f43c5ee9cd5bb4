"""Reading images of the kinds pathologists have (TIFF, PNG, JPEG) into one RGB uint8 form.

Handling, documented once for every reader in the package:
- RGB is returned as is; RGBA drops the alpha channel; greyscale (H, W) or (H, W, 1) is
  replicated to three channels.
- 16-bit images are scaled to 8 bit by ``value * 255 / 65535`` (rounded), floating point images
  in [0, 1] by ``value * 255``; other ranges are an error rather than a silent clip.
- A file that cannot be read raises ``ImageReadError`` naming the file and the problem.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

TIFF_SUFFIXES = {".tif", ".tiff"}
IMAGE_SUFFIXES = TIFF_SUFFIXES | {".png", ".jpg", ".jpeg"}


# What ``to_rgb_uint8`` changes, by name: the data check counts these so none passes silently.
ALPHA_DROPPED = "alpha_dropped"
GREYSCALE_REPLICATED = "greyscale_replicated"
SCALED_16_TO_8_BIT = "scaled_16_to_8_bit"
SCALED_FLOAT_TO_8_BIT = "scaled_float_to_8_bit"
BINARY_TO_8_BIT = "binary_to_8_bit"


class ImageReadError(ValueError):
    """An image file is missing, corrupt or of a layout we cannot interpret."""


def rgb_conversions(channels: int, dtype: np.dtype | type, source: str = "<array>") -> tuple[str, ...]:
    """Name what ``to_rgb_uint8`` will change in an image with ``channels`` samples of ``dtype``.

    Works from a header alone (no pixels), so a data check can list conversions cheaply.

    Args:
        channels: samples per pixel (1 greyscale, 3 RGB, 4 RGBA).
        dtype: the pixel type.
        source: named in the error.

    Returns:
        The conversion names (constants of this module); empty for 8-bit RGB.

    Raises:
        ImageReadError: a layout ``to_rgb_uint8`` refuses (2 or more than 4 channels, or a pixel
            type other than unsigned 8/16 bit, bool or float).
    """
    dtype = np.dtype(dtype)
    if channels not in (1, 3, 4):
        raise ImageReadError(f"{source}: expected an RGB, RGBA or greyscale image, got {channels} channels")
    changes = []
    if channels == 1:
        changes.append(GREYSCALE_REPLICATED)
    elif channels == 4:
        changes.append(ALPHA_DROPPED)
    if dtype == np.uint16:
        changes.append(SCALED_16_TO_8_BIT)
    elif dtype == np.bool_:
        changes.append(BINARY_TO_8_BIT)
    elif np.issubdtype(dtype, np.floating):
        changes.append(SCALED_FLOAT_TO_8_BIT)
    elif dtype != np.uint8:
        raise ImageReadError(f"{source}: unsupported pixel type {dtype}")
    return tuple(changes)


def read_image_array(path: str | os.PathLike[str]) -> np.ndarray:
    """Read the raw pixel array of ``path`` (TIFF through tifffile, others through Pillow)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            return np.asarray(tifffile.imread(path))
        from PIL import Image

        with Image.open(path) as opened:
            return np.asarray(opened)
    except ImageReadError:
        raise
    except Exception as error:  # noqa: BLE001 - every decoder error becomes one clear line
        raise ImageReadError(f"{path}: cannot read image ({type(error).__name__}: {error})") from error


def to_rgb_uint8(pixels: np.ndarray, source: str = "<array>") -> np.ndarray:
    """Convert a pixel array to (H, W, 3) uint8 following the rules in the module docstring."""
    array = np.asarray(pixels)
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
        array = np.moveaxis(array, 0, -1)  # planar (C, H, W) TIFF
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ImageReadError(f"{source}: expected an RGB, RGBA or greyscale image, got shape {array.shape}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    elif array.shape[-1] == 4:
        array = array[..., :3]
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.uint16:
        return np.round(array.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        low, high = float(np.nanmin(array)), float(np.nanmax(array))
        if low < 0.0 or high > 1.0:
            raise ImageReadError(f"{source}: floating point image outside [0, 1] (range {low:.3g}..{high:.3g})")
        return np.round(array * 255.0).astype(np.uint8)
    raise ImageReadError(f"{source}: unsupported pixel type {array.dtype}")


def read_rgb_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read ``path`` as an (H, W, 3) uint8 RGB image."""
    return to_rgb_uint8(read_image_array(path), source=str(path))
