"""Pixel size: read from metadata, recorded in outputs, and resampling to the model's scale."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from nucseg.inference.settings import InferenceSettings
from nucseg.inference.streaming import (
    ArrayRegionReader,
    ResampledRegionReader,
    linear_weights,
    nearest_indices,
    resample_region,
)
from nucseg.predict.grid import OutputPaths, work_grid
from nucseg.predict.runner import predict_file
from nucseg.utils.resolution import (
    DEFAULT_MODEL_MPP,
    model_pixel_size,
    read_pixel_size,
    tiff_resolution,
)

BACKGROUND, NUCLEUS = (232, 196, 222), (92, 58, 140)


def test_pixel_size_from_tiff_resolution_tags(tmp_path: Path) -> None:
    image = np.zeros((16, 16, 3), np.uint8)
    tifffile.imwrite(tmp_path / "cm.tif", image, **tiff_resolution(0.5))
    tifffile.imwrite(
        tmp_path / "inch.tif", image, resolution=(25_400 / 0.25, 25_400 / 0.25), resolutionunit=2
    )
    tifffile.imwrite(tmp_path / "dpi72.tif", image, resolution=(72, 72), resolutionunit=2)  # MoNuSeg's
    tifffile.imwrite(tmp_path / "none.tif", image, resolution=(2, 2), resolutionunit=1)
    assert read_pixel_size(tmp_path / "cm.tif").mpp == pytest.approx(0.5)
    assert read_pixel_size(tmp_path / "inch.tif").mpp == pytest.approx(0.25)
    assert read_pixel_size(tmp_path / "dpi72.tif") is None  # 353 µm/px: a placeholder
    assert read_pixel_size(tmp_path / "none.tif") is None


def test_pixel_size_from_aperio_and_ome_descriptions(tmp_path: Path) -> None:
    image = np.zeros((16, 16, 3), np.uint8)
    tifffile.imwrite(
        tmp_path / "aperio.tif", image, description="Aperio Image Library v11|AppMag = 40|MPP = 0.2527"
    )
    found = read_pixel_size(tmp_path / "aperio.tif")
    assert found.mpp == pytest.approx(0.2527) and "Aperio" in found.source
    tifffile.imwrite(
        tmp_path / "ome.ome.tif",
        image,
        photometric="rgb",
        metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeXUnit": "µm"},
    )
    found = read_pixel_size(tmp_path / "ome.ome.tif")
    assert found.mpp == pytest.approx(0.5) and "OME" in found.source
    Image.fromarray(image).save(tmp_path / "phys.png", dpi=(25_400 / 0.25, 25_400 / 0.25))
    assert read_pixel_size(tmp_path / "phys.png").mpp == pytest.approx(0.25, rel=1e-3)
    Image.fromarray(image).save(tmp_path / "plain.png")
    assert read_pixel_size(tmp_path / "plain.png") is None


def test_model_pixel_size_defaults_for_old_runs(caplog: pytest.LogCaptureFixture) -> None:
    assert model_pixel_size({"data": {"mpp": 0.5}}) == 0.5
    with caplog.at_level(logging.WARNING):
        assert model_pixel_size({"data": {}}, "old.ckpt") == DEFAULT_MODEL_MPP
    assert "old.ckpt" in caplog.text and "data.mpp" in caplog.text
    with pytest.raises(ValueError, match="data.mpp"):
        model_pixel_size({"data": {"mpp": 250}})


def test_work_grid_resamples_only_beyond_five_percent() -> None:
    assert not work_grid(100, 80, 0.2527, 0.25).resampled
    assert not work_grid(100, 80, None, 0.25).resampled
    grid = work_grid(100, 80, 0.5, 0.25)
    assert (grid.work_height, grid.work_width) == (200, 160) and grid.work_mpp == pytest.approx(0.25)
    assert grid.scale == (0.5, 0.5)


def test_region_resampling_equals_whole_resampling_and_matches_torch() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53, 3)).astype(np.uint8)
    reader = ArrayRegionReader(image)
    for size in ((74, 106), (19, 27)):
        whole = resample_region(reader.read, image.shape[:2], size, 0, 0, *size)
        pieces = np.concatenate(
            [
                np.concatenate(
                    [
                        resample_region(reader.read, image.shape[:2], size, t, left, 10, 13)
                        for left in range(0, size[1], 13)
                    ],
                    axis=1,
                )
                for t in range(0, size[0], 10)
            ],
            axis=0,
        )
        assert np.allclose(whole, pieces, atol=1e-3)
    # upsampling is plain bilinear with aligned centres: torch's interpolate
    up = resample_region(reader.read, image.shape[:2], (74, 106), 0, 0, 74, 106)
    expected = F.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None].float(),
        size=(74, 106),
        mode="bilinear",
        align_corners=False,
    )[0].permute(1, 2, 0)
    assert np.abs(up - expected.numpy()).max() < 1e-3
    assert ResampledRegionReader(reader, 74, 106).read(0, 0, 74, 106).dtype == np.uint8
    start, weights = linear_weights(0, 5, 10, 5)  # halving: 2-pixel-wide triangle, rows sum to 1
    assert start == 0 and np.allclose(weights.sum(axis=1), 1.0)
    assert list(nearest_indices(0, 4, 8, 4)) == [1, 3, 5, 7]


class ScaleBoundNet(nn.Module):
    """A stand-in model that only works at its training scale (0.25 µm/px).

    Dark pixels are nuclei, but only in dark regions that hold a disk of radius ``radius``
    pixels (an erosion, then the dark pixels within ``radius + 2`` of what is left): nuclei
    smaller than that, as they look at a coarser pixel size, are not found at all.
    """

    def __init__(self, radius: int = 11) -> None:
        super().__init__()
        self.radius = radius
        self.register_buffer("erode", self._disk(radius))
        self.register_buffer("dilate", self._disk(radius + 2))

    @staticmethod
    def _disk(radius: int) -> torch.Tensor:
        yy, xx = torch.meshgrid(
            torch.arange(-radius, radius + 1), torch.arange(-radius, radius + 1), indexing="ij"
        )
        return ((yy**2 + xx**2) <= radius**2).float()[None, None]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        dark = (images.mean(dim=1, keepdim=True) < 0.62).float()
        # replicate padding: a nucleus cut by the tile's edge is not eroded away
        inside = F.conv2d(F.pad(dark, (self.radius,) * 4, mode="replicate"), self.erode)
        inside = (inside >= self.erode.sum() - 0.5).float()
        near = F.conv2d(F.pad(inside, (self.radius + 2,) * 4, mode="replicate"), self.dilate) > 0.5
        return torch.where(near & (dark > 0), 8.0, -8.0)


def twenty_x_image(size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An image at 0.5 µm/px with separate round nuclei of radius 3.5-5 µm, and their labels."""
    rng = np.random.default_rng(seed)
    image = np.empty((size, size, 3), np.uint8)
    image[:] = BACKGROUND
    labels = np.zeros((size, size), np.int32)
    rows, cols = np.ogrid[:size, :size]
    count = 0
    for _ in range(400):
        radius = rng.uniform(7.0, 10.0)
        r, c = rng.uniform(radius + 3, size - radius - 3, 2)
        disk = (rows - r) ** 2 + (cols - c) ** 2 <= radius**2
        grown = (rows - r) ** 2 + (cols - c) ** 2 <= (radius + 3) ** 2
        if labels[grown].any():
            continue
        count += 1
        labels[disk] = count
        image[disk] = NUCLEUS
        if count == 40:
            break
    return image, labels


