"""Whole-slide reading on small pyramids written by tifffile: levels, mpp, regions, tissue, streaming."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import DarknessNet, write_subifd_pyramid, write_svs_like

from nucseg.inference import sliding_window_predict
from nucseg.inference.streaming import stream_logits
from nucseg.io import SlideError, WholeSlide, open_slide

needs_tiffslide = pytest.mark.skipif(
    importlib.util.find_spec("tiffslide") is None, reason="whole-slide reading needs the 'wsi' extra (tiffslide)"
)

MPP = 0.25
HEIGHT, WIDTH = 750, 1000  # level 2 has 188 rows: a non-integer downsample in y (750 / 188)
TISSUE = (slice(200, 600), slice(150, 650))  # rows, columns of the tissue block at level 0


def slide_pixels() -> np.ndarray:
    """White glass with one textured pink-purple tissue block."""
    rng = np.random.default_rng(0)
    image = np.full((HEIGHT, WIDTH, 3), 240, np.uint8)
    image += rng.integers(0, 8, image.shape, dtype=np.uint8)
    tissue = np.empty((400, 500, 3), np.uint8)
    tissue[:] = (200, 110, 170)
    tissue = np.clip(tissue.astype(int) + rng.integers(-30, 30, tissue.shape), 0, 255).astype(np.uint8)
    image[TISSUE] = tissue
    return image


def pyramid(image: np.ndarray, levels: int = 3) -> list[np.ndarray]:
    out = [image]
    for _ in range(levels - 1):
        out.append(np.ascontiguousarray(out[-1][::2, ::2]))
    return out


@pytest.fixture(scope="module")
def levels() -> list[np.ndarray]:
    return pyramid(slide_pixels())


@pytest.fixture
def subifd_slide(tmp_path: Path, levels: list[np.ndarray]) -> Path:
    return write_subifd_pyramid(tmp_path / "slide.tif", levels)


@needs_tiffslide
def test_levels_resolution_and_nearest_level(subifd_slide: Path):
    with open_slide(subifd_slide) as slide:
        assert slide.level_count == 3
        assert slide.level_dimensions == ((1000, 750), (500, 375), (250, 188))
        assert slide.mpp == pytest.approx(MPP)
        assert slide.level_mpp(1) == pytest.approx(0.5)
        assert slide.level_downsample_xy(2) == pytest.approx((4.0, 750 / 188))
        assert [slide.level_for_mpp(m) for m in (0.25, 0.3, 0.4, 0.5, 0.9, 5.0)] == [0, 0, 1, 1, 2, 2]


@needs_tiffslide
def test_region_reader_reads_exact_pixels_of_its_level(subifd_slide: Path, levels: list[np.ndarray]):
    with WholeSlide(subifd_slide) as slide:
        for level, pixels in enumerate(levels):
            reader = slide.reader(level)
            assert (reader.height, reader.width) == pixels.shape[:2]
            for top, left, h, w in [(0, 0, 17, 23), (37, 61, 90, 70), (reader.height - 5, reader.width - 9, 5, 9)]:
                region = reader.read(top, left, h, w)
                assert region.dtype == np.uint8 and region.shape == (h, w, 3)
                np.testing.assert_array_equal(region, pixels[top : top + h, left : left + w])
        reader = slide.reader(model_mpp=1.0)
        assert reader.level == 2 and reader.mpp == pytest.approx(1.0, rel=0.01)  # mean of 4 and 750 / 188
        assert reader.scale_to_model == pytest.approx(reader.mpp)
        assert reader.to_level0(94, 125) == pytest.approx((94 * 750 / 188, 500.0))
        with pytest.raises(SlideError, match="outside level 2"):
            reader.read(180, 0, 10, 10)


@needs_tiffslide
def test_aperio_layout_and_mpp_from_the_description(tmp_path: Path, levels: list[np.ndarray], caplog):
    with WholeSlide(write_svs_like(tmp_path / "case.svs", levels)) as slide:
        assert slide.level_count == 3 and slide.mpp == pytest.approx(MPP)
        with caplog.at_level(logging.WARNING):
            reader = slide.reader(model_mpp=0.7)  # level 1 (0.5) is nearest, 29 % off: warned
        assert reader.level == 1 and "model expects 0.7" in caplog.text
        np.testing.assert_array_equal(reader.read(10, 20, 30, 40), levels[1][10:40, 20:60])


@needs_tiffslide
def test_missing_resolution_needs_mpp_and_unknown_files_name_the_fix(tmp_path: Path, levels: list[np.ndarray]):
    path = write_subifd_pyramid(tmp_path / "bare.tif", levels, mpp=None)
    with WholeSlide(path) as slide:
        assert slide.mpp is None
        with pytest.raises(SlideError, match="no resolution .* mpp=0.25"):
            slide.level_for_mpp(0.5)
    with WholeSlide(path, mpp=0.5) as slide:
        assert slide.level_for_mpp(1.0) == 1
    with pytest.raises(SlideError, match="no such slide file"):
        WholeSlide(tmp_path / "absent.svs")
    (tmp_path / "scan.mrxs").write_bytes(b"")
    try:
        import openslide  # noqa: F401
    except ImportError:
        with pytest.raises(SlideError, match="need openslide-python"):
            WholeSlide(tmp_path / "scan.mrxs")
    (tmp_path / "junk.svs").write_bytes(b"not a tiff")
    with pytest.raises(SlideError, match="junk.svs: cannot open slide"):
        WholeSlide(tmp_path / "junk.svs")


@needs_tiffslide
def test_tissue_mask_finds_the_tissue_block(subifd_slide: Path, tmp_path: Path):
    with WholeSlide(subifd_slide) as slide:
        tissue = slide.tissue_mask(max_side=200)
        assert tissue.mask.shape == (150, 200)
        assert tissue.downsample_xy == pytest.approx((5.0, 5.0))
        inside = tissue.mask[40:120, 30:130]  # the block is rows 40..120, columns 30..130 here
        assert inside.mean() > 0.98 and tissue.mask.sum() < 1.05 * inside.size
        level2 = slide.reader(2)
        assert tissue.fraction(60, 50, 20, 20, level2.downsample_xy) == 1.0  # level-2 pixels in the block
        assert tissue.fraction(0, 0, 30, 30, level2.downsample_xy) == 0.0
    blank = write_subifd_pyramid(tmp_path / "blank.tif", pyramid(np.full((300, 400, 3), 245, np.uint8)))
    with WholeSlide(blank) as slide:
        assert not slide.tissue_mask(max_side=128).mask.any()


@needs_tiffslide
def test_streaming_a_slide_level_equals_predicting_it_whole(subifd_slide: Path, levels: list[np.ndarray]):
    net = DarknessNet().eval()
    with WholeSlide(subifd_slide) as slide:
        reader = slide.reader(1)
        bands = list(stream_logits(reader, net, tile_size=128, overlap=32, tile_multiple=32, block_tiles=(1, 2)))
    streamed = np.concatenate([band for _, band in bands], axis=1)
    whole = sliding_window_predict(
        torch.from_numpy(levels[1]).permute(2, 0, 1).float() / 255, net, tile_size=128, overlap=32
    ).numpy()
    assert streamed.shape == whole.shape == (1, 375, 500)
    np.testing.assert_allclose(streamed, whole, atol=1e-4)


def test_without_tiffslide_opening_says_which_extra_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "tiffslide", None)  # import fails as if not installed
    (tmp_path / "slide.svs").write_bytes(b"")
    with pytest.raises(SlideError, match=r"needs tiffslide \(pip install 'nucseg\[wsi\]'\)"):
        WholeSlide(tmp_path / "slide.svs")
