"""The whole training set held on the device, cropped there by index arithmetic.

MoNuSeg's training images fit on any GPU several times over (30 × 1000² × 3 bytes = 90 MB as
uint8), so copying them once and cutting each batch's random crops with one gather on the device
removes the data loader from the step: no worker processes, no pinned staging buffers, no
host-to-device copy per batch. The crops follow :class:`~nucseg.data.datasets.RandomPatchDataset`:
each epoch is a random order of every image repeated ``patches_per_image`` times, each crop at a
uniform random position, uint8 image and int32 instance labels; the DataModule's ``on_after_batch_transfer``
converts and augments them as it does for loader batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from nucseg.data.datasets import _as_tensors
from nucseg.data.types import AnnotatedImage


class DeviceResidentCrops:
    """An iterable of random-crop batches drawn from images stacked in one device tensor.

    Under data parallelism every rank holds the images and takes every ``world_size``-th crop of
    a shared epoch order (the order comes from torch's global generator, which Lightning seeds
    alike on every rank); each rank draws its crop positions from its own generator.

    Args:
        images: prepared training images, all of one size (smaller ones are reflect-padded
            up to ``patch_size``; sizes that still differ are refused).
        patch_size: crop side in pixels.
        patches_per_image: crops per image per epoch.
        batch_size: crops per batch (the last batch of an epoch may be smaller).
        device: where the images live and the crops are cut.
        world_size: number of data-parallel processes.
        rank: this process's global rank.

    Raises:
        ValueError: no images, non-positive sizes, or images of different sizes.
    """

    def __init__(
        self,
        images: list[AnnotatedImage],
        patch_size: int,
        patches_per_image: int,
        batch_size: int,
        device: torch.device | str = "cpu",
        world_size: int = 1,
        rank: int = 0,
    ) -> None:
        if not images:
            raise ValueError("DeviceResidentCrops needs at least one image")
        if min(patch_size, patches_per_image, batch_size) < 1:
            raise ValueError(
                f"patch_size, patches_per_image and batch_size must be positive, got {patch_size}, "
                f"{patches_per_image}, {batch_size}"
            )
        tensors = [_as_tensors(image, min_size=patch_size) for image in images]
        sizes = {tuple(pixels.shape[-2:]) for pixels, _ in tensors}
        if len(sizes) > 1:
            raise ValueError(
                f"data.device_resident=true needs training images of one size, got {sorted(sizes)}; "
                "set data.device_resident=false"
            )
        self.device = torch.device(device)
        self.images = torch.stack([pixels for pixels, _ in tensors]).to(self.device)  # (N, 3, H, W) uint8
        self.instance_labels = torch.stack([labels for _, labels in tensors]).to(self.device)  # (N, 1, H, W) int32
        self.names = [image.name for image in images]
        self.patch_size = patch_size
        self.patches_per_image = patches_per_image
        self.batch_size = batch_size
        self.world_size = max(1, world_size)
        self.rank = rank
        self._offsets = torch.arange(patch_size, device=self.device)

    @property
    def num_crops(self) -> int:
        """Crops this rank draws per epoch."""
        total = len(self.names) * self.patches_per_image
        return len(range(self.rank, total, self.world_size))

    def __len__(self) -> int:
        return -(-self.num_crops // self.batch_size)

    def crop(self, image_index: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> dict[str, object]:
        """The crops at the given (device) image indices and top-left corners, in one gather.

        Args:
            image_index: (B,) int64 indices into the stacked images.
            top: (B,) int64 first rows.
            left: (B,) int64 first columns.

        Returns:
            ``{"image": (B, 3, P, P) uint8, "instance_labels": (B, 1, P, P) int32}`` on the device.
        """
        rows = (top[:, None] + self._offsets)[:, None, :, None]  # (B, 1, P, 1)
        cols = (left[:, None] + self._offsets)[:, None, None, :]  # (B, 1, 1, P)
        batch = image_index[:, None, None, None]
        image = self.images[batch, torch.arange(3, device=self.device)[None, :, None, None], rows, cols]
        labels = self.instance_labels[batch, torch.zeros(1, 1, 1, 1, dtype=torch.long, device=self.device), rows, cols]
        return {"image": image, "instance_labels": labels}

    def __iter__(self) -> Iterator[dict[str, object]]:
        count = len(self.names)
        total = count * self.patches_per_image
        epoch_seed = int(torch.randint(0, 2**62, ()).item())  # the same on every rank
        order = torch.randperm(total, generator=torch.Generator().manual_seed(epoch_seed)) % count
        mine = order[self.rank :: self.world_size]
        positions = torch.Generator().manual_seed(epoch_seed + 1 + self.rank)
        height, width = self.images.shape[-2:]
        for start in range(0, len(mine), self.batch_size):
            image_index = mine[start : start + self.batch_size]
            top = torch.randint(0, height - self.patch_size + 1, image_index.shape, generator=positions)
            left = torch.randint(0, width - self.patch_size + 1, image_index.shape, generator=positions)
            batch = self.crop(*(t.to(self.device, non_blocking=True) for t in (image_index, top, left)))
            yield {**batch, "name": [self.names[i] for i in image_index.tolist()]}
