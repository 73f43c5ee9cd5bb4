"""Instances in predict: the run's post-processing, its threshold, and seams of streamed bands."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage
from skimage.segmentation import watershed

import nucseg.postprocess as postprocess_package
from nucseg.inference.instances import (
    HaloBandLabeller,
    PostprocessSettings,
    canonical_labels,
    heads_of,
    instance_function,
    settings_from_model,
)


def blob_probabilities(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(1, H, W) smooth foreground probabilities: round blobs, many pairs touching, some on band borders."""
    rng = np.random.default_rng(seed)
    rows, cols = np.ogrid[:height, :width]
    field = np.zeros((height, width), np.float32)
    centres = [
        (r, c) for r in (60, 64, 128, 192, 250) for c in range(15, width - 15, 37)
    ]  # on borders 64/128/192
    centres += [tuple(rng.uniform(10, (height - 10, width - 10))) for _ in range(40)]
    for r, c in centres:
        radius = rng.uniform(5, 11)
        field = np.maximum(
            field, np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * radius**2)).astype(np.float32)
        )
    return field[None]


def watershed_labeller(probabilities: np.ndarray) -> np.ndarray:
    """A marker-controlled watershed, like the contour/distance post-processing: splits touching blobs."""
    foreground = probabilities[0] > 0.3
    markers, _ = ndimage.label(probabilities[0] > 0.8)
    return watershed(-probabilities[0], markers, mask=foreground)


def stream(
    labeller, probabilities: np.ndarray, band_rows: int, halo: int, chunk_rows: list[int]
) -> np.ndarray:
    """Labels of ``probabilities`` fed to a HaloBandLabeller in chunks of the given heights."""
    height = probabilities.shape[1]
    halo_labeller = HaloBandLabeller(labeller, height, band_rows, halo)
    rows, top, index = [], 0, 0
    while top < height:
        size = chunk_rows[index % len(chunk_rows)]
        index += 1
        for band in halo_labeller.add(probabilities[:, top : top + size]):
            rows.append(band.rows)
            objects = band.objects
            assert band.window_top <= band.top and objects.shape[1] == probabilities.shape[2]
        top += size
    list(halo_labeller.finish())
    return np.concatenate(rows)


@pytest.mark.parametrize("labeller_name", ["components", "watershed"])
def test_streamed_bands_neither_split_nor_merge_nuclei(labeller_name: str) -> None:
    probabilities = blob_probabilities(300, 260)
    if labeller_name == "watershed":
        labeller = watershed_labeller
    else:
        labeller = instance_function(PostprocessSettings(threshold=0.4, min_size=5))
    whole = canonical_labels(labeller(probabilities))
    assert whole.max() > 25
    # nuclei cross the band borders at rows 64, 128, 192
    for border in (64, 128, 192):
        crossing = np.intersect1d(whole[border - 1], whole[border])
        assert np.count_nonzero(crossing) >= 3
    streamed = stream(labeller, probabilities, band_rows=64, halo=64, chunk_rows=[17, 50, 3, 90])
    assert np.array_equal(streamed, whole)  # same ids, not only the same partition


def test_halo_labeller_reports_nuclei_taller_than_the_halo(caplog: pytest.LogCaptureFixture) -> None:
    probabilities = np.zeros((1, 100, 20), np.float32)
    probabilities[0, 10:90, 5:10] = 1.0  # an 80-row object, halo 16
    labeller = instance_function(PostprocessSettings(min_size=1))
    streamed = stream(labeller, probabilities, band_rows=32, halo=16, chunk_rows=[100])
    assert streamed.max() == 1 and np.count_nonzero(streamed) < 80 * 5  # cut, as the warning says
    assert "taller than 16 rows" in caplog.text


def test_fallback_threshold_is_strict_like_the_test_metrics() -> None:
    probabilities = np.full((1, 4, 4), 0.5, np.float32)
    probabilities[0, 0, 0] = 0.51
    labels = instance_function(PostprocessSettings(threshold=0.5, min_size=1))(probabilities)
    assert labels.sum() == 1 and labels[0, 0] == 1  # p == threshold is background, as in torchmetrics


def test_min_size_drops_specks() -> None:
    probabilities = np.zeros((1, 10, 10), np.float32)
    probabilities[0, 1:3, 1:3] = 1  # 4 pixels
    probabilities[0, 5:9, 5:9] = 1  # 16 pixels
    labels = instance_function(PostprocessSettings(min_size=5))(probabilities)
    assert labels.max() == 1 and np.count_nonzero(labels) == 16


def test_run_postprocess_is_used_when_the_package_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_postprocess(probabilities: np.ndarray, target: str, **params: object) -> np.ndarray:
        calls.append((probabilities.shape, target, params))
        return np.ones(probabilities.shape[1:], np.int32)

    monkeypatch.setattr(postprocess_package, "postprocess", fake_postprocess, raising=False)
    model = SimpleNamespace(
        threshold=0.5,
        run_config={"module": {"target": "contour", "postprocess": {"min_distance": 3, "threshold": 0.4}}},
    )
    settings = settings_from_model(model, min_size=7)
    assert settings.target == "contour" and settings.threshold == 0.4
    labels = instance_function(settings)(np.zeros((3, 5, 6), np.float32))
    assert labels.shape == (5, 6)
    assert calls == [((3, 5, 6), "contour", {"min_distance": 3, "threshold": 0.4, "min_size": 7})]


def test_contour_target_without_run_postprocess_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(postprocess_package, "postprocess", raising=False)
    with pytest.raises(ValueError, match="contour"):
        instance_function(PostprocessSettings(target="contour"))


def test_old_runs_get_binary_settings_with_the_module_threshold() -> None:
    settings = settings_from_model(SimpleNamespace(threshold=0.35, run_config={"module": {}}))
    assert (settings.target, settings.threshold, settings.min_size, settings.connectivity) == (
        "binary",
        0.35,
        10,
        1,
    )


def test_canonical_labels_numbers_in_raster_order() -> None:
    labels = np.array([[0, 7, 7], [3, 0, 9], [3, 0, 0]])
    assert canonical_labels(labels).tolist() == [[0, 1, 1], [2, 0, 3], [2, 0, 0]]
    assert canonical_labels(np.zeros((2, 2), int)).max() == 0


def test_heads_use_the_module_probabilities_when_present() -> None:
    import torch

    class ThreeClass:
        def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
            return torch.softmax(logits, dim=1)

        def foreground_probability(self, probabilities: torch.Tensor) -> torch.Tensor:
            return probabilities[:, 1:].sum(dim=1, keepdim=True)

    logits = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
    heads = heads_of(ThreeClass())
    probabilities = heads.probabilities(logits)
    assert probabilities.shape == (3, 4, 5) and np.allclose(probabilities.sum(axis=0), 1, atol=1e-6)
    assert np.allclose(heads.foreground(probabilities), 1 - probabilities[0], atol=1e-6)
    plain = heads_of(object())
    assert np.allclose(plain.probabilities(np.zeros((1, 2, 2))), 0.5)
