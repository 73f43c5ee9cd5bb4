"""Macenko's second half: map pixels from a source image's stains onto the reference's.

The one application function of the package. Training, validation and test images
(``MacenkoStainNormalizer.normalize``), ``nucseg.load(...).predict``, ``evaluate.py`` and every
block of a streamed image (``nucseg.inference.streaming.fixed_stain_transform``) all go through
``apply_stain_transform``; only where the source estimate comes from differs (the image itself,
or a thumbnail of a streamed one).

The transform is torchstain's, evaluated in the same float32 torch operations in the same
order: ``OD = -log((I + 1) / Io)``, ``C = lstsq(HE, OD)``, ``C *= maxCRef / maxC``,
``RGB = min(Io exp(-HERef C), 255)``, truncated to uint8. Applied to a whole image with that
image's own estimate it therefore returns exactly the pixels of torchstain's ``normalize``.
Each pixel's value depends only on its own RGB and the two estimates; with torch's CPU kernels
this holds bit for bit whatever the region and its position (checked on all 2**24 colours, in
any order and chunking), so regions mapped separately join without seams.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from nucseg.data.stain.estimate import StainEstimate, StainNormalizationError, check_rgb_uint8, pixel_tensor

#: Pixels mapped per step (about 100 MB of float32 temporaries), to bound memory on large images.
APPLY_CHUNK_PIXELS = 1 << 20


def apply_stain_transform(
    image: np.ndarray,
    source: StainEstimate | None,
    reference: StainEstimate,
    Io: int,  # noqa: N803 - torchstain's and Macenko's name
    chunk_pixels: int = APPLY_CHUNK_PIXELS,
) -> np.ndarray:
    """Map ``image`` (any region of the estimated image) from ``source`` stains onto ``reference``.

    Args:
        image: (h, w, 3) uint8 RGB.
        source: the stains of the image this region comes from; None (a recorded fallback)
            returns a copy of ``image``.
        reference: the fitted reference stains.
        Io: transmitted light intensity, as used for the estimates.
        chunk_pixels: pixels transformed at once (does not change the result).

    Returns:
        (h, w, 3) uint8, values truncated like torchstain's.

    Raises:
        StainNormalizationError: ``image`` is not RGB uint8, or the transform gives a non-finite
            value (never for estimates that ``StainEstimate`` accepts).
    """
    check_rgb_uint8(image, "stain region")
    if source is None:
        return image.copy()
    source_matrix = torch.from_numpy(source.stain_matrix.copy())
    reference_matrix = torch.from_numpy(reference.stain_matrix.copy())
    scale = torch.from_numpy(reference.max_concentrations.copy()) / torch.from_numpy(source.max_concentrations.copy())
    flat = pixel_tensor(image).reshape(-1, 3)
    output = torch.empty_like(flat)
    with torch.no_grad():
        for start in range(0, flat.shape[0], chunk_pixels):
            pixels = flat[start : start + chunk_pixels]
            optical_density = -torch.log((pixels.float() + 1) / Io)
            concentrations = torch.linalg.lstsq(source_matrix, optical_density.T)[0]
            concentrations *= scale.unsqueeze(-1)
            rgb = Io * torch.exp(-torch.matmul(reference_matrix, concentrations))
            if bool(torch.isnan(rgb).any()):
                raise StainNormalizationError(
                    f"stain transform gives non-finite values (source HE={source.stain_matrix.tolist()}, "
                    f"maxC={source.max_concentrations.tolist()})"
                )
            output[start : start + chunk_pixels] = rgb.clamp_(max=255.0).T.to(torch.uint8)
    return output.reshape(image.shape).numpy()


#: Images with at least this many pixels are mapped through a table of all 2**24 colours: building
#: it costs about what mapping a 4096² image directly costs (2.7 s on 2 cores), a lookup about half
#: of a direct mapping (42 vs 90 ms per 1000² image).
COLOUR_TABLE_MIN_PIXELS = 1 << 24


def colour_table(transform: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``transform`` of every 8-bit RGB colour, as a (2**24, 3) uint8 table indexed by ``r<<16 | g<<8 | b``.

    Exact for a transform whose output pixel depends only on its own RGB, as
    ``apply_stain_transform`` with fixed estimates does (see the module docstring).
    """
    codes = np.arange(1 << 24, dtype=np.uint32)
    colours = np.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255], axis=-1).astype(np.uint8)
    return transform(colours.reshape(4096, 4096, 3)).reshape(-1, 3)


def lookup_colours(image: np.ndarray, table: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 ``image`` mapped through a :func:`colour_table`."""
    check_rgb_uint8(image, "stain region")
    codes = (image[..., 0].astype(np.uint32) << 16) | (image[..., 1].astype(np.uint32) << 8) | image[..., 2]
    return table[codes]
