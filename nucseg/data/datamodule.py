"""One LightningDataModule for every data set: source → split → stain normalisation → loaders.

The stain normaliser is fitted once on a fixed training image (the reference) and applied to
every image once, through an on-disk cache; its fitted state travels in the checkpoint so that
prediction normalises new images exactly as training did. Training augmentation runs on the
device, in ``on_after_batch_transfer``, after the uint8 batch has been copied there.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from nucseg.data.augment import SegmentationAugmentation
from nucseg.data.datasets import RandomPatchDataset, WholeImageDataset
from nucseg.data.sources import ImageSource, MonusegSource
from nucseg.data.stain import IdentityStainNormalizer, StainNormalizationCache, normalize_images
from nucseg.data.targets import BinaryTarget, Target, build_target
from nucseg.data.types import AnnotatedImage

log = logging.getLogger(__name__)


def split_train_val(
    images: list[AnnotatedImage], num_val_images: int, seed: int
) -> tuple[list[AnnotatedImage], list[AnnotatedImage]]:
    """Hold out ``num_val_images`` whole images, chosen by ``seed`` independent of list order.

    Whole images, never patches, so no tissue is on both sides of the split.
    """
    if not 0 < num_val_images < len(images):
        raise ValueError(
            f"num_val_images must be between 1 and {len(images) - 1} for {len(images)} training images, "
            f"got {num_val_images}"
        )
    names = sorted(image.name for image in images)
    held_out = set(np.random.default_rng(seed).choice(names, size=num_val_images, replace=False).tolist())
    train = [image for image in images if image.name not in held_out]
    val = [image for image in images if image.name in held_out]
    return train, val


class NucleiDataModule(L.LightningDataModule):
    """Nucleus segmentation data: random training crops, whole-image validation and test.

    Args:
        source: an :class:`~nucseg.data.sources.ImageSource` (MoNuSeg or synthetic).
        stain_normalizer: a normaliser with ``fit``/``normalize``/``fingerprint`` (``None``: none).
        stain_reference: name of the training image the normaliser is fitted to (``None``: the
            first training image by name, a fixed choice).
        cache_dir: where normalised images are cached (``None``: no cache).
        num_val_images: whole training images held out for validation.
        split_seed: seed of the train/validation split; kept apart from the training seed so
            that repeated seeds compare models on the same split.
        patch_size: side of the training crops.
        patches_per_image: training crops per image per epoch.
        batch_size: training crops per batch.
        num_workers: DataLoader workers (crops come from memory: 0 is usually fastest).
        augmentation: the device-side training augmentation (``None``: none).
        target: the training target made from the instance labels on the device
            (:mod:`nucseg.data.targets`): a target object, or the options of
            :func:`~nucseg.data.targets.build_target` (``{"name": "contour", ...}``); ``None``:
            binary foreground.
        mpp: pixel size of the images in µm (recorded in the run config, so that ``predict``
            resamples other images to it; not used in training).
    """

    def __init__(
        self,
        source: ImageSource,
        stain_normalizer: Any | None = None,
        stain_reference: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        num_val_images: int = 2,
        split_seed: int = 0,
        patch_size: int = 256,
        patches_per_image: int = 16,
        batch_size: int = 8,
        num_workers: int = 0,
        augmentation: SegmentationAugmentation | None = None,
        target: Target | dict[str, Any] | None = None,
        mpp: float | None = None,
    ) -> None:
        super().__init__()
        self.source = source
        self.mpp = mpp
        self.stain_normalizer = stain_normalizer if stain_normalizer is not None else IdentityStainNormalizer()
        self.stain_reference = stain_reference
        self.cache = StainNormalizationCache(cache_dir) if cache_dir is not None else None
        self.num_val_images = num_val_images
        self.split_seed = split_seed
        self.patch_size = patch_size
        self.patches_per_image = patches_per_image
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augmentation = augmentation
        if target is None:
            target = BinaryTarget()
        elif isinstance(target, Mapping):
            target = build_target(**target)
        self.target = target
        self.train_images: list[AnnotatedImage] = []
        self.val_images: list[AnnotatedImage] = []
        self.test_images: list[AnnotatedImage] = []
        self.preparation_seconds: dict[str, float] = {}

    # -- preparation -------------------------------------------------------------------------
    def _fit_stain_normalizer(self, training_images: list[AnnotatedImage]) -> None:
        if self.stain_normalizer.is_fitted:
            return
        by_name = {image.name: image for image in training_images}
        name = self.stain_reference or min(by_name)
        if name not in by_name:
            raise ValueError(f"stain_reference '{name}' is not a training image; choose one of: {', '.join(sorted(by_name))}")
        self.stain_normalizer.fit(by_name[name].image)
        log.info("stain normaliser fitted to training image %s", name)

    def _normalize(self, images: list[AnnotatedImage]) -> list[AnnotatedImage]:
        return normalize_images(images, self.stain_normalizer, self.cache)

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", "validate", None) and not self.train_images:
            started = time.perf_counter()
            training_images = self.source.load_split("train")
            loaded = time.perf_counter()
            train, val = split_train_val(training_images, self.num_val_images, self.split_seed)
            self._fit_stain_normalizer(training_images)
            self.train_images, self.val_images = self._normalize(train), self._normalize(val)
            self.preparation_seconds.update(
                train_load=loaded - started, train_normalize=time.perf_counter() - loaded
            )
        if stage in ("test", "predict", None) and not self.test_images:
            if not self.stain_normalizer.is_fitted:
                self._fit_stain_normalizer(self.source.load_split("train"))
            started = time.perf_counter()
            test_images = self.source.load_split("test")
            loaded = time.perf_counter()
            self.test_images = self._normalize(test_images)
            self.preparation_seconds.update(test_load=loaded - started, test_normalize=time.perf_counter() - loaded)

    # -- loaders -----------------------------------------------------------------------------
    def _loader(self, dataset: torch.utils.data.Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = RandomPatchDataset(self.train_images, self.patch_size, self.patches_per_image)
        return self._loader(dataset, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(WholeImageDataset(self.val_images), 1, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(WholeImageDataset(self.test_images), 1, shuffle=False)

    # -- device side -------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """uint8 → float in [0, 1] on the device, training-only augmentation there, then targets.

        The instance labels are augmented as float32 ids with nearest sampling (exact), and the
        binary ``mask`` and the training ``target`` are derived from the augmented labels, so a
        rotation never blurs a boundary. Every batch leaves with ``image`` (B, 3, H, W) float,
        ``instance_labels`` (B, 1, H, W) int32, ``mask`` (B, 1, H, W) float in {0, 1} and
        ``target`` (the target's own form, see :mod:`nucseg.data.targets`).
        """
        image = batch["image"].float().div_(255.0)
        labels = batch["instance_labels"].float()
        trainer = self.trainer
        if self.augmentation is not None and trainer is not None and trainer.training:
            image, labels = self.augmentation(image, labels)
        return {
            **batch,
            "image": image,
            "instance_labels": labels.int(),
            "mask": (labels > 0).float(),
            "target": self.target(labels),
        }

    def state_dict(self) -> dict[str, Any]:
        """The fitted stain reference goes into Lightning checkpoints with the data module."""
        return {"stain_normalizer": self.stain_normalizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "stain_normalizer" in state_dict:
            self.stain_normalizer.load_state_dict(state_dict["stain_normalizer"])


class MonusegDataModule(NucleiDataModule):
    """:class:`NucleiDataModule` over MoNuSeg; ``root`` (or ``$MONUSEG_ROOT``) is checked at once.

    Args:
        root: the folder holding ``train/`` and ``test/`` in the official layout.
        **kwargs: the :class:`NucleiDataModule` options.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, **kwargs: Any) -> None:
        super().__init__(source=MonusegSource(root), **kwargs)
