"""Predict one image file and write its outputs: the unit of work of ``nucseg.predict``.

An image of at most ``stream_above`` pixels is read whole, stain-normalised in one call,
predicted with ``sliding_window_predict`` and written from memory. A larger one is streamed:
TIFFs are read region by region (``TiffRegionReader``), PNG/JPEG are read whole (their formats
cannot be read by region) but everything after reading is streamed. Either way an image gets
one stain transform: a streamed image's source stains are estimated once, on a thumbnail of at
most ``overview_pixels`` pixels, and that fixed transform is applied to every block (see
``streaming.py``), so the result does not depend on how the image is cut into blocks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nucseg.inference.outputs import (
    DEFAULT_SETTINGS,
    OutputPaths,
    PostprocessSettings,
    sigmoid,
    write_outputs,
    write_outputs_streamed,
)
from nucseg.inference.sliding_window import sliding_window_predict
from nucseg.inference.streaming import (
    DEFAULT_OVERVIEW_PIXELS,
    ArrayRegionReader,
    Normalizer,
    TiffRegionReader,
    fixed_stain_transform,
    stream_logits,
)
from nucseg.utils.image_io import TIFF_SUFFIXES, read_rgb_image

DEFAULT_STREAM_ABOVE = 4096 * 4096
TILING_KEYS = ("tile_size", "overlap", "batch_size", "blend", "tta", "amp", "tile_multiple")


@dataclass(frozen=True)
class ImageResult:
    """What happened to one image."""

    path: Path
    height: int
    width: int
    nuclei: int
    streamed: bool
    seconds: float


def predict_file(
    path: str | os.PathLike[str],
    predict_fn: Callable[[torch.Tensor], torch.Tensor],
    paths: OutputPaths,
    normalizer: Any | None = None,
    tiling: dict[str, Any] | None = None,
    settings: PostprocessSettings = DEFAULT_SETTINGS,
    stream_above: int = DEFAULT_STREAM_ABOVE,
    progress: bool = False,
    overview_pixels: int = DEFAULT_OVERVIEW_PIXELS,
) -> ImageResult:
    """Predict ``path`` with ``predict_fn`` and write the outputs listed in ``paths``.

    Args:
        path: A PNG, JPEG or TIFF image (RGB, RGBA, grey; 8 or 16 bit; see ``image_io``).
        predict_fn: (b, 3, h, w) float [0, 1] -> (b, 1, h, w) logits, e.g. a loaded module.
        paths: Output destinations.
        normalizer: The training stain reference (``nucseg.data.stain``), or None to predict
            the pixels as read. In-memory images use its ``normalize(image, name=...)``;
            streamed ones need ``estimate_source`` and ``apply`` as well.
        tiling: ``sliding_window_predict`` settings (tile_size, overlap, batch_size, blend, tta,
            amp, tile_multiple); unknown keys are an error.
        settings: Post-processing settings.
        stream_above: Images with more pixels than this are streamed.
        progress: Show a tqdm bar over tiles.
        overview_pixels: Most pixels of the thumbnail a streamed image's stains are estimated on.

    Raises:
        nucseg.utils.image_io.ImageReadError: The file cannot be read.
        ValueError: Bad settings or an unusable network output.
        TypeError: A streamed image and a normaliser without ``estimate_source``/``apply``.
    """
    path = Path(path)
    tiling = dict(tiling or {})
    unknown = set(tiling) - set(TILING_KEYS)
    if unknown:
        raise ValueError(f"predict: unknown tiling settings {sorted(unknown)}")
    started = time.perf_counter()
    name = str(path)

    if path.suffix.lower() in TIFF_SUFFIXES:
        reader: TiffRegionReader | ArrayRegionReader = TiffRegionReader(path)
    else:
        reader = ArrayRegionReader(read_rgb_image(path), name=name)
    try:
        height, width = reader.height, reader.width
        streamed = height * width > stream_above
        if streamed:
            normalize: Normalizer | None = None
            if normalizer is not None:
                normalize = fixed_stain_transform(reader, normalizer, name, overview_pixels)
            bands = stream_logits(reader, predict_fn, normalize, progress=progress, **tiling)
            nuclei = write_outputs_streamed(reader, bands, paths, settings)
        else:
            image = reader.read(0, 0, height, width)
            normalized = image if normalizer is None else normalizer.normalize(image, name=name)
            tensor = (
                torch.from_numpy(np.require(normalized, requirements=["C", "W"]))
                .permute(2, 0, 1)
                .float()
                .div_(255.0)
            )
            logits = sliding_window_predict(tensor, predict_fn, progress=progress, **tiling)
            nuclei = write_outputs(image, sigmoid(logits[0].numpy()), paths, settings)
    finally:
        reader.close()
    return ImageResult(path, height, width, nuclei, streamed, time.perf_counter() - started)
