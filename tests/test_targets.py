"""Targets from instance labels: binary, contour (boundary band per nucleus) and distance, on tiny maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.segmentation import find_boundaries

from nucseg.data.augment import SegmentationAugmentation
from nucseg.data.targets import (
    BOUNDARY,
    INTERIOR,
    BinaryTarget,
    ContourTarget,
    DistanceTarget,
    HVTarget,
    build_target,
    inner_boundary,
    normalized_distance,
)


def two_touching_squares() -> np.ndarray:
    """A 6x6 nucleus (id 5) touching a 6x4 nucleus (id 9) along a column, and a lone 3x3 one (id 2)."""
    labels = np.zeros((12, 14), dtype=np.int32)
    labels[1:7, 1:7] = 5
    labels[1:7, 7:11] = 9
    labels[8:11, 2:5] = 2
    return labels


def as_batch(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(labels)[None, None].float()


def test_binary_target_is_the_foreground():
    labels = two_touching_squares()
    target = BinaryTarget()(as_batch(labels))
    assert target.shape == (1, 1, 12, 14) and target.dtype == torch.float32
    assert torch.equal(target[0, 0], torch.from_numpy((labels > 0).astype(np.float32)))


def test_width_one_boundary_is_skimage_inner_boundary():
    labels = two_touching_squares()
    ours = inner_boundary(as_batch(labels), 1)[0, 0].numpy()
    assert np.array_equal(ours, find_boundaries(labels, mode="inner", connectivity=2))


def test_contour_target_separates_touching_nuclei_by_boundary_pixels():
    labels = two_touching_squares()
    classes = ContourTarget(boundary_width_px=1)(as_batch(labels))[0, 0].numpy()
    assert set(np.unique(classes).tolist()) == {0.0, 1.0, 2.0}
    # The two columns where nuclei 5 and 9 touch are boundary, so interiors do not touch.
    assert (classes[2:6, 6] == BOUNDARY).all() and (classes[2:6, 7] == BOUNDARY).all()
    interior_components = _count_components(classes == INTERIOR)
    assert interior_components == 3
    # Hand count: 5 → 4x4 interior, 9 → 4x2, 2 → 1x1.
    assert (classes == INTERIOR).sum() == 16 + 8 + 1


def test_wider_boundary_thickens_inwards_only():
    labels = two_touching_squares()
    classes = ContourTarget(boundary_width_px=2)(as_batch(labels))[0, 0].numpy()
    assert np.array_equal(classes > 0, labels > 0)  # never grows outside the nuclei
    assert (classes == INTERIOR).sum() == 2 * 2 + 2 * 0  # 5 → 2x2, 9 (4 wide) and 2 (3 wide) → none


def test_contour_boundary_does_not_follow_the_image_border():
    labels = np.zeros((6, 6), dtype=np.int32)
    labels[:, :3] = 1  # a nucleus cut by the left, top and bottom border
    classes = ContourTarget(boundary_width_px=1)(as_batch(labels))[0, 0].numpy()
    assert (classes[:, 2] == BOUNDARY).all() and (classes[:, :2] == INTERIOR).all()


def test_distance_peaks_at_one_inside_every_nucleus_and_is_zero_outside():
    labels = two_touching_squares()
    target = DistanceTarget()(as_batch(labels))
    assert target.shape == (1, 2, 12, 14)
    distance = target[0, 1].numpy()
    assert (distance[labels == 0] == 0).all()
    for index in (5, 9, 2):
        inside = distance[labels == index]
        assert inside.max() == pytest.approx(1.0) and inside.min() > 0
    # Nucleus 9 (6x4): border pixels at distance 1 of max 2 → 0.5; it does not see into nucleus 5.
    assert distance[3, 7] == pytest.approx(0.5)


def test_distance_of_non_consecutive_ids_equals_that_of_renumbered_ones():
    labels = two_touching_squares()
    renumbered = np.select([labels == 5, labels == 9, labels == 2], [1, 2, 3], 0).astype(np.int32)
    assert np.array_equal(normalized_distance(renumbered), DistanceTarget()(as_batch(labels))[0, 1].numpy())


def test_build_target_by_name_and_unknown_names():
    assert build_target("contour", boundary_width_px=3).boundary_width_px == 3
    assert build_target("distance").out_channels == 2
    with pytest.raises(ValueError, match="unknown target 'star'"):
        build_target("star")
    with pytest.raises(ValueError, match="boundary_width_px must be >= 1"):
        ContourTarget(0)


def test_rotation_keeps_instance_ids_exact_and_the_contour_derived_afterwards_is_exact():
    """Augmenting float32 ids with nearest sampling returns only ids of the input, even large ones."""
    labels = torch.zeros(2, 1, 32, 32)
    labels[:, :, 4:14, 4:14] = 16_000_001.0  # exact in float32 (< 2**24)
    labels[:, :, 4:14, 14:24] = 7.0
    image = torch.rand(2, 3, 32, 32)
    augment = SegmentationAugmentation(hflip_p=0.0, vflip_p=0.0, rot90_p=0.0, rotate_p=1.0, rotate_degrees=30.0)
    torch.manual_seed(0)
    _, out = augment(image, labels)
    assert set(out.unique().tolist()) <= {0.0, 7.0, 16_000_001.0}
    classes = ContourTarget(1)(out)
    boundary = inner_boundary(out, 1)
    assert torch.equal(classes == BOUNDARY, boundary)


def _count_components(mask: np.ndarray) -> int:
    from scipy import ndimage

    return int(ndimage.label(mask)[1])


@pytest.mark.parametrize(("option", "channels", "loss_terms"), [
    ("binary", 1, {"bce", "focal", "dice"}),
    ("contour", 3, {"ce", "multiclass_dice"}),
    ("distance", 2, {"bce", "mse"}),
    ("hv", 3, {"bce", "mse"}),
])
def test_every_target_option_composes_into_data_model_loss_and_module(compose_train, option, channels, loss_terms):
    from hydra.utils import instantiate

    from nucseg.pipeline import build_module

    cfg = compose_train([f"target={option}"])
    assert cfg.model.net.classes == channels == cfg.target.out_channels
    assert set(cfg.loss.terms) == loss_terms
    datamodule = instantiate(cfg.data)
    assert datamodule.target.name == option and datamodule.target.out_channels == channels
    module = build_module(cfg)
    assert module.target == option
    assert module.postprocess_params == dict(cfg.target.postprocess)


def test_boundary_width_reaches_the_data_module(compose_train):
    from hydra.utils import instantiate

    cfg = compose_train(["target=contour", "target.boundary_width_px=3"])
    assert instantiate(cfg.data).target.boundary_width_px == 3


def test_hv_maps_run_from_minus_one_to_one_across_each_nucleus():
    labels = two_touching_squares()
    target = HVTarget()(as_batch(labels))
    assert target.shape == (1, 3, 12, 14)
    horizontal, vertical = target[0, 1].numpy(), target[0, 2].numpy()
    # Nucleus 9 spans columns 7..10 (centre 8.5): offsets -1.5..1.5 over 1.5 → -1, -1/3, 1/3, 1.
    assert np.allclose(horizontal[3, 7:11], [-1, -1 / 3, 1 / 3, 1])
    assert np.allclose(vertical[1:7, 8], np.linspace(-1, 1, 6))
    # Between touching nuclei 5 and 9 the horizontal map drops from +1 to -1.
    assert horizontal[3, 6] == pytest.approx(1.0) and horizontal[3, 7] == pytest.approx(-1.0)
    assert (target[0, 1:][:, labels == 0] == 0).all()
