"""Training augmentation on the device (Kornia), applied to image and mask with one random draw.

Why on the device: patches arrive on the GPU in ``on_after_batch_transfer``; augmenting there
keeps the data loader workers cheap, and Kornia draws each geometric transform once per sample
for image and mask together (``AugmentationSequential`` with ``data_keys=["input", "mask"]``),
so the two can never drift apart.

Rules, documented once:

- Order: horizontal flip, vertical flip, rotation by a multiple of 90 degrees, rotation by an
  arbitrary angle, isotropic zoom, then HED stain jitter (image only). Each step is drawn per
  sample with its own probability; a step with ``p = 0`` is not built at all.
- ``rot90_p``: the step runs with this probability and then turns by ``k * 90`` degrees with
  ``k`` uniform in {0, 1, 2, 3} (albumentations' ``RandomRotate90`` convention), so with
  ``hflip_p = 0.5`` and ``rot90_p = 1`` every one of the eight flips/rotations of the square is
  equally likely. Patches should be square: a non-square patch keeps its (H, W) and loses
  corners.
- Arbitrary rotation (``RandomAffine`` with an angle uniform in ``[-rotate_degrees,
  rotate_degrees]``): the corners that come from outside the patch are filled by **reflection**
  in the image *and* in the mask (Kornia uses the same padding flag for both), so a nucleus
  mirrored into a corner is mirrored in the mask too and the pair stays consistent.
- Zoom (``RandomAffine`` with a factor uniform in ``scale_range``, centred) changes the
  apparent nucleus size, which differs between organs; corners a zoom-out uncovers are filled by
  reflection, as for rotation.
- The image is resampled bilinearly and clamped to [0, 1]; the mask is resampled nearest, so
  every output value is one of the input's: a binary mask stays binary and a map of instance
  ids (float32, exact below 2**24) keeps exact ids, from which the data module derives the
  training target after augmentation. Reflection padding can mirror a nucleus into a corner
  under the same id as the original.
- HED jitter (Tellez et al. 2018): RGB -> optical density -> H, E, DAB concentrations with the
  Ruifrok & Johnston (2001) matrix; each of the three channels of a selected sample becomes
  ``c * (1 + a) + b`` with ``a, b ~ U(-sigma, sigma)``; then back to RGB.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import Tensor

# Ruifrok & Johnston (2001) stain vectors (rows: haematoxylin, eosin, DAB) in RGB optical density.
_RGB_FROM_HED = torch.tensor(
    [[0.650, 0.704, 0.286], [0.072, 0.990, 0.105], [0.268, 0.570, 0.776]], dtype=torch.float64
)
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)
# Intensities below this are treated as this value, so the optical density stays finite.
_MIN_INTENSITY = 1e-6


def rgb_to_hed(image: Tensor) -> Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 3, H, W) H, E, DAB stain concentrations."""
    optical_density = -torch.log(image.clamp(min=_MIN_INTENSITY))
    matrix = _HED_FROM_RGB.to(device=image.device, dtype=image.dtype)
    return torch.einsum("bchw,cd->bdhw", optical_density, matrix)


