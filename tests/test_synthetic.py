"""Synthetic H&E generator: determinism, label sanity, touching nuclei and the per-image stain shift."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from nucseg.data.synthetic import derive_seed, make_synthetic_image, make_synthetic_set


@pytest.fixture(scope="module")
def tiles():
    return make_synthetic_set(4, seed=7, size=128)


def test_same_seed_same_image_different_seed_different():
    first, again = make_synthetic_image(3, size=96), make_synthetic_image(3, size=96)
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.instance_labels, again.instance_labels)
    other = make_synthetic_image(4, size=96)
    assert not np.array_equal(first.image, other.image)
    assert first.name == "synthetic_3"


def test_shapes_dtypes_and_names():
    item = make_synthetic_image(0, size=(80, 120), name="tile")
    assert item.name == "tile"
    assert item.image.shape == (80, 120, 3) and item.image.dtype == np.uint8
    assert item.instance_labels.shape == (80, 120) and item.instance_labels.dtype == np.int32


def test_sets_share_prefixes_and_use_derived_seeds(tiles):
    assert [tile.name for tile in tiles] == [f"synthetic_{i:04d}" for i in range(4)]
    shorter = make_synthetic_set(2, seed=7, size=128, prefix="other")
    for short, long in zip(shorter, tiles[:2], strict=True):
        np.testing.assert_array_equal(short.image, long.image)
    np.testing.assert_array_equal(make_synthetic_image(derive_seed(7, 1), size=128).image, tiles[1].image)
    assert not np.array_equal(make_synthetic_set(1, seed=8, size=128)[0].image, tiles[0].image)


def test_nuclear_fraction_and_consecutive_labels(tiles):
    for tile in tiles:
        labels = tile.instance_labels
        fraction = float((labels > 0).mean())
        assert 0.08 < fraction < 0.4, f"{tile.name}: nuclear fraction {fraction:.3f}"
        ids = np.unique(labels)
        np.testing.assert_array_equal(ids, np.arange(ids.size))  # 0, 1, ..., K with no gaps
        for label, found in enumerate(ndimage.find_objects(labels), start=1):
            assert ndimage.label(labels[found] == label)[1] == 1, f"{tile.name}: nucleus {label} in pieces"


def test_nuclei_are_dark_purple_on_pink(tiles):
    for tile in tiles:
        nuclear = tile.image[tile.instance_labels > 0].astype(float).mean(0)
        stroma = tile.image[tile.instance_labels == 0].astype(float).mean(0)
        assert nuclear.sum() < stroma.sum() - 100  # nuclei are much darker
        assert stroma[0] > stroma[1] and stroma[2] > stroma[1]  # pink/magenta: green absorbed by eosin
        assert nuclear[2] > nuclear[0]  # hematoxylin: bluish purple


def test_touching_nuclei_exist(tiles):
    def touching(labels: np.ndarray) -> bool:
        for left, right in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
            if np.any((left > 0) & (right > 0) & (left != right)):
                return True
        return False

    assert all(touching(tile.instance_labels) for tile in tiles)


def test_stain_shift_between_images(tiles):
    means = [tile.image[tile.instance_labels == 0].reshape(-1, 3).astype(float).mean(0) for tile in tiles]
    largest = max(np.abs(means[0] - other).max() for other in means[1:])
    assert largest > 5.0, f"mean stroma colours barely differ: {means}"


def test_bad_arguments():
    with pytest.raises(ValueError, match="seed"):
        make_synthetic_image(-1)
    with pytest.raises(ValueError, match="size"):
        make_synthetic_image(0, size=0)
    with pytest.raises(ValueError, match="num_images"):
        make_synthetic_set(-1, seed=0)
