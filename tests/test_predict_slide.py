"""Whole slides in predict: nearest level, tissue-only blocks, level-0 coordinates, --offset."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from helpers import DarknessNet
from PIL import Image
from test_slide import write_subifd_pyramid, write_svs_like  # tests/ is on sys.path

import nucseg.predict.cli as predict_cli
from nucseg.checkpoint import TrainedModel
from nucseg.inference.settings import InferenceSettings
from nucseg.inference.streaming import ArrayRegionReader, stream_logits
from nucseg.predict.runner import background_logits, is_slide

needs_tiffslide = pytest.mark.skipif(
    importlib.util.find_spec("tiffslide") is None,
    reason="whole-slide reading needs the 'wsi' extra (tiffslide)",
)

SIZE = 1024  # level 0 is SIZE x SIZE at 0.25 µm/px; level 1 is half that at 0.5 µm/px
#: Nuclei (x, y, radius) in level-0 pixels, all in the top half (the tissue); the bottom half is glass.
DISCS = [(200, 150, 18), (600, 300, 16), (850, 120, 20), (400, 420, 16)]


def slide_levels() -> list[np.ndarray]:
    """Pink tissue with dark purple discs in the top half, white glass below; level 1 by 2x2 means."""
    rng = np.random.default_rng(1)
    image = np.full((SIZE, SIZE, 3), 245, np.uint8)
    tissue = np.array([200, 110, 170]) + rng.integers(-10, 10, (SIZE // 2, SIZE, 3))
    image[: SIZE // 2] = np.clip(tissue, 0, 255)
    rows, cols = np.ogrid[:SIZE, :SIZE]
    for x, y, radius in DISCS:
        image[(cols + 0.5 - x) ** 2 + (rows + 0.5 - y) ** 2 <= radius**2] = (80, 40, 120)
    level1 = image.reshape(SIZE // 2, 2, SIZE // 2, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    return [image, level1]


class SlideModel(DarknessNet):
    """A network that counts the tiles it sees (``model`` loads it as a run trained at 0.5 µm/px,
    with ``stain_normalizer`` as its stain reference)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv.padding_mode = "replicate"  # no dark frame from zero padding at the slide's edges
        self.tiles_seen = 0
        self.stain_normalizer = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.tiles_seen += images.shape[0]
        return super().forward(images)


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch) -> SlideModel:
    module = SlideModel().eval()

    def load(checkpoint: str, device: str) -> TrainedModel:
        settings = InferenceSettings(tile_size=64, overlap=16)
        return TrainedModel(module, {"data": {"mpp": 0.5}}, inference=settings, stain_normalizer=module.stain_normalizer)

    monkeypatch.setattr(predict_cli, "_load", load)
    return module


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_subifd_pyramid(tmp_path_factory.mktemp("slide") / "case.tif", slide_levels(), mpp=0.25)


def run(slide: Path, out: Path, *extra: str) -> None:
    code = predict_cli.main([str(slide), "-c", "run", "-o", str(out), "--no-progress", *extra])
    assert code == 0


def polygon_centroids(path: Path) -> np.ndarray:
    """(n, 2) area centroids (x, y) of the GeoJSON polygons, sorted by x."""
    centroids = []
    for feature in json.loads(path.read_text())["features"]:
        ring = np.array(feature["geometry"]["coordinates"][0])
        x, y = ring[:-1, 0], ring[:-1, 1]
        cross = x * np.roll(y, -1) - np.roll(x, -1) * y
        area = cross.sum() / 2
        centroids.append(
            ((x + np.roll(x, -1)) @ cross / (6 * area), (y + np.roll(y, -1)) @ cross / (6 * area))
        )
    return np.array(sorted(centroids))