def nucleus_areas_um2(out: Path, stem: str) -> tuple[np.ndarray, dict[int, float]]:
    with open(out / f"{stem}_nuclei.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return tifffile.imread(out / f"{stem}_labels.tif"), {int(r["Label"]): float(r["Area µm^2"]) for r in rows}


def test_20x_image_is_predicted_at_the_model_scale_and_mapped_back(tmp_path: Path) -> None:
    """Done-when: a 0.5 µm/px TIFF, a model trained at 0.25 µm/px, areas in µm² within 10 %."""
    image, truth = twenty_x_image()
    tiff = tmp_path / "slide20x.tif"
    tifffile.imwrite(tiff, image, photometric="rgb", **tiff_resolution(0.5))
    tiling = InferenceSettings(tile_size=128, overlap=32, batch_size=4)
    model = ScaleBoundNet().eval()
    result = predict_file(tiff, model, OutputPaths.for_image(tmp_path / "out", "s"), None, tiling)
    assert result.resampled and result.mpp == pytest.approx(0.5) and result.model_mpp == 0.25
    labels, areas = nucleus_areas_um2(tmp_path / "out", "s")
    assert labels.shape == truth.shape  # the input's pixel grid
    errors = []
    for index in range(1, truth.max() + 1):
        found = np.bincount(labels[truth == index]).argmax()
        assert found > 0, f"nucleus {index} missed"
        truth_area = np.count_nonzero(truth == index) * 0.5**2
        errors.append(abs(areas[found] - truth_area) / truth_area)
    assert max(errors) < 0.10, f"area errors up to {max(errors):.3f}"
    assert len(areas) == truth.max()
    # the label TIFF records the pixel size; the GeoJSON its scale and polygons in input pixels
    assert read_pixel_size(tmp_path / "out" / "s_labels.tif").mpp == pytest.approx(0.5)
    document = json.loads((tmp_path / "out" / "s.geojson").read_text(encoding="utf-8"))
    assert document["nucseg"]["pixel_size_um"] == 0.5 and document["nucseg"]["units"] == "µm"
    for feature in document["features"]:
        ring = np.asarray(feature["geometry"]["coordinates"][0])
        x, y = ring[:, 0], ring[:, 1]
        polygon_px = 0.5 * abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))
        measured = feature["properties"]["measurements"]["Area µm^2"]
        assert polygon_px * 0.25 == pytest.approx(measured, rel=0.1)
        assert x.max() <= 256 and y.max() <= 256

    # the same image predicted as if it were at the model's scale: the model finds nothing
    tifffile.imwrite(tmp_path / "unscaled.tif", image, photometric="rgb")
    missed = predict_file(
        tmp_path / "unscaled.tif", model, OutputPaths.for_image(tmp_path / "o2", "u"), None, tiling
    )
    assert not missed.resampled and missed.nuclei < truth.max() // 4


