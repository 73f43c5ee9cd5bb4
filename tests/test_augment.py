"""Image and mask stay aligned under every augmentation; the mask stays binary."""

from __future__ import annotations

import pytest
import torch

from nucseg.data.augment import SegmentationAugmentation, hed_to_rgb, rgb_to_hed

OFF = {"hflip_p": 0.0, "vflip_p": 0.0, "rot90_p": 0.0, "rotate_p": 0.0, "scale_p": 0.0, "hed_jitter_p": 0.0}
FORCED = {
    "hflip": {**OFF, "hflip_p": 1.0},
    "vflip": {**OFF, "vflip_p": 1.0},
    "rot90": {**OFF, "rot90_p": 1.0},
    "rotate": {**OFF, "rotate_p": 1.0},
    "scale": {**OFF, "scale_p": 1.0},
    "all": {"hflip_p": 1.0, "vflip_p": 1.0, "rot90_p": 1.0, "rotate_p": 1.0, "scale_p": 1.0},
    "defaults": {},
}
EXACT = {"hflip", "vflip", "rot90"}


def l_shaped_batch(batch: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A non-symmetric mask (an L plus a random blob per sample) and an image derived from it."""
    generator = torch.Generator().manual_seed(123)
    mask = torch.zeros(batch, 1, size, size)
    mask[:, :, 4:20, 4:9] = 1.0
    mask[:, :, 15:20, 4:16] = 1.0
    blobs = torch.rand(batch, 1, size // 4, size // 4, generator=generator) > 0.7
    mask[:, :, size // 2 :, size // 2 :] = torch.maximum(
        mask[:, :, size // 2 :, size // 2 :], blobs.repeat_interleave(2, -1).repeat_interleave(2, -2).float()
    )
    image = (0.2 + 0.6 * mask).repeat(1, 3, 1, 1)
    return image, mask


@pytest.mark.parametrize("name", sorted(FORCED))
def test_image_and_mask_stay_aligned(name):
    image, mask = l_shaped_batch()
    augment = SegmentationAugmentation(**FORCED[name])
    for seed in range(5):
        torch.manual_seed(seed)
        out_image, out_mask = augment(image, mask)
        assert out_image.shape == image.shape and out_mask.shape == mask.shape
        assert out_image.dtype == torch.float32 and out_mask.dtype == torch.float32
        assert set(out_mask.unique().tolist()) <= {0.0, 1.0}
        assert 0.0 <= out_image.min() and out_image.max() <= 1.0
        disagreement = ((out_image[:, :1] > 0.5).float() != out_mask).float().mean().item()
        if name in EXACT:
            assert disagreement == 0.0
        else:  # bilinear image against nearest mask differ only on a few boundary pixels
            # "all" resamples twice (rotation, then zoom) on a 32-pixel toy with a long boundary
            assert disagreement < (0.04 if name == "all" else 0.01)


def test_forced_transforms_change_the_batch():
    image, mask = l_shaped_batch()
    torch.manual_seed(0)
    for name in ("hflip", "vflip", "rotate"):
        _, out_mask = SegmentationAugmentation(**FORCED[name])(image, mask)
        assert not torch.equal(out_mask, mask), name


def test_rot90_draws_every_quarter_turn():
    image, mask = l_shaped_batch(batch=64)
    torch.manual_seed(0)
    _, out_mask = SegmentationAugmentation(**FORCED["rot90"])(image, mask)
    seen = {
        k
        for before, after in zip(mask, out_mask, strict=True)
        for k in range(4)
        if torch.equal(after, torch.rot90(before, k, dims=(-2, -1)))
    }
    assert seen == {0, 1, 2, 3}


def test_rotation_corners_are_reflected_not_zero():
    image, mask = l_shaped_batch()
    torch.manual_seed(1)
    out_image, _ = SegmentationAugmentation(**FORCED["rotate"])(image, mask)
    assert out_image.min() > 0.19  # zero padding would put black corners into the image


def test_zoom_scales_a_centred_nucleus_by_the_factor_squared():
    mask = torch.zeros(1, 1, 32, 32)
    mask[:, :, 12:20, 12:20] = 1.0  # 64 pixels, centred on the zoom centre
    image = (0.2 + 0.6 * mask).repeat(1, 3, 1, 1)
    _, zoomed = SegmentationAugmentation(**{**OFF, "scale_p": 1.0, "scale_range": (2.0, 2.0)})(image, mask)
    assert zoomed.sum().item() == pytest.approx(4 * 64, rel=0.15)
    with pytest.raises(ValueError, match="scale_range"):
        SegmentationAugmentation(scale_range=(1.25, 0.8))


def test_all_probabilities_zero_is_identity():
    image, mask = l_shaped_batch()
    out_image, out_mask = SegmentationAugmentation(**OFF)(image, mask)
    assert torch.equal(out_image, image) and torch.equal(out_mask, mask)


def test_hed_round_trip_is_near_identity():
    image = torch.rand(2, 3, 8, 8) * 0.9 + 0.05
    assert torch.allclose(hed_to_rgb(rgb_to_hed(image)), image, atol=1e-4)


def test_hed_jitter_changes_image_only():
    image, mask = l_shaped_batch()
    image = image * torch.tensor([0.9, 0.6, 0.8]).view(1, 3, 1, 1)  # some colour to jitter
    torch.manual_seed(0)
    out_image, out_mask = SegmentationAugmentation(**{**OFF, "hed_jitter_p": 1.0, "hed_jitter_sigma": 0.1})(
        image, mask
    )
    assert torch.equal(out_mask, mask)
    assert (out_image - image).abs().max() > 0.01
    assert out_image.dtype == torch.float32 and 0.0 <= out_image.min() and out_image.max() <= 1.0

    still, _ = SegmentationAugmentation(**{**OFF, "hed_jitter_p": 1.0, "hed_jitter_sigma": 0.0})(image, mask)
    assert torch.allclose(still, image, atol=1e-4)


def test_invalid_inputs_give_clear_errors():
    image, mask = l_shaped_batch()
    with pytest.raises(ValueError, match="mask must be"):
        SegmentationAugmentation()(image, mask[:, :, :16])
    with pytest.raises(ValueError, match="image must be"):
        SegmentationAugmentation()(image[:, :2], mask)
    with pytest.raises(ValueError, match="probability"):
        SegmentationAugmentation(hflip_p=1.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    image, mask = l_shaped_batch()
    out_image, out_mask = SegmentationAugmentation()(image.cuda(), mask.cuda())
    assert out_image.is_cuda and out_mask.is_cuda and out_image.dtype == torch.float32
    assert ((out_image[:, :1] > 0.5).float() != out_mask).float().mean().item() < 0.01
    jittered, kept = SegmentationAugmentation(**{**OFF, "hed_jitter_p": 1.0})(image.cuda(), mask.cuda())
    assert jittered.is_cuda and torch.equal(kept.cpu(), mask)