@needs_tiffslide
def test_slide_is_predicted_at_the_nearest_level_on_tissue_only(
    model: SlideModel, slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert is_slide(slide)
    run(slide, tmp_path / "out")
    printed = capsys.readouterr().out
    # level 1 (0.5 µm/px) matches the model; 64-px tiles at stride 48 (the last flush with the
    # edge) make 11 x 11 tiles in blocks of 2 x 8 tiles: 6 block rows x 2 block columns; the
    # block rows starting at level-1 rows 288, 384 and 448 see only glass
    assert (
        "512x512 (0.5 µm/px, slide level 1 (downsample 2), 6 of 12 blocks without tissue skipped), 4 nuclei"
        in printed
    )
    assert model.tiles_seen == 6 * 11  # 3 block rows of 2 tile rows x 11 tile columns

    geojson = json.loads((tmp_path / "out" / "case.geojson").read_text())
    assert geojson["nucseg"]["pixel_size_um"] == pytest.approx(0.5)
    assert geojson["nucseg"]["coordinates"]["pixel_size_um"] == pytest.approx(0.25)
    assert geojson["nucseg"]["coordinates"]["downsample_xy"] == [2.0, 2.0]
    for feature in geojson["features"]:
        properties = feature["properties"]
        assert properties["objectType"] == "detection"
        assert properties["classification"]["name"] == "Nucleus"
        assert "Area µm^2" in properties["measurements"] and "Centroid X µm" in properties["measurements"]
    # areas in µm² at the level's 0.5 µm/px: a label's pixels times 0.25 µm²
    labels = tifffile.imread(tmp_path / "out" / "case_labels.tif")
    for feature in geojson["features"]:
        measurements = feature["properties"]["measurements"]
        pixels = int((labels == measurements["Label"]).sum())
        assert measurements["Area µm^2"] == pytest.approx(pixels * 0.25) and pixels > 150
    # polygons in level-0 pixels: each nucleus centred where its disc is at level 0
    discs = np.array(sorted((x, y) for x, y, _ in DISCS), dtype=float)
    np.testing.assert_allclose(polygon_centroids(tmp_path / "out" / "case.geojson"), discs, atol=1.5)
    with open(tmp_path / "out" / "case_nuclei.csv", encoding="utf-8") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda row: float(row["Centroid X µm"]))
    centroids_um = np.array([[float(row["Centroid X µm"]), float(row["Centroid Y µm"])] for row in rows])
    np.testing.assert_allclose(centroids_um, discs * 0.25, atol=0.5)
    # rasters stay on the level's grid; no PNGs for a slide unless asked
    assert labels.shape == (512, 512) and labels.max() == 4 and not labels[300:].any()
    assert not (tmp_path / "out" / "case_mask.png").exists()
    assert not (tmp_path / "out" / "case_overlay.png").exists()


@needs_tiffslide
def test_offset_shifts_polygons_and_centroids(model: SlideModel, slide: Path, tmp_path: Path) -> None:
    run(slide, tmp_path / "plain", "--no-tissue")
    assert model.tiles_seen == 11 * 11  # --no-tissue predicts every block
    run(slide, tmp_path / "shifted", "--offset", "1000", "2000")
    plain = polygon_centroids(tmp_path / "plain" / "case.geojson")
    shifted = polygon_centroids(tmp_path / "shifted" / "case.geojson")
    np.testing.assert_allclose(shifted, plain + [1000, 2000], atol=1e-3)
    with open(tmp_path / "shifted" / "case_nuclei.csv", encoding="utf-8") as handle:
        xs = sorted(float(row["Centroid X µm"]) for row in csv.DictReader(handle))
    np.testing.assert_allclose(xs, sorted((x + 1000) * 0.25 for x, _, _ in DISCS), atol=0.5)


@needs_tiffslide
def test_aperio_svs_with_mpp_in_its_description(model: SlideModel, tmp_path: Path) -> None:
    levels = slide_levels()
    svs = write_svs_like(tmp_path / "scan.svs", [*levels, levels[1][::2, ::2]], mpp=0.25)
    result = predict_cli.main([str(svs), "-c", "run", "-o", str(tmp_path / "out"), "--no-progress", "--png"])
    assert result == 0
    discs = np.array(sorted((x, y) for x, y, _ in DISCS), dtype=float)
    np.testing.assert_allclose(polygon_centroids(tmp_path / "out" / "scan.geojson"), discs, atol=1.5)
    assert (tmp_path / "out" / "scan_mask.png").is_file()  # --png asks for them