def test_streamed_resampled_prediction_equals_in_memory(tmp_path: Path) -> None:
    image, _ = twenty_x_image(200, seed=2)
    tiff = tmp_path / "x.tif"
    tifffile.imwrite(tiff, image, photometric="rgb", tile=(64, 64), **tiff_resolution(0.5))
    tiling = InferenceSettings(tile_size=128, overlap=32, batch_size=4)
    model = ScaleBoundNet().eval()
    memory = predict_file(
        tiff, model, OutputPaths.for_image(tmp_path / "m", "x", probability=True), None, tiling
    )
    streamed = predict_file(
        tiff,
        model,
        OutputPaths.for_image(tmp_path / "s", "x", probability=True),
        None,
        tiling,
        stream_above=1000,
    )
    assert streamed.streamed and streamed.resampled and memory.nuclei == streamed.nuclei > 10
    assert np.array_equal(
        tifffile.imread(tmp_path / "m/x_labels.tif"), tifffile.imread(tmp_path / "s/x_labels.tif")
    )
    difference = tifffile.imread(tmp_path / "m/x_prob.tif").astype(int) - tifffile.imread(
        tmp_path / "s/x_prob.tif"
    )
    assert np.abs(difference).max() <= 1
    assert (tmp_path / "m/x_nuclei.csv").read_text() == (tmp_path / "s/x_nuclei.csv").read_text()


@pytest.mark.parametrize("data", ["synthetic", "monuseg"])
def test_data_configs_record_their_pixel_size(compose_train, data: str) -> None:
    from hydra.utils import instantiate

    cfg = compose_train([f"data={data}"], tiny=data == "synthetic")
    assert cfg.data.mpp == 0.25
    assert model_pixel_size({"data": {"mpp": cfg.data.mpp}}) == 0.25
    if data == "synthetic":
        assert instantiate(cfg.data).mpp == 0.25  # the data module accepts (and keeps) the key
