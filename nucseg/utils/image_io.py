"""Moved to ``nucseg.io.images``; these names stay importable from here."""

from nucseg.io.images import (
    ALPHA_DROPPED,
    BINARY_TO_8_BIT,
    GREYSCALE_REPLICATED,
    IMAGE_SUFFIXES,
    SCALED_16_TO_8_BIT,
    SCALED_FLOAT_TO_8_BIT,
    TIFF_SUFFIXES,
    ImageReadError,
    read_image_array,
    read_rgb_image,
    rgb_conversions,
    to_rgb_uint8,
)

__all__ = [
    "ALPHA_DROPPED",
    "BINARY_TO_8_BIT",
    "GREYSCALE_REPLICATED",
    "IMAGE_SUFFIXES",
    "SCALED_16_TO_8_BIT",
    "SCALED_FLOAT_TO_8_BIT",
    "TIFF_SUFFIXES",
    "ImageReadError",
    "read_image_array",
    "read_rgb_image",
    "rgb_conversions",
    "to_rgb_uint8",
]
