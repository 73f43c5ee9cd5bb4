"""Pixel size (microns per pixel, "mpp"): read from image metadata, recorded by runs, written to outputs.

A model sees nuclei at the scale it was trained at (MoNuSeg: 40x, 0.25 µm/px); a 20x image
(0.5 µm/px) shows them half as large. ``predict`` therefore compares the input's pixel size with
the model's and resamples. Sources of an input's pixel size, in order of trust:

1. OME-XML ``PhysicalSizeX`` / ``PhysicalSizeY`` (with their ``...Unit``, µm when absent);
2. an Aperio ``ImageDescription`` with ``MPP = 0.2527``;
3. TIFF ``XResolution`` / ``YResolution`` with ``ResolutionUnit`` inch or centimetre;
4. a PNG ``pHYs`` chunk in pixels per metre (Pillow's ``dpi``).

Values outside ``PLAUSIBLE_MPP`` are ignored (logged): most tools write 72, 96 or 300 dpi as a
placeholder (MoNuSeg's TIFFs say 72 dpi, i.e. 353 µm/px), which is no microscope's pixel size.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Pixel size of the MoNuSeg images (40x), assumed for runs whose config has no ``data.mpp``.
DEFAULT_MODEL_MPP = 0.25
#: Range of pixel sizes (µm/px) taken as real: 0.02 (beyond oil immersion) to 20 (a slide overview).
PLAUSIBLE_MPP = (0.02, 20.0)
#: Microns per resolution unit (TIFF ResolutionUnit 2 = inch, 3 = centimetre).
_MICRONS_PER_UNIT = {2: 25_400.0, 3: 10_000.0}
_OME_UNITS = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4}


@dataclass(frozen=True)
class PixelSize:
    """A pixel's width and height in microns, and where they were read from."""

    x_um: float
    y_um: float
    source: str

    @property
    def mpp(self) -> float:
        """The one number used for resampling and units: the pixel width (µm/px)."""
        return self.x_um


def plausible(mpp: float | None) -> bool:
    """Whether ``mpp`` (µm/px) is a microscope's pixel size rather than a placeholder."""
    return mpp is not None and PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]


def read_pixel_size(path: str | os.PathLike[str]) -> PixelSize | None:
    """The pixel size recorded in an image file's metadata, or None when it has none (usable).

    Never raises for odd metadata: a file whose metadata cannot be parsed has no pixel size.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            found = _tiff_pixel_size(path)
        else:
            found = _pillow_pixel_size(path)
    except Exception as error:  # noqa: BLE001 - metadata is optional; the pixels are read elsewhere
        logger.debug("%s: cannot read pixel size metadata (%s)", path, error)
        return None
    if found is None:
        return None
    if not (plausible(found.x_um) and plausible(found.y_um)):
        logger.info(
            "%s: ignoring pixel size %.4g x %.4g µm from %s (outside %s µm/px, a placeholder)",
            path,
            found.x_um,
            found.y_um,
            found.source,
            PLAUSIBLE_MPP,
        )
        return None
    return found


def _tiff_pixel_size(path: Path) -> PixelSize | None:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        if tif.ome_metadata:
            ome = _ome_pixel_size(tif.ome_metadata)
            if ome is not None:
                return ome
        description = page.description or ""
        aperio = re.search(r"\bMPP\s*=\s*([0-9.eE+-]+)", description)
        if aperio:
            mpp = float(aperio.group(1))
            return PixelSize(mpp, mpp, "Aperio ImageDescription MPP")
        tags = page.tags
        if "XResolution" not in tags or "YResolution" not in tags:
            return None
        unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2  # TIFF default: inch
        if unit not in _MICRONS_PER_UNIT:
            return None  # unit "none": an aspect ratio, not a size
        per_unit = _MICRONS_PER_UNIT[unit]
        x, y = _rational(tags["XResolution"].value), _rational(tags["YResolution"].value)
        if not x or not y:
            return None
        return PixelSize(per_unit / x, per_unit / y, "TIFF XResolution/YResolution")


def _ome_pixel_size(xml: str) -> PixelSize | None:
    """PhysicalSizeX/Y of the first OME ``Pixels`` element, converted to µm."""
    pixels = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", xml)
    if not pixels:
        return None
    attributes = dict(re.findall(r'(\w+)="([^"]*)"', pixels.group(0)))
    if "PhysicalSizeX" not in attributes:
        return None
    sizes = []
    for axis in ("X", "Y"):
        value = float(attributes.get(f"PhysicalSize{axis}", attributes["PhysicalSizeX"]))
        unit = attributes.get(f"PhysicalSize{axis}Unit", "µm")
        if unit not in _OME_UNITS:
            return None
        sizes.append(value * _OME_UNITS[unit])
    return PixelSize(sizes[0], sizes[1], "OME-XML PhysicalSizeX/Y")


def _pillow_pixel_size(path: Path) -> PixelSize | None:
    """PNG pHYs (Pillow reports it as dpi); JPEG densities are ignored (almost always 72/96/300)."""
    if path.suffix.lower() != ".png":
        return None
    from PIL import Image

    with Image.open(path) as image:
        dpi = image.info.get("dpi")
    if not dpi or not dpi[0] or not dpi[1]:
        return None
    return PixelSize(25_400.0 / float(dpi[0]), 25_400.0 / float(dpi[1]), "PNG pHYs")


def _rational(value: Any) -> float:
    if isinstance(value, tuple):
        return float(value[0]) / float(value[1]) if value[1] else 0.0
    return float(value)


def model_pixel_size(run_config: Mapping[str, Any] | None, name: str = "model") -> float:
    """The pixel size (µm/px) a run was trained at: ``data.mpp`` of its config.

    Runs from before ``data.mpp`` existed were trained on MoNuSeg (or synthetic images drawn at
    its scale): they get ``DEFAULT_MODEL_MPP`` with a log line.
    """
    data = (run_config or {}).get("data") or {}
    mpp = data.get("mpp")
    if mpp is None:
        logger.warning(
            "%s: run config has no data.mpp; assuming %.2f µm/px (MoNuSeg 40x)", name, DEFAULT_MODEL_MPP
        )
        return DEFAULT_MODEL_MPP
    mpp = float(mpp)
    if not plausible(mpp):
        raise ValueError(f"{name}: data.mpp = {mpp} is not a pixel size in µm/px (expected {PLAUSIBLE_MPP})")
    return mpp


def tiff_resolution(mpp: float | None) -> dict[str, Any]:
    """tifffile ``imwrite`` keywords recording ``mpp`` as pixels per centimetre (nothing when None)."""
    if mpp is None:
        return {}
    per_cm = 10_000.0 / mpp
    return {"resolution": (per_cm, per_cm), "resolutionunit": 3}


__all__ = [
    "DEFAULT_MODEL_MPP",
    "PLAUSIBLE_MPP",
    "PixelSize",
    "model_pixel_size",
    "plausible",
    "read_pixel_size",
    "tiff_resolution",
]
