"""The DataModule: whole-image validation split, crops, device-side conversion and augmentation."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import aperio_xml, rectangle, write_annotated_image

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


# -- protocols and validation splits ------------------------------------------------------------

KUMAR_ORGANS = {"a0": "a", "a1": "a", "a2": "a", "b0": "b", "b1": "b", "b2": "b", "c0": "c", "c1": "c"}
KUMAR_JSON = {
    "train": ["a0", "a1", "b0", "b1"],
    "test_same_organ": ["a2", "b2"],
    "test_different_organ": ["c0"],
    "organ": KUMAR_ORGANS,
    "alternative_split": {"train": ["a0", "a2", "b0", "b1"], "test_same_organ": ["a1", "b2"], "test_different_organ": ["c1"]},
    "train12_val4": {"val": ["a1", "b0"]},
}


@pytest.fixture
def kumar_root(tmp_path):
    """A tiny MoNuSeg folder: 8 training images (3 organs), 1 test image, splits/kumar.json."""
    import json

    root = tmp_path / "monuseg"
    xml = aperio_xml([rectangle(2, 2, 6, 6)])
    for split, names in (("train", sorted(KUMAR_ORGANS)), ("test", ["t0"])):
        (root / split / "images").mkdir(parents=True)
        (root / split / "annotations").mkdir()
        for seed, name in enumerate(names):
            write_annotated_image(root / split, name, seed, xml, size=12)
    (root / "splits").mkdir()
    (root / "splits" / "kumar.json").write_text(json.dumps(KUMAR_JSON))
    return root


def _names(images):
    return sorted(image.name for image in images)


def test_official_protocol_keeps_the_earlier_random_split_and_has_no_subsets(kumar_root):
    from nucseg.data.datamodule import MonusegDataModule

    datamodule = MonusegDataModule(root=kumar_root, num_val_images=2, split_seed=3)
    datamodule.setup(None)
    expected_val = sorted(np.random.default_rng(3).choice(sorted(KUMAR_ORGANS), size=2, replace=False).tolist())
    assert _names(datamodule.val_images) == expected_val
    assert _names(datamodule.test_images) == ["t0"] and datamodule.test_subsets == {}
    assert datamodule.protocol["split"] == "official" and datamodule.protocol["val_strategy"] == "random"
    assert datamodule.protocol["val_images"] == expected_val and datamodule.protocol["test_images"] == ["t0"]


def test_kumar_protocol_trains_and_tests_inside_the_training_folder(kumar_root):
    from nucseg.data.datamodule import MonusegDataModule

    datamodule = MonusegDataModule(root=kumar_root, split="kumar", num_val_images=2)
    assert datamodule.test_subsets == {"same_organ": ["a2", "b2"], "different_organ": ["c0"]}
    datamodule.setup("test")  # before fit: the stain reference comes from the Kumar training images
    assert _names(datamodule.test_images) == ["a2", "b2", "c0"]
    datamodule.setup("fit")
    assert _names(datamodule.train_images + datamodule.val_images) == ["a0", "a1", "b0", "b1"]
    assert sorted(KUMAR_ORGANS[name] for name in _names(datamodule.val_images)) == ["a", "b"]  # one per organ
    protocol = datamodule.protocol
    assert (protocol["split"], protocol["kumar_list"], protocol["val_strategy"]) == ("kumar", "hovernet", "organ")
    assert protocol["split_file"] == str(kumar_root / "splits" / "kumar.json")
    assert protocol["test_subsets"] == datamodule.test_subsets

    alternative = MonusegDataModule(root=kumar_root, split="kumar", kumar_list="alternative", num_val_images=2)
    alternative.setup(None)
    assert _names(alternative.train_images + alternative.val_images) == ["a0", "a2", "b0", "b1"]
    assert _names(alternative.test_images) == ["a1", "b2", "c1"]
    # this file's proposal (a1, b0) is not inside the alternative training list: no proposal
    proposal = MonusegDataModule(root=kumar_root, split="kumar", kumar_list="alternative", val_strategy="file")
    with pytest.raises(ValueError, match="val_strategy=file needs the split file's validation proposal"):
        proposal.setup("fit")


def test_kumar_file_proposal_and_folds(kumar_root):
    from nucseg.data.datamodule import MonusegDataModule

    proposal = MonusegDataModule(root=kumar_root, split="kumar", val_strategy="file")
    proposal.setup("fit")
    assert _names(proposal.val_images) == ["a1", "b0"] and _names(proposal.train_images) == ["a0", "b1"]
    seen = []
    for fold in range(2):
        datamodule = MonusegDataModule(root=kumar_root, split="kumar", num_folds=2, fold=fold)
        datamodule.setup("fit")
        val = _names(datamodule.val_images)
        assert sorted(KUMAR_ORGANS[name] for name in val) == ["a", "b"]
        assert datamodule.protocol["val_strategy"] == "folds" and datamodule.protocol["fold"] == fold
        seen += val
    assert sorted(seen) == ["a0", "a1", "b0", "b1"]


def test_protocol_errors_are_one_line(kumar_root, tmp_path):
    from nucseg.data.datamodule import MonusegDataModule

    (kumar_root / "splits" / "kumar.json").rename(tmp_path / "moved.json")
    with pytest.raises(ValueError, match=r"splits/kumar.json: split file not found"):
        MonusegDataModule(root=kumar_root, split="kumar")
    with pytest.raises(ValueError, match="data.fold must be between 0 and 2"):
        NucleiDataModule(SyntheticSource(num_train_images=4, num_test_images=1, image_size=32), num_folds=3, fold=3)
    with pytest.raises(ValueError, match="unknown data.val_strategy 'best'"):
        NucleiDataModule(SyntheticSource(num_train_images=4, num_test_images=1, image_size=32), val_strategy="best")


def test_kumar_names_missing_from_the_folder(kumar_root):
    import json

    from nucseg.data.datamodule import MonusegDataModule

    (kumar_root / "splits" / "kumar.json").write_text(json.dumps({**KUMAR_JSON, "train": ["a0", "zz"]}))
    datamodule = MonusegDataModule(root=kumar_root, split="kumar", num_val_images=1)
    with pytest.raises(ValueError, match="kumar.json: train image.s. missing from the training folder: zz"):
        datamodule.setup("fit")


def test_synthetic_folds_cover_every_training_image_once():
    held_out = []
    for fold in range(3):
        source = SyntheticSource(num_train_images=6, num_test_images=1, image_size=32)
        datamodule = NucleiDataModule(source, num_folds=3, fold=fold)
        datamodule.setup("fit")
        assert len(datamodule.val_images) == 2 and len(datamodule.train_images) == 4
        held_out += _names(datamodule.val_images)
    assert sorted(held_out) == [f"synthetic_train_{i:04d}" for i in range(6)]


@pytest.mark.parametrize(
    "overrides",
    [
        ["data.split=kumar"],
        ["data.split=kumar", "data.kumar_list=alternative", "data.val_strategy=file"],
        ["data.split=official", "data.val_strategy=organ", "data.num_val_images=3"],
        ["data.split=kumar", "data.num_folds=2", "data.fold=1"],
    ],
    ids=["kumar", "alternative-file", "official-organ", "kumar-folds"],
)
def test_split_options_compose_into_the_monuseg_data_module(compose_train, kumar_root, overrides):
    from hydra.utils import instantiate

    cfg = compose_train(["data=monuseg", f"data.root={kumar_root}", *overrides], tiny=False)
    datamodule = instantiate(cfg.data)
    expected_split = "kumar" if "data.split=kumar" in overrides else "official"
    assert datamodule.protocol["split"] == expected_split
    expected_list = None if expected_split == "official" else "alternative" if "alternative" in str(overrides) else "hovernet"
    assert datamodule.protocol.get("kumar_list") == expected_list
    assert bool(datamodule.test_subsets) == (expected_split == "kumar")
    assert datamodule.num_folds == (2 if "data.num_folds=2" in overrides else None)


def test_split_options_compose_with_synthetic_data(compose_train):
    from hydra.utils import instantiate

    datamodule = instantiate(compose_train(["data.num_folds=3", "data.fold=2"]).data)
    assert (datamodule.num_folds, datamodule.fold, datamodule.val_strategy) == (3, 2, "random")
    assert datamodule.protocol["split"] == "official" and datamodule.test_subsets == {}
    default = instantiate(compose_train().data)
    assert (default.num_folds, default.val_strategy, default.num_val_images) == (None, "random", 1)
