"""GPU fast-path switches checked on the CPU: device-resident crops, loader options, torch.compile."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from nucseg.compile import CompileNetwork, compile_network
from nucseg.data.datasets import RandomPatchDataset
from nucseg.data.device_dataset import DeviceResidentCrops
from nucseg.data.types import AnnotatedImage
from nucseg.pipeline import train


def _images(count: int = 3, size: int = 40) -> list[AnnotatedImage]:
    rng = np.random.default_rng(0)
    return [
        AnnotatedImage(
            name=f"img{i}",
            image=rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            instance_labels=(rng.random((size, size)) > 0.7).astype(np.int32),
        )
        for i in range(count)
    ]


def test_device_crops_match_the_loader_crops_in_shape_dtype_and_count():
    images = _images()
    crops = DeviceResidentCrops(images, patch_size=16, patches_per_image=5, batch_size=4)
    reference = RandomPatchDataset(images, patch_size=16, patches_per_image=5)
    batches = list(crops)
    assert len(batches) == len(crops) == 4  # 15 crops in batches of 4
    assert sum(batch["image"].shape[0] for batch in batches) == len(reference)
    item = reference[0]
    for batch in batches:
        assert batch["image"].dtype == item["image"].dtype == torch.uint8
        assert batch["instance_labels"].dtype == item["instance_labels"].dtype == torch.int32
        assert batch["image"].shape[1:] == item["image"].shape
        assert batch["instance_labels"].shape[1:] == item["instance_labels"].shape
    names = Counter(name for batch in batches for name in batch["name"])
    assert names == {"img0": 5, "img1": 5, "img2": 5}, "each image patches_per_image times an epoch"


def test_device_crop_is_the_slice_of_its_image():
    images = _images()
    crops = DeviceResidentCrops(images, patch_size=8, patches_per_image=1, batch_size=2)
    batch = crops.crop(torch.tensor([2, 0]), torch.tensor([3, 32]), torch.tensor([30, 0]))
    for row, (index, top, left) in enumerate([(2, 3, 30), (0, 32, 0)]):
        pixels = torch.from_numpy(images[index].image[top : top + 8, left : left + 8].transpose(2, 0, 1).copy())
        mask = torch.from_numpy(images[index].mask[top : top + 8, left : left + 8].copy())
        assert torch.equal(batch["image"][row], pixels)
        assert torch.equal((batch["instance_labels"][row, 0] > 0).to(torch.uint8), mask)


def test_device_crops_cover_the_images_like_random_loader_crops():
    """Mean intensity and nucleus fraction over many crops match the images' (uniform positions)."""
    images = _images(count=2, size=32)
    torch.manual_seed(0)
    crops = DeviceResidentCrops(images, patch_size=8, patches_per_image=400, batch_size=100)
    batches = list(crops)
    pixels = torch.cat([b["image"] for b in batches]).float()
    masks = torch.cat([b["instance_labels"] > 0 for b in batches]).float()
    # Uniform crop positions weigh border pixels less; compare with the loader's crops, not the images.
    reference = RandomPatchDataset(images, patch_size=8, patches_per_image=400)
    ref_pixels = torch.stack([reference[i]["image"] for i in range(len(reference))]).float()
    ref_masks = torch.stack([reference[i]["instance_labels"] > 0 for i in range(len(reference))]).float()
    assert pixels.mean().item() == pytest.approx(ref_pixels.mean().item(), abs=1.5)
    assert masks.mean().item() == pytest.approx(ref_masks.mean().item(), abs=0.02)


def test_device_crops_split_one_epoch_over_ranks():
    images = _images()
    names = Counter()
    for rank in range(2):
        torch.manual_seed(7)  # Lightning seeds every rank alike
        crops = DeviceResidentCrops(images, patch_size=8, patches_per_image=5, batch_size=4, world_size=2, rank=rank)
        names.update(name for batch in crops for name in batch["name"])
    assert names == {"img0": 5, "img1": 5, "img2": 5}


def test_device_crops_refuse_mixed_sizes():
    images = [*_images(count=1, size=40), *_images(count=1, size=48)]
    with pytest.raises(ValueError, match="device_resident=true needs training images of one size"):
        DeviceResidentCrops(images, patch_size=16, patches_per_image=1, batch_size=1)


@pytest.mark.slow
def test_training_runs_with_device_resident_data(compose_train):
    metrics = train(compose_train(["data.device_resident=true", "debug=fast"]))
    assert 0.0 <= metrics["test"]["dice"] <= 1.0
    assert metrics["train_patches"] > 0


def test_loader_options_reach_the_loader_and_keep_its_batches(compose_train):
    def first_batch(options: list[str]) -> tuple[dict, torch.utils.data.DataLoader]:
        datamodule = instantiate(compose_train(options).data)
        datamodule.setup("fit")
        torch.manual_seed(0)
        loader = datamodule.train_dataloader()
        return next(iter(loader)), loader

    plain, loader = first_batch(["data.pin_memory=false"])
    assert loader.pin_memory is False and loader.persistent_workers is False  # no workers, nothing to keep
    pinned, loader = first_batch(["data.pin_memory=true"])
    assert loader.pin_memory is True
    assert torch.equal(plain["image"], pinned["image"]) and torch.equal(plain["instance_labels"], pinned["instance_labels"])
    _, loader = first_batch(["data.num_workers=1", "data.persistent_workers=true"])
    assert loader.persistent_workers is True


def test_compile_switch_composes_and_keeps_parameter_names(compose_train):
    callbacks = compose_train(["callbacks=compile"]).callbacks
    assert isinstance(instantiate(callbacks.compile), CompileNetwork)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 1))
    names = list(net.state_dict())
    compile_network(net)
    assert list(net.state_dict()) == names, "checkpoints of a compiled run load into an eager network"


@pytest.mark.slow
def test_compiled_network_gives_the_eager_logits(compose_train):
    """Compiles on the CPU with inductor (a C++ compiler is needed); ~1 minute on 2 busy cores."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 1, 1)).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        eager = net(images)
        compiled = compile_network(net)(images)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
