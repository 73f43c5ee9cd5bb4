"""Macenko's first half: the stain matrix and stain strengths of an image, estimated by torchstain.

An estimate is two numbers per stain: its optical-density vector (a column of the 3x2
``stain_matrix``: haematoxylin, then eosin) and its 99th-percentile concentration. The reference
the normaliser is fitted to and the source image being normalised are both described this way;
``nucseg.data.stain.apply`` maps one onto the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


class StainNormalizationError(ValueError):
    """A normaliser cannot be fitted, is used before fitting, or gets an invalid image or state."""


def check_rgb_uint8(image: np.ndarray, name: str) -> None:
    """Raise a one-line error unless ``image`` is (H, W, 3) uint8.

    Raises:
        StainNormalizationError: naming ``name`` and the shape and dtype found.
    """
    valid = isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[-1] == 3
    if not valid or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise StainNormalizationError(f"{name}: expected an (H, W, 3) uint8 RGB image, got {shape} {dtype}")


def pixel_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 numpy -> the same pixels as a contiguous uint8 tensor (shared when possible).

    A read-only array (``np.asarray`` of a PIL image, a memory map) is copied: torch cannot
    share it without warning.
    """
    pixels = np.ascontiguousarray(image)
    return torch.from_numpy(pixels if pixels.flags.writeable else pixels.copy())


@dataclass(frozen=True, eq=False)
class StainEstimate:
    """The stains of one image: of the fitted reference, or of a source image to be mapped onto it.

    Kept apart from the pixels so that a large image is estimated once (from a thumbnail) and
    every region of it is then mapped with the same transform. Values are held in float32,
    torchstain's precision, so that a reference saved as plain floats reloads exactly.

    Attributes:
        stain_matrix: (3, 2) float32, optical density of haematoxylin (column 0) and eosin (1).
        max_concentrations: (2,) float32, the 99th-percentile concentration of each stain.

    Raises:
        StainNormalizationError: wrong shapes, non-finite values or a concentration <= 0.
    """

    stain_matrix: np.ndarray
    max_concentrations: np.ndarray

    def __post_init__(self) -> None:
        try:
            matrix = np.array(self.stain_matrix, dtype=np.float32)
            concentrations = np.array(self.max_concentrations, dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise StainNormalizationError(f"stain estimate: not numeric ({error})") from error
        if matrix.shape != (3, 2) or concentrations.shape != (2,):
            raise StainNormalizationError(
                f"stain estimate: expected a 3x2 stain matrix and 2 concentrations, "
                f"got {matrix.shape} and {concentrations.shape}"
            )
        finite = np.isfinite(matrix).all() and np.isfinite(concentrations).all()
        if not (finite and (concentrations > 0).all()):
            raise StainNormalizationError(
                f"stain estimate: degenerate (HE={matrix.tolist()}, maxC={concentrations.tolist()})"
            )
        matrix.flags.writeable = concentrations.flags.writeable = False
        object.__setattr__(self, "stain_matrix", matrix)
        object.__setattr__(self, "max_concentrations", concentrations)


def tissue_pixels(image: np.ndarray, Io: int, beta: float) -> int:  # noqa: N803 - torchstain's name
    """Pixels whose optical density is at least ``beta`` in every channel (torchstain's rule)."""
    # OD = -log((I + 1) / Io) >= beta  <=>  I <= Io * exp(-beta) - 1, so no logarithms are needed.
    threshold = Io * math.exp(-beta) - 1.0
    return int(np.count_nonzero((image <= threshold).all(axis=-1)))


def estimation_sample(image: np.ndarray, max_pixels: int) -> np.ndarray:
    """``image``, or above ``max_pixels`` a regular subsample (every k-th pixel) of about that many.

    Why: torchstain's estimate needs about 100 bytes per pixel, and the stain statistics of a
    regular subsample are those of the image.
    """
    pixels = image.shape[0] * image.shape[1]
    if pixels <= max_pixels:
        return image
    stride = math.ceil(math.sqrt(pixels / max_pixels))
    return np.ascontiguousarray(image[::stride, ::stride])


def estimate_stains(image: np.ndarray, Io: int, alpha: float, beta: float) -> StainEstimate:  # noqa: N803
    """torchstain's Macenko estimate (torch backend) of ``image``'s stains.

    Args:
        image: (H, W, 3) uint8 RGB; all its pixels are used (see ``estimation_sample``).
        Io: transmitted light intensity.
        alpha: percentile (in %) of the stain-angle distribution taken as the extreme stain vectors.
        beta: optical density below which a pixel counts as background.

    Returns:
        The stain matrix and 99th-percentile concentrations torchstain finds.

    Raises:
        IndexError: torchstain found no tissue pixels (``kthvalue`` on an empty selection).
        RuntimeError: a ``torch.linalg`` step failed.
        StainNormalizationError: the estimate is degenerate (non-finite, or a concentration <= 0).
    """
    import torchstain

    estimator = torchstain.normalizers.MacenkoNormalizer(backend="torch")
    chw = pixel_tensor(image).permute(2, 0, 1)
    with torch.no_grad():
        estimator.fit(chw, Io=Io, alpha=alpha, beta=beta)
    return StainEstimate(estimator.HERef.detach().cpu().numpy(), estimator.maxCRef.detach().cpu().numpy())
