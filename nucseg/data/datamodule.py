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
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from nucseg.data.augment import SegmentationAugmentation
from nucseg.data.datasets import RandomPatchDataset, WholeImageDataset
from nucseg.data.device_dataset import DeviceResidentCrops
from nucseg.data.samplers import evaluation_sampler
from nucseg.data.sources import ImageSource, MonusegSource
from nucseg.data.splits import VAL_STRATEGIES, SplitError, SplitProtocol, choose_validation, load_protocol
from nucseg.data.stain import IdentityStainNormalizer, StainNormalizationCache, normalize_images
from nucseg.data.targets import BinaryTarget, Target, build_target
from nucseg.data.types import AnnotatedImage

log = logging.getLogger(__name__)


def split_train_val(
    images: list[AnnotatedImage], num_val_images: int, seed: int, **options: Any
) -> tuple[list[AnnotatedImage], list[AnnotatedImage]]:
    """Hold out whole images for validation, chosen independent of list order.

    Whole images, never patches, so no tissue is on both sides of the split. The choice is made
    on names by :func:`nucseg.data.splits.choose_validation`, which takes ``options``
    (``strategy``, ``organs``, ``proposed``, ``num_folds``, ``fold``); without them it is the
    seeded random choice of ``num_val_images`` images.

    Raises:
        SplitError: an option out of range or a strategy without its data (a ValueError).
    """
    names = [image.name for image in images]
    held_out = set(choose_validation(names, num_val_images=num_val_images, seed=seed, **options))
    train = [image for image in images if image.name not in held_out]
    val = [image for image in images if image.name in held_out]
    return train, val


def _select(images: list[AnnotatedImage], names: Sequence[str], role: str, protocol: SplitProtocol) -> list[AnnotatedImage]:
    """The images of a protocol list, in the source's order; a name the source lacks is an error."""
    by_name = {image.name: image for image in images}
    missing = sorted(set(names) - set(by_name))
    if missing:
        where = protocol.info.get("split_file", f"data.split={protocol.name}")
        raise SplitError(f"{where}: {role} image(s) missing from the training folder: {', '.join(missing)}")
    wanted = set(names)
    return [image for image in images if image.name in wanted]


