"""Post-processing on hand-made probability maps: watershed splits what connected components merge."""

from __future__ import annotations

import numpy as np
import pytest

from nucseg.postprocess import DEFAULT_PARAMS, postprocess, tune_postprocess


def touching_discs(size: int = 40, radius: int = 8, gap: int = 14) -> tuple[np.ndarray, np.ndarray]:
    """Two discs whose centres are ``gap`` apart along a row (they overlap → touch), as labels."""
    rows, cols = np.mgrid[:size, :size]
    centre = size // 2
    left = (rows - centre) ** 2 + (cols - (centre - gap // 2)) ** 2 <= radius**2
    right = (rows - centre) ** 2 + (cols - (centre + gap // 2)) ** 2 <= radius**2
    labels = np.zeros((size, size), dtype=np.int32)
    labels[left] = 1
    labels[right & ~left] = 2
    boundary = np.zeros_like(left)
    for index in (1, 2):
        inside = labels == index
        shrunk = np.zeros_like(inside)
        shrunk[1:-1, 1:-1] = inside[1:-1, 1:-1] & inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2] & inside[1:-1, 2:]
        boundary |= inside & ~shrunk
    return labels, boundary


def contour_probabilities(labels: np.ndarray, boundary: np.ndarray) -> np.ndarray:
    """Confident 3-class probabilities: background, interior, boundary ring."""
    classes = np.where(labels == 0, 0, np.where(boundary, 2, 1))
    probabilities = np.full((3, *labels.shape), 0.05, dtype=np.float32)
    for index in range(3):
        probabilities[index][classes == index] = 0.9
    return probabilities


def test_two_touching_discs_split_by_a_boundary_ring_give_two_instances():
    labels, boundary = touching_discs()
    predicted = postprocess(contour_probabilities(labels, boundary), "contour", min_size=0)
    assert predicted.dtype == np.int32 and predicted.max() == 2
    # The watershed gives the ring back to the discs: each predicted object is one true disc.
    for index in (1, 2):
        overlap = predicted[labels == index]
        assert (overlap == np.bincount(overlap).argmax()).mean() > 0.9
    assert np.array_equal(predicted > 0, labels > 0)


def test_connected_components_on_the_same_foreground_give_one_instance():
    labels, boundary = touching_discs()
    foreground = 1.0 - contour_probabilities(labels, boundary)[:1]
    predicted = postprocess(foreground, "binary")
    assert predicted.max() == 1


def test_distance_peaks_split_touching_discs():
    labels, _ = touching_discs()
    from nucseg.data.targets import normalized_distance

    probabilities = np.stack([(labels > 0).astype(np.float32), normalized_distance(labels)])
    for markers in ("h_maxima", "peaks"):
        predicted = postprocess(probabilities, "distance", markers=markers, min_size=0)
        assert predicted.max() == 2, markers


def test_min_size_drops_small_objects_and_a_markerless_component_is_kept_whole():
    probabilities = np.zeros((3, 20, 20), dtype=np.float32)
    probabilities[0] = 1.0
    probabilities[:, 2:4, 2:4] = np.array([0.0, 0.0, 1.0])[:, None, None]  # 4 px of boundary only
    probabilities[:, 8:16, 8:16] = np.array([0.0, 1.0, 0.0])[:, None, None]  # a 64 px nucleus
    assert postprocess(probabilities, "contour", min_size=10).max() == 1
    kept = postprocess(probabilities, "contour", min_size=0)
    assert kept.max() == 2 and (kept == kept[2, 2]).sum() == 4


def test_holes_are_filled_before_labelling():
    probabilities = np.zeros((1, 12, 12), dtype=np.float32)
    probabilities[0, 2:10, 2:10] = 1.0
    probabilities[0, 5:7, 5:7] = 0.0
    assert (postprocess(probabilities, "binary", fill_holes=True) > 0).sum() == 64
    assert (postprocess(probabilities, "binary") > 0).sum() == 60


def test_binary_defaults_are_todays_connected_components():
    from nucseg.postprocess import label_instances

    rng = np.random.default_rng(0)
    probability = rng.random((1, 30, 30)).astype(np.float32)
    assert np.array_equal(postprocess(probability, "binary"), label_instances(probability[0], threshold=0.5))


def test_wrong_channels_targets_and_parameters_are_one_line_errors():
    with pytest.raises(ValueError, match=r"needs \(3, H, W\)"):
        postprocess(np.zeros((1, 4, 4)), "contour")
    with pytest.raises(ValueError, match="unknown target 'star'"):
        postprocess(np.zeros((1, 4, 4)), "star")
    with pytest.raises(ValueError, match="unknown parameter"):
        postprocess(np.zeros((1, 4, 4)), "binary", marker_threshold=0.5)
    assert set(DEFAULT_PARAMS) == {"binary", "contour", "distance", "hv"}


def test_tuner_picks_the_marker_threshold_that_splits_the_discs():
    labels, boundary = touching_discs()
    probabilities = contour_probabilities(labels, boundary)
    # Interior probabilities of 0.9 only survive marker thresholds below them.
    grid = {"marker_threshold": [0.95, 0.5]}
    best, table = tune_postprocess([probabilities], [labels], grid, target="contour", base_params={"min_size": 0})
    assert best == {"min_size": 0, "marker_threshold": 0.5}
    assert [row["marker_threshold"] for row in table] == [0.95, 0.5]
    assert table[1]["aji"] > 0.9 > table[0]["aji"]
    with pytest.raises(ValueError, match="as many label maps"):
        tune_postprocess([probabilities], [], grid, target="contour")


def test_tune_on_validation_predicts_the_validation_images_and_applies_the_best(compose_train):
    from hydra.utils import instantiate

    from nucseg.pipeline import build_module
    from nucseg.postprocess import tune_on_validation

    cfg = compose_train(["target=contour"])
    datamodule = instantiate(cfg.data)
    module = build_module(cfg)
    grid = {"marker_threshold": [0.3, 0.6]}
    best, table = tune_on_validation(module, datamodule, grid)
    assert len(table) == 2 and {"marker_threshold", "aji", "pq"} <= set(table[0])
    assert best["marker_threshold"] in (0.3, 0.6)
    assert module.postprocess_params == best
    assert [image.name for image in datamodule.val_images] and not datamodule.test_images, "never the test set"


def test_hv_maps_split_touching_discs():
    from nucseg.data.targets import horizontal_vertical_maps

    labels, _ = touching_discs()
    probabilities = np.concatenate([(labels > 0)[None].astype(np.float32), horizontal_vertical_maps(labels)])
    predicted = postprocess(probabilities, "hv", min_size=0)
    assert predicted.max() == 2
    for index in (1, 2):
        overlap = predicted[labels == index]
        assert (overlap == np.bincount(overlap).argmax()).mean() > 0.9
