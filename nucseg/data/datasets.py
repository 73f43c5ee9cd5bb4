"""Torch datasets over prepared (stain-normalised) images.

Training draws random crops; validation and test return whole images so that metrics are
computed at full resolution after sliding-window prediction. Images stay uint8 on the CPU side
(four times less to copy); the DataModule converts to float on the device.

Items carry the instance labels, (1, H, W) int32 with ids renumbered 1..N per image, never a
derived mask: the device augments the label map with nearest sampling (ids stay exact in
float32 below 2**24) and derives the training target from it afterwards
(:mod:`nucseg.data.targets`). Validation and test items carry them too, for instance metrics.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from nucseg.data.targets import MAX_EXACT_FLOAT32_ID
from nucseg.data.types import AnnotatedImage


def sequential_labels(image: AnnotatedImage) -> np.ndarray:
    """The image's instance labels renumbered 1..N (int32), 0 staying background.

    Raises:
        ValueError: the image has so many nuclei that ids would not stay exact in float32.
    """
    ids, inverse = np.unique(image.instance_labels, return_inverse=True)
    if ids[0] != 0:
        inverse = inverse + 1
    count = int(inverse.max()) if inverse.size else 0
    if count >= MAX_EXACT_FLOAT32_ID:
        raise ValueError(f"{image.name}: {count} instances; at most {MAX_EXACT_FLOAT32_ID - 1} survive augmentation exactly")
    return inverse.reshape(image.instance_labels.shape).astype(np.int32)


def _as_tensors(image: AnnotatedImage, min_size: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, H, W) uint8 image and (1, H, W) int32 instance labels, reflect-padded up to ``min_size``."""
    pixels, labels = image.image, sequential_labels(image)
    pad_rows = max(0, min_size - pixels.shape[0])
    pad_cols = max(0, min_size - pixels.shape[1])
    if pad_rows or pad_cols:
        widths = ((0, pad_rows), (0, pad_cols))
        pixels = np.pad(pixels, (*widths, (0, 0)), mode="symmetric")
        labels = np.pad(labels, widths, mode="symmetric")
    image_tensor = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
    return image_tensor, torch.from_numpy(np.ascontiguousarray(labels[None]))


class RandomPatchDataset(Dataset):
    """``patches_per_image`` random square crops of each image per epoch.

    Crop positions come from torch's global generator, which Lightning seeds (``seed_everything``)
    for the main process and for each worker, so a seeded run draws the same crops.

    Args:
        images: prepared training images.
        patch_size: crop side in pixels; smaller images are reflect-padded up to it.
        patches_per_image: crops per image per epoch (the epoch length is their product).
    """

    def __init__(self, images: list[AnnotatedImage], patch_size: int, patches_per_image: int) -> None:
        if not images:
            raise ValueError("RandomPatchDataset needs at least one image")
        if patch_size < 1 or patches_per_image < 1:
            raise ValueError(f"patch_size and patches_per_image must be positive, got {patch_size}, {patches_per_image}")
        self.patch_size = patch_size
        self.patches_per_image = patches_per_image
        self.names = [image.name for image in images]
        self._tensors = [_as_tensors(image, min_size=patch_size) for image in images]

    def __len__(self) -> int:
        return len(self._tensors) * self.patches_per_image

    def __getitem__(self, index: int) -> dict[str, object]:
        image_index = index % len(self._tensors)  # interleave images within an epoch
        pixels, labels = self._tensors[image_index]
        height, width = pixels.shape[-2:]
        top = int(torch.randint(0, height - self.patch_size + 1, ()).item())
        left = int(torch.randint(0, width - self.patch_size + 1, ()).item())
        rows, cols = slice(top, top + self.patch_size), slice(left, left + self.patch_size)
        return {"image": pixels[:, rows, cols], "instance_labels": labels[:, rows, cols], "name": self.names[image_index]}


class WholeImageDataset(Dataset):
    """Whole images with their instance labels, for validation and test (batch size 1 when sizes differ)."""

    def __init__(self, images: list[AnnotatedImage]) -> None:
        self.names = [image.name for image in images]
        self._tensors = [_as_tensors(image) for image in images]

    def __len__(self) -> int:
        return len(self._tensors)

    def __getitem__(self, index: int) -> dict[str, object]:
        pixels, labels = self._tensors[index]
        return {"image": pixels, "instance_labels": labels, "name": self.names[index]}