class NucleiDataModule(L.LightningDataModule):
    """Nucleus segmentation data: random training crops, whole-image validation and test.

    Args:
        source: an :class:`~nucseg.data.sources.ImageSource` (MoNuSeg or synthetic).
        stain_normalizer: a normaliser with ``fit``/``normalize``/``fingerprint`` (``None``: none).
        stain_reference: name of the training image the normaliser is fitted to (``None``: the
            first training image by name, a fixed choice).
        cache_dir: where normalised images are cached (``None``: no cache).
        num_val_images: whole training images held out for validation.
        split_seed: seed of the train/validation split (and of the folds); kept apart from the
            training seed so that repeated seeds compare models on the same split.
        protocol: which images train and test (:func:`nucseg.data.splits.load_protocol`;
            ``None``: the source's train and test splits, no organ map).
        val_strategy: ``"random"`` (seeded), ``"organ"`` (one image per organ in turn),
            ``"file"`` (the split file's proposal) or ``"auto"`` (``organ`` for the Kumar
            protocol, ``random`` otherwise).
        num_folds: k-fold cross-validation over the protocol's training images (folds stratified
            by organ when an organ map is known); ``None``: one split by ``val_strategy``.
        fold: the fold (0..k-1) held out for validation when ``num_folds`` is set.
        patch_size: side of the training crops.
        patches_per_image: training crops per image per epoch.
        batch_size: training crops per batch.
        num_workers: DataLoader workers (crops come from memory: 0 is usually fastest).
        augmentation: the device-side training augmentation (``None``: none).
        pin_memory: page-locked loader batches for faster copies to a GPU (``None``: when CUDA
            is available).
        persistent_workers: keep loader workers alive between epochs (with ``num_workers > 0``).
        device_resident: hold the training images in one uint8 tensor on the device and cut
            the crops there (:class:`~nucseg.data.device_dataset.DeviceResidentCrops`): no
            loader workers and no per-batch copy; needs training images of one size.
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
        protocol: SplitProtocol | None = None,
        val_strategy: str = "auto",
        num_folds: int | None = None,
        fold: int = 0,
        patch_size: int = 256,
        patches_per_image: int = 16,
        batch_size: int = 8,
        num_workers: int = 0,
        augmentation: SegmentationAugmentation | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        device_resident: bool = False,
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
        self._init_protocol(protocol, val_strategy, num_folds, fold)
        self.patch_size = patch_size
        self.patches_per_image = patches_per_image
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augmentation = augmentation
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.device_resident = device_resident
        if target is None:
            target = BinaryTarget()
        elif isinstance(target, Mapping):
            target = build_target(**target)
        self.target = target
        self.train_images: list[AnnotatedImage] = []
        self.val_images: list[AnnotatedImage] = []
        self.test_images: list[AnnotatedImage] = []
        self.preparation_seconds: dict[str, float] = {}

    # -- protocol and validation split --------------------------------------------------------
    def _init_protocol(
        self, protocol: SplitProtocol | None, val_strategy: str, num_folds: int | None, fold: int
    ) -> None:
        """Check the split options at once and describe them in ``self.protocol``."""
        self.split_protocol = protocol if protocol is not None else SplitProtocol()
        if val_strategy not in VAL_STRATEGIES:
            raise SplitError(f"unknown data.val_strategy '{val_strategy}'; expected one of {', '.join(VAL_STRATEGIES)}")
        if val_strategy == "auto":
            val_strategy = "organ" if self.split_protocol.name == "kumar" else "random"
        if num_folds is not None and not 0 <= fold < num_folds:
            raise SplitError(f"data.fold must be between 0 and {num_folds - 1} for data.num_folds={num_folds}, got {fold}")
        self.val_strategy, self.num_folds, self.fold = val_strategy, num_folds, fold
        #: test subset -> test image names ({} when the protocol's test set has no subsets)
        self.test_subsets: dict[str, list[str]] = {k: list(v) for k, v in self.split_protocol.test_subsets.items()}
        #: the protocol as a results file records it; image lists filled by ``setup``
        self.protocol: dict[str, Any] = {
            **self.split_protocol.info,
            "val_strategy": "folds" if num_folds is not None else val_strategy,
            "num_val_images": None if num_folds is not None else self.num_val_images,
            "num_folds": num_folds,
            "fold": fold if num_folds is not None else None,
            "split_seed": self.split_seed,
            "test_subsets": self.test_subsets,
        }

    def _protocol_training(self, training_folder: list[AnnotatedImage]) -> list[AnnotatedImage]:
        names = self.split_protocol.train_names
        return training_folder if names is None else _select(training_folder, names, "train", self.split_protocol)

    def _protocol_test(self, training_folder: list[AnnotatedImage] | None) -> list[AnnotatedImage]:
        names = self.split_protocol.test_names
        if names is None:
            return self.source.load_split("test")
        return _select(training_folder or self.source.load_split("train"), names, "test", self.split_protocol)

    def _split_validation(self, training: list[AnnotatedImage]) -> tuple[list[AnnotatedImage], list[AnnotatedImage]]:
        """The source's own validation images when it names them (``validation_names()``, e.g. a
        folder's splits.json), else the protocol's validation strategy."""
        names_of = getattr(self.source, "validation_names", None)
        named = names_of() if callable(names_of) else None
        if named:
            held_out = set(named)
            return [i for i in training if i.name not in held_out], [i for i in training if i.name in held_out]
        return split_train_val(
            training,
            self.num_val_images,
            self.split_seed,
            strategy=self.val_strategy,
            organs=self.split_protocol.organs or None,
            proposed=self.split_protocol.proposed_val,
            num_folds=self.num_folds,
            fold=self.fold,
        )

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
            training_images = self._protocol_training(self.source.load_split("train"))
            loaded = time.perf_counter()
            train, val = self._split_validation(training_images)
            self.protocol.update(train_images=[i.name for i in train], val_images=[i.name for i in val])
            self._fit_stain_normalizer(training_images)
            self.train_images, self.val_images = self._normalize(train), self._normalize(val)
            self.preparation_seconds.update(
                train_load=loaded - started, train_normalize=time.perf_counter() - loaded
            )
        if stage in ("test", "predict", None) and not self.test_images:
            training_folder = None
            if not self.stain_normalizer.is_fitted:
                training_folder = self.source.load_split("train")
                self._fit_stain_normalizer(self._protocol_training(training_folder))
            started = time.perf_counter()
            test_images = self._protocol_test(training_folder)
            self.protocol.update(test_images=[i.name for i in test_images])
            loaded = time.perf_counter()
            self.test_images = self._normalize(test_images)
            self.preparation_seconds.update(test_load=loaded - started, test_normalize=time.perf_counter() - loaded)

    # -- loaders -----------------------------------------------------------------------------
    def _distribution(self) -> tuple[int, int]:
        """(world size, global rank) of the attached trainer; (1, 0) without one."""
        if self.trainer is None:
            return 1, 0
        return self.trainer.world_size, self.trainer.global_rank

    def _loader(self, dataset: torch.utils.data.Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        """A loader with this module's worker options; evaluation loaders (``shuffle=False``) get a
        sampler that splits whole images over the ranks without repeating one."""
        sampler = None if shuffle else evaluation_sampler(dataset, *self._distribution())
        pin_memory = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            pin_memory=pin_memory,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader | DeviceResidentCrops:
        if self.device_resident:
            world_size, rank = self._distribution()
            device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
            return DeviceResidentCrops(
                self.train_images, self.patch_size, self.patches_per_image, self.batch_size,
                device=device, world_size=world_size, rank=rank,
            )
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
        annotation_rule: ``"organisers"`` (official ground truth) or ``"centre"`` (earlier fill,
            for side-by-side scoring); see :class:`~nucseg.data.sources.MonusegSource`.
        split: ``"official"`` (30 train / 14 test) or ``"kumar"`` (16 train / 8 same-organ +
            6 different-organ test, all from the training folder; ``<root>/splits/kumar.json``).
        kumar_list: ``"hovernet"`` or ``"alternative"``: which of the file's Kumar lists.
        **kwargs: the :class:`NucleiDataModule` options.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        annotation_rule: str = "organisers",
        split: str = "official",
        kumar_list: str = "hovernet",
        **kwargs: Any,
    ) -> None:
        source = MonusegSource(root, annotation_rule=annotation_rule)
        protocol = load_protocol(split, source.root / "splits", kumar_list)
        super().__init__(source=source, protocol=protocol, **kwargs)
