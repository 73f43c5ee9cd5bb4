"""Instances in predict: the run's post-processing, its threshold, and seams of streamed bands."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.segmentation import watershed

from nucseg.inference.instances import (
    HaloBandLabeller,
    PostprocessSettings,
    canonical_labels,
    heads_of,
    instance_function,
    postprocess_settings,
)
from nucseg.inference.settings import InferenceSettings


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


def contour_probabilities(foreground: np.ndarray) -> np.ndarray:
    """(3, H, W) background / interior / boundary probabilities of a blob map (touching blobs meet on a boundary)."""
    blobs = foreground[0]
    peaks = ndimage.label(blobs > 0.8)[0]
    instances = watershed(-blobs, peaks, mask=blobs > 0.3)
    interior = ndimage.binary_erosion(instances > 0, iterations=2) & (
        ndimage.maximum_filter(instances, 3)
        == ndimage.minimum_filter(np.where(instances > 0, instances, 10**6), 3)
    )
    boundary = (instances > 0) & ~interior
    one_hot = np.stack([instances == 0, interior, boundary]).astype(np.float32)
    smooth = np.stack([ndimage.gaussian_filter(channel, 0.7) for channel in one_hot]) + 1e-3
    return smooth / smooth.sum(axis=0, keepdims=True)


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


@pytest.mark.parametrize("target", ["binary", "contour"])
def test_streamed_bands_neither_split_nor_merge_nuclei(target: str) -> None:
    """The run's own post-processing (components, watershed) streamed in bands with a halo."""
    probabilities = blob_probabilities(300, 260)
    if target == "contour":
        probabilities = contour_probabilities(probabilities)
    labeller = instance_function(PostprocessSettings(threshold=0.4, min_size=5, target=target))
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


def test_threshold_and_min_size_are_the_runs_postprocess_rule() -> None:
    probabilities = np.full((1, 6, 6), 0.2, np.float32)
    probabilities[0, 0, 0] = 0.5  # exactly at the threshold: background, as torchmetrics in the test
    probabilities[0, 0, 5] = 0.51
    probabilities[0, 3:6, 3:6] = 0.9
    labels = instance_function(PostprocessSettings(threshold=0.5, min_size=1))(probabilities)
    assert labels.max() == 2 and labels[0, 0] == 0 and labels[0, 5] == 1
    labels = instance_function(PostprocessSettings(threshold=0.5, min_size=2))(probabilities)
    assert labels.max() == 1 and np.count_nonzero(labels) == 9


def test_settings_follow_the_module_and_the_command_line() -> None:
    params = {"threshold": 0.4, "marker_threshold": 0.6}
    settings = postprocess_settings("contour", params, min_size=7)
    assert settings.target == "contour" and settings.threshold == 0.4 and settings.min_size == 7
    assert settings.params["marker_threshold"] == 0.6 and settings.params["min_size"] == 7
    assert instance_function(settings)(np.zeros((3, 5, 6), np.float32)).shape == (5, 6)
    with pytest.raises(ValueError, match="binary runs"):
        postprocess_settings("contour", params, connectivity=2)


def test_the_target_defaults_fill_what_the_run_leaves_out() -> None:
    settings = postprocess_settings()
    assert (settings.target, settings.threshold, settings.min_size, settings.connectivity) == (
        "binary",
        0.5,
        0,
        1,
    )
    distance = postprocess_settings("distance", {"h": 0.3})
    assert distance.target == "distance" and distance.params["h"] == 0.3 and distance.min_size == 10


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


def test_a_contour_run_predicts_in_memory_and_streamed_alike(tmp_path) -> None:
    """A three-channel network goes through predict whole (all channels reach the watershed)."""
    import tifffile
    import torch

    from nucseg.predict.grid import OutputPaths
    from nucseg.predict.runner import predict_file

    class DarkNucleiContour(torch.nn.Module):
        """Logits of background / interior / boundary from darkness: dark discs are nuclei."""

        def __init__(self) -> None:
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(()))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            dark = 1.0 - images.mean(dim=1, keepdim=True)
            return torch.cat([(0.5 - dark) * 20, (dark - 0.5) * 20, torch.zeros_like(dark)], dim=1) + self.anchor

        def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
            return torch.softmax(logits, dim=1)

        def foreground_probability(self, probabilities: torch.Tensor) -> torch.Tensor:
            return 1.0 - probabilities[:, :1]

    image = np.full((96, 96, 3), 230, np.uint8)
    rows, cols = np.mgrid[:96, :96]
    for y, x in [(20, 20), (20, 60), (70, 40)]:
        image[(rows - y) ** 2 + (cols - x) ** 2 <= 81] = 40
    path = tmp_path / "tile.tif"
    tifffile.imwrite(path, image)
    settings = PostprocessSettings(target="contour", params={"threshold": 0.5, "marker_threshold": 0.5, "min_size": 5})
    tiling = InferenceSettings(tile_size=64, overlap=16)
    counts = []
    for stream_above in (10**9, 1000):  # in memory, then streamed
        paths = OutputPaths.for_image(tmp_path / str(stream_above), "tile")
        result = predict_file(path, DarkNucleiContour(), paths, None, tiling, settings, stream_above, mpp=0.25, model_mpp=0.25)
        counts.append(result.nuclei)
    assert counts == [3, 3]