def hed_to_rgb(stains: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_hed`, clamped to [0, 1]."""
    matrix = _RGB_FROM_HED.to(device=stains.device, dtype=stains.dtype)
    optical_density = torch.einsum("bdhw,dc->bchw", stains, matrix)
    return torch.exp(-optical_density).clamp(0.0, 1.0)


def hed_jitter(image: Tensor, p: float, sigma: float) -> Tensor:
    """Scale and shift the H, E and DAB channels of each selected sample by random amounts.

    Args:
        image: (B, 3, H, W) RGB in [0, 1].
        p: probability that a sample is jittered.
        sigma: half width of the uniform scale (around 1) and shift (around 0) draws.

    Returns:
        The jittered image, same shape, dtype and device; unselected samples are untouched.
    """
    batch = image.shape[0]
    selected = torch.rand(batch, device=image.device) < p
    if not bool(selected.any()):
        return image
    stains = rgb_to_hed(image[selected])
    count = stains.shape[0]
    scale = 1.0 + (torch.rand(count, 3, 1, 1, device=image.device, dtype=image.dtype) * 2.0 - 1.0) * sigma
    shift = (torch.rand(count, 3, 1, 1, device=image.device, dtype=image.dtype) * 2.0 - 1.0) * sigma
    result = image.clone()
    result[selected] = hed_to_rgb(stains * scale + shift)
    return result


class SegmentationAugmentation(torch.nn.Module):
    """Random flips, rotations and optional HED stain jitter for (image, mask) training batches.

    Args:
        hflip_p: probability of a horizontal flip.
        vflip_p: probability of a vertical flip.
        rot90_p: probability of the rotation by ``k * 90`` degrees, ``k`` uniform in {0, 1, 2, 3}.
        rotate_p: probability of a rotation by an angle uniform in ``[-rotate_degrees, rotate_degrees]``.
        rotate_degrees: largest angle of that rotation.
        scale_p: probability of an isotropic zoom by a factor uniform in ``scale_range``.
        scale_range: (smallest, largest) zoom factor; 1 keeps the size.
        hed_jitter_p: probability of HED stain jitter per sample (0 turns it off).
        hed_jitter_sigma: strength of the HED jitter (see :func:`hed_jitter`).
    """

    def __init__(
        self,
        hflip_p: float = 0.5,
        vflip_p: float = 0.5,
        rot90_p: float = 0.5,
        rotate_p: float = 0.5,
        rotate_degrees: float = 180.0,
        scale_p: float = 0.0,
        scale_range: tuple[float, float] = (0.8, 1.25),
        hed_jitter_p: float = 0.0,
        hed_jitter_sigma: float = 0.05,
    ) -> None:
        super().__init__()
        for label, value in (("hflip_p", hflip_p), ("vflip_p", vflip_p), ("rot90_p", rot90_p),
                             ("rotate_p", rotate_p), ("scale_p", scale_p), ("hed_jitter_p", hed_jitter_p)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"SegmentationAugmentation: {label}={value} is not a probability in [0, 1]")
        if not 0.0 <= rotate_degrees <= 360.0:
            raise ValueError(f"SegmentationAugmentation: rotate_degrees={rotate_degrees} is not in [0, 360]")
        smallest, largest = (float(value) for value in scale_range)
        if not 0.0 < smallest <= largest:
            raise ValueError(f"SegmentationAugmentation: scale_range={tuple(scale_range)} is not 0 < smallest <= largest")
        if not 0.0 <= hed_jitter_sigma < 1.0:
            raise ValueError(
                f"SegmentationAugmentation: hed_jitter_sigma={hed_jitter_sigma} is not in [0, 1)"
            )
        self.hed_jitter_p = float(hed_jitter_p)
        self.hed_jitter_sigma = float(hed_jitter_sigma)

        steps: list[torch.nn.Module] = []
        if hflip_p > 0:
            steps.append(K.RandomHorizontalFlip(p=hflip_p))
        if vflip_p > 0:
            steps.append(K.RandomVerticalFlip(p=vflip_p))
        if rot90_p > 0:
            # ``times`` is drawn uniformly and rounded: (-1.5, 2.5) gives -1, 0, 1, 2 equally often.
            steps.append(K.RandomRotation90(times=(-1.5, 2.5), align_corners=True, p=rot90_p))
        if rotate_p > 0 and rotate_degrees > 0:
            rotate = K.RandomAffine(
                degrees=rotate_degrees, padding_mode="reflection", align_corners=True, p=rotate_p
            )
            steps.append(rotate)
        if scale_p > 0 and (smallest, largest) != (1.0, 1.0):
            zoom = K.RandomAffine(
                degrees=0.0, scale=(smallest, largest), padding_mode="reflection", align_corners=True, p=scale_p
            )
            steps.append(zoom)
        self.geometric = K.AugmentationSequential(*steps, data_keys=["input", "mask"]) if steps else None

    def forward(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Augment a batch; one random draw per sample is shared by image and mask.

        Args:
            image: (B, 3, H, W) float RGB in [0, 1].
            mask: (B, 1, H, W): a binary mask, or instance ids (0 = background) below 2**24.

        Returns:
            ``(image, mask)`` with the input shapes, the image's dtype and device; image in
            [0, 1], mask holding only values of the input mask (nearest sampling).
        """
        _check_batch(image, mask)
        mask = mask.float()
        if self.geometric is not None:
            image, mask = self.geometric(image, mask)
        if self.hed_jitter_p > 0:
            image = hed_jitter(image, self.hed_jitter_p, self.hed_jitter_sigma)
        return image.clamp(0.0, 1.0), mask


def _check_batch(image: Tensor, mask: Tensor) -> None:
    """One-line errors for batches that do not follow the tensor contract."""
    if image.ndim != 4 or image.shape[1] != 3 or not image.is_floating_point():
        raise ValueError(
            "SegmentationAugmentation: image must be (B, 3, H, W) float, "
            f"got {tuple(image.shape)} {image.dtype}"
        )
    expected = (image.shape[0], 1, *image.shape[2:])
    if tuple(mask.shape) != expected:
        raise ValueError(
            f"SegmentationAugmentation: mask must be (B, 1, H, W) = {expected} to match the image, "
            f"got {tuple(mask.shape)}"
        )
