"""The DataModule: whole-image validation split, crops, device-side conversion and augmentation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from nucseg.data.augment import SegmentationAugmentation
from nucseg.data.datamodule import NucleiDataModule, split_train_val
from nucseg.data.datasets import RandomPatchDataset
from nucseg.data.sources import SyntheticSource
from nucseg.data.stain import build_stain_normalizer
from nucseg.data.synthetic import make_synthetic_set


def test_validation_split_holds_out_whole_images_deterministically():
    images = make_synthetic_set(6, seed=3, size=32)
    train, val = split_train_val(images, 2, seed=0)
    assert len(train) == 4 and len(val) == 2
    assert not {image.name for image in train} & {image.name for image in val}
    again_train, again_val = split_train_val(list(reversed(images)), 2, seed=0)
    assert {image.name for image in again_val} == {image.name for image in val}, "order must not matter"
    with pytest.raises(ValueError, match="num_val_images must be between 1 and 5"):
        split_train_val(images, 6, seed=0)


def test_random_patches_have_the_patch_size_and_come_from_every_image():
    images = make_synthetic_set(3, seed=0, size=40)
    dataset = RandomPatchDataset(images, patch_size=48, patches_per_image=2)  # larger than the images
    assert len(dataset) == 6
    items = [dataset[index] for index in range(len(dataset))]
    assert {item["name"] for item in items} == {image.name for image in images}
    assert all(item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.uint8 for item in items)
    assert all(set(item["mask"].unique().tolist()) <= {0, 1} for item in items)


def _datamodule(tmp_path, **kwargs) -> NucleiDataModule:
    return NucleiDataModule(
        SyntheticSource(num_train_images=4, num_test_images=2, image_size=64, seed=1),
        stain_normalizer=build_stain_normalizer("macenko"),
        cache_dir=tmp_path / "cache",
        num_val_images=1,
        patch_size=32,
        patches_per_image=2,
        batch_size=4,
        **kwargs,
    )


def test_setup_normalises_once_and_a_second_data_module_reads_the_cache(tmp_path):
    first = _datamodule(tmp_path)
    first.setup("fit")
    first.setup("test")
    assert (len(first.train_images), len(first.val_images), len(first.test_images)) == (3, 1, 2)
    assert first.cache.misses == 6 and first.cache.hits == 0
    second = _datamodule(tmp_path)
    second.setup(None)
    assert second.cache.hits == 6 and second.cache.misses == 0
    assert all((a.image == b.image).all() for a, b in zip(first.test_images, second.test_images, strict=True))


def test_batches_become_float_on_the_device_and_only_training_batches_are_augmented(tmp_path):
    datamodule = _datamodule(tmp_path, augmentation=SegmentationAugmentation(hflip_p=1.0, vflip_p=0, rot90_p=0, rotate_p=0))
    image = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).reshape(2, 3, 4, 4)
    mask = (image[:, :1] % 2).to(torch.uint8)
    batch = {"image": image, "mask": mask, "name": ["a", "b"]}
    datamodule.trainer = SimpleNamespace(training=False)
    evaluated = datamodule.on_after_batch_transfer(batch, 0)
    assert evaluated["image"].dtype == torch.float32
    assert torch.allclose(evaluated["image"], image.float() / 255)
    datamodule.trainer = SimpleNamespace(training=True)
    trained = datamodule.on_after_batch_transfer(batch, 0)
    assert torch.allclose(trained["image"], (image.float() / 255).flip(-1))
    assert torch.equal(trained["mask"], mask.float().flip(-1))


def test_state_dict_carries_the_fitted_stain_reference(tmp_path):
    datamodule = _datamodule(tmp_path)
    datamodule.setup("fit")
    restored = _datamodule(tmp_path)
    restored.load_state_dict(datamodule.state_dict())
    assert restored.stain_normalizer.is_fitted
    assert restored.stain_normalizer.fingerprint() == datamodule.stain_normalizer.fingerprint()


def test_unknown_stain_reference_lists_the_training_images(tmp_path):
    datamodule = _datamodule(tmp_path, stain_reference="not_an_image")
    with pytest.raises(ValueError, match="stain_reference 'not_an_image' is not a training image; choose one of: synthetic_train_0000"):
        datamodule.setup("fit")
