"""The DataModule: whole-image validation split, crops, device-side conversion and augmentation."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nucseg.data.augment import SegmentationAugmentation
from nucseg.data.datamodule import NucleiDataModule, split_train_val
from nucseg.data.datasets import RandomPatchDataset, WholeImageDataset
from nucseg.data.sources import SyntheticSource
from nucseg.data.stain import build_stain_normalizer
from nucseg.data.synthetic import make_synthetic_set
from nucseg.data.targets import ContourTarget


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
    for item, image in zip(items, images * 2, strict=True):
        labels = item["instance_labels"]
        assert labels.shape == (1, 48, 48) and labels.dtype == torch.int32
        # ids renumbered 1..N per image: every crop id is one of the image's
        assert set(labels.unique().tolist()) <= set(range(len(np.unique(image.instance_labels))))


def test_whole_images_carry_their_instances_renumbered_from_one():
    image = make_synthetic_set(1, seed=0, size=40)[0]
    image.instance_labels = np.where(image.instance_labels > 0, image.instance_labels * 1000 + 7, 0).astype(np.int32)
    item = WholeImageDataset([image])[0]
    labels = item["instance_labels"][0].numpy()
    assert np.array_equal(labels > 0, image.instance_labels > 0)
    assert set(np.unique(labels).tolist()) == set(range(len(np.unique(image.instance_labels))))


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
    labels = (image[:, :1] % 3).to(torch.int32)  # ids 0, 1, 2
    mask = (labels > 0).float()
    batch = {"image": image, "instance_labels": labels, "name": ["a", "b"]}
    datamodule.trainer = SimpleNamespace(training=False)
    evaluated = datamodule.on_after_batch_transfer(batch, 0)
    assert evaluated["image"].dtype == torch.float32
    assert torch.allclose(evaluated["image"], image.float() / 255)
    datamodule.trainer = SimpleNamespace(training=True)
    trained = datamodule.on_after_batch_transfer(batch, 0)
    assert torch.allclose(trained["image"], (image.float() / 255).flip(-1))
    assert torch.equal(trained["mask"], mask.flip(-1))
    assert torch.equal(trained["instance_labels"], labels.flip(-1))
    assert torch.equal(trained["target"], mask.flip(-1)), "binary by default"


def test_the_target_is_made_after_augmentation_from_the_augmented_labels(tmp_path):
    augmentation = SegmentationAugmentation(hflip_p=0, vflip_p=0, rot90_p=0, rotate_p=1.0, rotate_degrees=40.0)
    datamodule = _datamodule(tmp_path, augmentation=augmentation, target={"name": "contour", "boundary_width_px": 1})
    labels = torch.zeros(2, 1, 24, 24, dtype=torch.int32)
    labels[:, :, 4:12, 4:12] = 3
    labels[:, :, 4:12, 12:20] = 8
    batch = {"image": torch.zeros(2, 3, 24, 24, dtype=torch.uint8), "instance_labels": labels, "name": ["a", "b"]}
    datamodule.trainer = SimpleNamespace(training=True)
    torch.manual_seed(0)
    out = datamodule.on_after_batch_transfer(batch, 0)
    assert set(out["instance_labels"].unique().tolist()) <= {0, 3, 8}
    assert torch.equal(out["target"], ContourTarget(1)(out["instance_labels"]))
    assert torch.equal(out["mask"], (out["instance_labels"] > 0).float())


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
