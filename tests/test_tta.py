"""Test-time augmentation: the D4 transforms are inverted exactly, and averaging is right."""

from __future__ import annotations

import pytest
import torch

from nucseg.inference import D4Transform, sliding_window_predict, tta_forward, tta_transforms
from nucseg.losses import CompositeLoss
from nucseg.module import SegmentationModule


def asymmetric_image() -> torch.Tensor:
    """An image with no symmetry at all: distinct values, non-square."""
    return torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)


@pytest.mark.parametrize("mode", ["none", "flips", "d4"])
def test_each_transform_is_inverted_exactly(mode: str) -> None:
    image = asymmetric_image()
    for transform in tta_transforms(mode):
        assert torch.equal(transform.invert(transform.apply(image)), image)


def test_the_eight_transforms_are_distinct_and_flips_are_a_subset() -> None:
    image = torch.arange(36, dtype=torch.float32).reshape(1, 1, 6, 6)
    d4 = tta_transforms("d4")
    outputs = {tuple(t.apply(image).flatten().tolist()) for t in d4}
    assert len(d4) == 8 and len(outputs) == 8
    flips = tta_transforms("flips")
    assert len(flips) == 4 and set(flips) <= set(d4)
    assert torch.equal(D4Transform(2, True).apply(image), image.flip(-2))  # vertical flip
    assert len(tta_transforms("none")) == 1


@pytest.mark.parametrize("mode", ["flips", "d4"])
def test_equivariant_identity_network_gives_the_input_back(mode: str) -> None:
    image = asymmetric_image()
    assert torch.equal(tta_forward(lambda x: x, image, mode), image)


def test_averaging_recovers_the_mean_of_transformed_predictions() -> None:
    # a position-dependent "network": adds a ramp along the width axis of what it sees
    def ramp_net(x: torch.Tensor) -> torch.Tensor:
        return x + torch.linspace(0, 1, x.shape[-1])

    image = torch.zeros(1, 1, 4, 4)
    averaged = tta_forward(ramp_net, image, "flips")
    # identity and vertical flip see the ramp as is; horizontal and both flips see it reversed
    expected = (2 * torch.linspace(0, 1, 4) + 2 * torch.linspace(1, 0, 4)) / 4
    assert torch.allclose(averaged[0, 0, 0], expected)


def test_tta_inside_sliding_window_preserves_alignment() -> None:
    # pointwise net: any misaligned inverse would move pixels and break equality
    image = torch.rand(1, 3, 150, 210, generator=torch.Generator().manual_seed(0))
    out = sliding_window_predict(image, lambda t: t[:, :2] * 2.0, tile_size=64, overlap=16, tta="d4")
    assert torch.allclose(out, image[:, :2] * 2.0, atol=1e-6)


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        tta_transforms("rot")


def test_validation_can_skip_the_tta_the_test_keeps() -> None:
    """``validation_inference`` replaces keys for validation only: flips at test, one pass at validation."""
    class CountingNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.images_seen = 0

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            self.images_seen += images.shape[0]
            return images[:, :1]

    net = CountingNet()
    module = SegmentationModule(
        net=net,
        loss=CompositeLoss({"bce": {"weight": 1.0}}),
        inference={"tile_size": 32, "overlap": 0, "batch_size": 4, "tta": "flips"},
        validation_inference={"tta": "none"},
    )
    batch = {"image": torch.rand(1, 3, 32, 32), "mask": torch.zeros(1, 1, 32, 32)}
    module._evaluate_whole_images(batch, "val")
    assert net.images_seen == 1
    module._evaluate_whole_images(batch, "test")
    assert net.images_seen == 1 + 4
    assert module.validation_inference_settings.tile_size == 32  # the other keys are inherited
