"""Macenko stain normalisation (estimate, apply), its low-tissue fallback and the on-disk cache."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from nucseg.data.stain import (
    IdentityStainNormalizer,
    MacenkoStainNormalizer,
    StainEstimate,
    StainNormalizationCache,
    StainNormalizationError,
    apply_stain_transform,
    build_stain_normalizer,
    normalize_images,
    stain_normalizer_from_state_dict,
)
from nucseg.data.stain import cache as stain_cache
from nucseg.data.stain import normalizer as stain_normalizer
from nucseg.data.types import AnnotatedImage

HAEMATOXYLIN = (0.65, 0.70, 0.29)
EOSIN = (0.07, 0.99, 0.11)


def synthetic_he(
    haematoxylin: tuple[float, float, float] = HAEMATOXYLIN,
    eosin: tuple[float, float, float] = EOSIN,
    h_strength: float = 1.0,
    e_strength: float = 1.0,
    size: int = 64,
    seed: int = 1,
) -> np.ndarray:
    """Beer-Lambert H&E: RGB = 240 exp(-(cH vH + cE vE)), nuclei rich in H, background strip white."""
    rng = np.random.default_rng(seed)
    vh = np.asarray(haematoxylin) / np.linalg.norm(haematoxylin)
    ve = np.asarray(eosin) / np.linalg.norm(eosin)
    yy, xx = np.mgrid[:size, :size]
    nuclei = np.zeros((size, size), dtype=bool)
    for _ in range(10):
        cy, cx = rng.integers(0, size, 2)
        nuclei |= (yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(9, 30)
    c_h = np.where(nuclei, rng.uniform(0.8, 1.6, (size, size)), rng.uniform(0.2, 0.5, (size, size)))
    c_e = np.where(nuclei, rng.uniform(0.05, 0.3, (size, size)), rng.uniform(0.4, 1.0, (size, size)))
    background = xx < size // 8
    c_h[background] = 0.0
    c_e[background] = 0.0
    density = h_strength * c_h[..., None] * vh + e_strength * c_e[..., None] * ve
    return np.clip(240.0 * np.exp(-density), 0, 255).astype(np.uint8)


def shifted_he(seed: int = 1) -> np.ndarray:
    """The same tissue as ``synthetic_he(seed=seed)`` with other stain vectors and strengths."""
    return synthetic_he((0.45, 0.80, 0.35), (0.20, 0.90, 0.30), h_strength=1.4, e_strength=0.7, seed=seed)


@pytest.fixture
def fitted() -> MacenkoStainNormalizer:
    return MacenkoStainNormalizer().fit(synthetic_he())


def white(size: int = 32) -> np.ndarray:
    return np.full((size, size, 3), 250, dtype=np.uint8)


def test_normalisation_maps_shifted_stains_towards_reference(fitted):
    reference, shifted = synthetic_he(), shifted_he()
    normalized = fitted.normalize(shifted, name="shifted")
    assert normalized.shape == shifted.shape and normalized.dtype == np.uint8
    before = np.abs(shifted.astype(float) - reference).mean()
    after = np.abs(normalized.astype(float) - reference).mean()
    assert after < 0.25 * before
    # Different tissue, same stains as the shifted image: the mean colour still moves to the reference.
    other = MacenkoStainNormalizer().fit(synthetic_he(seed=2)).normalize(shifted)
    reference_mean = synthetic_he(seed=2).reshape(-1, 3).mean(0)
    assert np.linalg.norm(other.reshape(-1, 3).mean(0) - reference_mean) < 0.5 * np.linalg.norm(
        shifted.reshape(-1, 3).mean(0) - reference_mean
    )
    assert fitted.fallback_count == 0


def test_normalize_is_torchstains_normalize(fitted):
    import torchstain

    library = torchstain.normalizers.MacenkoNormalizer(backend="torch")
    library.HERef = torch.tensor(fitted.state_dict()["HERef"])
    library.maxCRef = torch.tensor(fitted.state_dict()["maxCRef"])
    for seed in (1, 2):
        image = shifted_he(seed=seed)
        expected, _, _ = library.normalize(torch.from_numpy(image).permute(2, 0, 1), stains=False)
        assert np.array_equal(fitted.normalize(image), expected.numpy().astype(np.uint8))


def test_state_dict_round_trip_gives_identical_output(fitted):
    state = json.loads(json.dumps(fitted.state_dict()))  # as a checkpoint would store it
    assert np.asarray(state["HERef"]).shape == (3, 2) and len(state["maxCRef"]) == 2
    restored = stain_normalizer_from_state_dict(state)
    assert isinstance(restored, MacenkoStainNormalizer)
    assert restored.is_fitted and restored.fingerprint() == fitted.fingerprint()
    assert np.array_equal(restored.normalize(shifted_he()), fitted.normalize(shifted_he()))
    # a state without the later parameters (older checkpoints) loads with their defaults
    old = {key: state[key] for key in ("method", "Io", "alpha", "beta", "HERef", "maxCRef")}
    assert stain_normalizer_from_state_dict(old).fingerprint() == fitted.fingerprint()
    with pytest.raises(StainNormalizationError, match="stain state"):
        stain_normalizer_from_state_dict({**state, "HERef": [[1.0, 0.0]]})


def test_fingerprint_depends_on_parameters_and_reference(fitted):
    other_reference = MacenkoStainNormalizer().fit(synthetic_he(seed=2))
    other_beta = MacenkoStainNormalizer(beta=0.2).fit(synthetic_he())
    assert len({fitted.fingerprint(), other_reference.fingerprint(), other_beta.fingerprint()}) == 3


def test_background_image_falls_back_without_raising(fitted, caplog):
    image = white()
    with caplog.at_level(logging.WARNING, logger="nucseg.data.stain"):
        result = fitted.normalize(image, name="blank-slide")
    assert np.array_equal(result, image)
    assert fitted.fallback_count == 1 and fitted.fallback_names == ["blank-slide"]
    assert "blank-slide" in caplog.text


def test_torchstain_index_error_falls_back(fitted, monkeypatch):
    def fail(*args, **kwargs):
        raise IndexError("kthvalue(): Expected reduction dim 0 to have non-zero size.")

    monkeypatch.setattr(stain_normalizer, "estimate_stains", fail)
    image = shifted_he()
    assert np.array_equal(fitted.normalize(image, name="empty"), image)
    assert fitted.fallback_count == 1 and "IndexError" in fitted.last_fallback_reason


def test_nearly_empty_images_never_raise(fitted):
    # With the tissue guard lowered, torchstain itself sees two to five tissue pixels.
    permissive = stain_normalizer_from_state_dict(
        {**fitted.state_dict(), "min_tissue_pixels": 2, "min_tissue_fraction": 0.0}
    )
    rng = np.random.default_rng(0)
    for count in (2, 3, 5):
        image = white()
        image.reshape(-1, 3)[:count] = rng.integers(30, 200, (count, 3))
        result = permissive.normalize(image, name=f"sparse-{count}")
        assert result.shape == image.shape and result.dtype == np.uint8


def test_block_path_for_large_images_matches_one_go(fitted):
    image = shifted_he()
    blocked = stain_normalizer_from_state_dict({**fitted.state_dict(), "max_pixels": 1024})
    difference = np.abs(blocked.normalize(image).astype(int) - fitted.normalize(image))
    assert difference.mean() < 2.0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_estimate_then_apply_equals_normalize(fitted, seed):
    image = shifted_he(seed=seed)
    estimate = fitted.estimate_source(image, name="whole")
    assert isinstance(estimate, StainEstimate)
    assert estimate.stain_matrix.shape == (3, 2) and estimate.max_concentrations.shape == (2,)
    applied = fitted.apply(image, estimate)
    assert applied.shape == image.shape and applied.dtype == np.uint8
    assert np.array_equal(applied, fitted.normalize(image))  # one application for every path
    assert fitted.fallback_count == 0


def test_large_image_normalize_is_estimate_then_apply(fitted):
    blocked = stain_normalizer_from_state_dict({**fitted.state_dict(), "max_pixels": 1024})
    image = shifted_he()
    assert np.array_equal(blocked.normalize(image), blocked.apply(image, blocked.estimate_source(image)))


def test_one_estimate_applied_to_parts_has_no_seams(fitted):
    image = np.concatenate([shifted_he(seed=1), shifted_he(seed=2)[:37]], axis=0)  # 101 x 64
    estimate = fitted.estimate_source(image)
    whole = fitted.apply(image, estimate)
    rows = np.concatenate([fitted.apply(image[:50], estimate), fitted.apply(image[50:], estimate)], axis=0)
    columns = np.concatenate(
        [fitted.apply(image[:, :29], estimate), fitted.apply(image[:, 29:], estimate)], axis=1
    )
    assert np.array_equal(rows, whole) and np.array_equal(columns, whole)
    # a non-contiguous view gives the same pixels as the copy it views
    assert np.array_equal(fitted.apply(image[:, 10:40], estimate), whole[:, 10:40])
    # and the chunk size of the transform does not matter
    reference = fitted.reference
    assert reference is not None
    assert np.array_equal(apply_stain_transform(image, estimate, reference, fitted.Io, chunk_pixels=1000), whole)


def test_background_estimate_falls_back_once_and_apply_keeps_pixels(fitted, caplog):
    with caplog.at_level(logging.WARNING, logger="nucseg.data.stain"):
        estimate = fitted.estimate_source(white(), name="blank-slide")
    assert estimate is None
    assert fitted.fallback_count == 1 and fitted.fallback_names == ["blank-slide"]
    assert caplog.text.count("blank-slide") == 1
    tissue = shifted_he()
    assert np.array_equal(fitted.apply(tissue, estimate), tissue)
    assert fitted.fallback_count == 1  # applying the fallback to regions counts nothing more


def test_degenerate_estimates_are_refused(fitted, monkeypatch):
    with pytest.raises(StainNormalizationError, match="3x2"):
        StainEstimate(np.ones((2, 2)), np.ones(2))
    with pytest.raises(StainNormalizationError, match="degenerate"):
        StainEstimate(np.ones((3, 2)), np.array([1.0, 0.0]))

    def fail(*args, **kwargs):
        raise RuntimeError("linalg.eigh: The algorithm failed to converge")

    monkeypatch.setattr(stain_normalizer, "estimate_stains", fail)
    assert fitted.estimate_source(shifted_he(), name="odd") is None
    assert fitted.fallback_count == 1 and "RuntimeError" in fitted.last_fallback_reason


def test_unfitted_normaliser_and_bad_reference_give_clear_errors():
    with pytest.raises(StainNormalizationError, match="not fitted"):
        MacenkoStainNormalizer().normalize(synthetic_he())
    with pytest.raises(StainNormalizationError, match="not fitted"):
        MacenkoStainNormalizer().estimate_source(synthetic_he())
    with pytest.raises(StainNormalizationError, match="tissue"):
        MacenkoStainNormalizer().fit(white())
    with pytest.raises(StainNormalizationError, match="uint8"):
        MacenkoStainNormalizer().fit(synthetic_he().astype(np.float32))


def test_registry_and_identity():
    assert isinstance(build_stain_normalizer("macenko", beta=0.2), MacenkoStainNormalizer)
    identity = build_stain_normalizer("none")
    assert isinstance(identity, IdentityStainNormalizer) and identity.is_fitted
    image = synthetic_he()
    assert np.array_equal(identity.fit(image).normalize(image), image)
    estimate = identity.estimate_source(image)
    assert estimate is None and np.array_equal(identity.apply(image[5:20], estimate), image[5:20])
    assert identity.fallback_count == 0
    assert stain_normalizer_from_state_dict(identity.state_dict()).method == "none"
    with pytest.raises(StainNormalizationError, match="unknown"):
        build_stain_normalizer("reinhard-typo")


def test_cache_miss_then_hit_without_recomputing(fitted, tmp_path, monkeypatch):
    cache = StainNormalizationCache(tmp_path)
    image = shifted_he()
    first = cache.normalize(image, fitted, name="a")
    assert (cache.hits, cache.misses) == (0, 1)
    assert len(list(tmp_path.iterdir())) == 1

    def must_not_run(*args, **kwargs):
        raise AssertionError("normaliser called on a cache hit")

    monkeypatch.setattr(fitted, "normalize", must_not_run)
    second = cache.normalize(image, fitted, name="a")
    assert (cache.hits, cache.misses) == (1, 1)
    assert np.array_equal(first, second)


def test_cache_misses_for_other_fingerprint(fitted, tmp_path):
    cache = StainNormalizationCache(tmp_path)
    image = shifted_he()
    cache.normalize(image, fitted)
    cache.normalize(image, MacenkoStainNormalizer().fit(synthetic_he(seed=2)))
    assert (cache.hits, cache.misses) == (0, 2)
    assert len(list(tmp_path.glob("*.npy"))) == 2


def test_cache_misses_for_other_torch_or_torchstain_versions(fitted, tmp_path, monkeypatch):
    assert f"torch={torch.__version__}|torchstain=" in stain_cache.library_versions()
    cache = StainNormalizationCache(tmp_path)
    image = shifted_he()
    cache.normalize(image, fitted)
    current = stain_cache.library_versions()
    for other in (current.replace("torch=", "torch=0.0+"), current.replace("torchstain=", "torchstain=0.0+")):
        monkeypatch.setattr(stain_cache, "library_versions", lambda other=other: other)
        cache.normalize(image, fitted)
    assert (cache.hits, cache.misses) == (0, 3)
    assert len(list(tmp_path.glob("*.npy"))) == 3
    monkeypatch.setattr(stain_cache, "library_versions", lambda: current)
    cache.normalize(image, fitted)
    assert cache.hits == 1


def test_truncated_cache_file_is_recomputed(fitted, tmp_path):
    cache = StainNormalizationCache(tmp_path)
    image = shifted_he()
    expected = cache.normalize(image, fitted)
    (entry,) = tmp_path.glob("*.npy")
    entry.write_bytes(entry.read_bytes()[:100])
    assert np.array_equal(cache.normalize(image, fitted), expected)
    assert (cache.hits, cache.misses) == (0, 2)
    assert np.array_equal(cache.normalize(image, fitted), expected)
    assert cache.hits == 1


def test_cached_fallback_is_still_counted(fitted, tmp_path):
    image = white()
    StainNormalizationCache(tmp_path).normalize(image, fitted, name="blank")
    assert fitted.fallback_count == 1
    (marker,) = tmp_path.iterdir()
    assert marker.name.endswith(".fallback.json")

    later_run = stain_normalizer_from_state_dict(fitted.state_dict())
    cache = StainNormalizationCache(tmp_path)
    assert np.array_equal(cache.normalize(image, later_run, name="blank"), image)
    assert cache.hits == 1 and later_run.fallback_count == 1 and later_run.fallback_names == ["blank"]


def test_normalize_images_keeps_labels_and_logs_summary(fitted, tmp_path, caplog):
    labels = np.zeros((64, 64), dtype=np.int32)
    labels[10:20, 10:20] = 1
    items = [AnnotatedImage("tissue", shifted_he(), labels), AnnotatedImage("blank", white(64), labels)]
    cache = StainNormalizationCache(tmp_path)
    with caplog.at_level(logging.INFO, logger="nucseg.data.stain"):
        result = normalize_images(items, fitted, cache)
    assert [item.name for item in result] == ["tissue", "blank"]
    assert all(out.instance_labels is item.instance_labels for out, item in zip(result, items, strict=True))
    assert not np.array_equal(result[0].image, items[0].image)
    assert np.array_equal(result[1].image, items[1].image)
    assert "2 images" in caplog.text and "1 fallbacks (blank)" in caplog.text