class RecordingStains:
    """A stain reference split into estimate and apply, recording what it is given."""

    def __init__(self) -> None:
        self.estimated: list[tuple[int, ...]] = []
        self.applied = 0

    def estimate_source(self, image: np.ndarray, name: str | None = None) -> str:
        self.estimated.append(image.shape)
        return "estimate"

    def apply(self, image: np.ndarray, estimate: str) -> np.ndarray:
        assert estimate == "estimate"
        self.applied += 1
        return image


@needs_tiffslide
def test_slide_gets_one_stain_estimate_and_folders_find_slides(
    model: SlideModel, slide: Path, tmp_path: Path
) -> None:
    model.stain_normalizer = RecordingStains()
    run(slide, tmp_path / "out")
    assert model.stain_normalizer.estimated == [(512, 512, 3)]  # the whole of level 1, once
    assert model.stain_normalizer.applied == 6  # the blocks with tissue only
    folder = tmp_path / "slides"
    folder.mkdir()
    (folder / "a.svs").write_bytes(b"")
    (folder / "b.ndpi").write_bytes(b"")
    (folder / "notes.txt").write_text("")
    files, errors = predict_cli.collect_inputs([str(folder)])
    assert [path.name for path in files] == ["a.svs", "b.ndpi"] and not errors


def test_offset_applies_to_a_plain_image_too(model: SlideModel, tmp_path: Path) -> None:
    """A region exported from a slide as a PNG: --offset places its nuclei on the slide."""
    image = slide_levels()[1][:128]  # level 1 is at the model's 0.5 µm/px
    Image.fromarray(image).save(tmp_path / "region.png")
    run(tmp_path / "region.png", tmp_path / "plain", "--mpp", "0.5")
    run(tmp_path / "region.png", tmp_path / "shifted", "--mpp", "0.5", "--offset", "300", "40")
    plain = polygon_centroids(tmp_path / "plain" / "region.geojson")
    assert len(plain) == 2
    shifted = polygon_centroids(tmp_path / "shifted" / "region.geojson")
    np.testing.assert_allclose(shifted, plain + [300, 40], atol=1e-3)


def test_a_single_page_tiff_is_not_a_slide(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "tile.tif", np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    assert not is_slide(tmp_path / "tile.tif") and not is_slide(tmp_path / "tile.png")
    assert is_slide(tmp_path / "absent.svs")  # by suffix; opening it reports the error


def test_skipped_blocks_are_not_read_or_predicted_and_give_background() -> None:
    image = np.full((256, 256, 3), 60, np.uint8)
    net = SlideModel().eval()
    reader = ArrayRegionReader(image)
    kwargs = {"tile_size": 64, "overlap": 16, "block_tiles": (2, 2)}
    whole = np.concatenate([band for _, band in stream_logits(reader, net, **kwargs)], axis=1)
    all_tiles = net.tiles_seen
    net.tiles_seen = 0
    asked: list[tuple[int, int, int, int]] = []

    def skip(top: int, left: int, height: int, width: int) -> bool:
        asked.append((top, left, height, width))
        return left >= 128  # the right half of the blocks

    bands = stream_logits(reader, net, skip=skip, skip_logits=(-20.0,), **kwargs)
    skipped = np.concatenate([band for _, band in bands], axis=1)
    assert 0 < net.tiles_seen < all_tiles and any(left >= 128 for _, left, _, _ in asked)
    np.testing.assert_allclose(skipped[:, :, :192], whole[:, :, :192], atol=1e-5)  # no skipped tile here
    np.testing.assert_allclose(skipped[:, :, 208:], -20.0)  # only skipped tiles (192..256) here
    net.tiles_seen = 0
    nothing = list(stream_logits(reader, net, skip=lambda *box: True, skip_logits=(1.0, -2.0), **kwargs))
    assert net.tiles_seen == 0
    np.testing.assert_allclose(
        np.concatenate([b for _, b in nothing], axis=1),
        np.array([1.0, -2.0])[:, None, None] * np.ones((2, 256, 256)),
        atol=1e-6,
    )


def test_background_logits_follow_the_target() -> None:
    assert background_logits("binary") == (-20.0,)
    assert background_logits("contour") == (20.0, -20.0, -20.0)
    assert background_logits("distance") == (-20.0, -20.0)
