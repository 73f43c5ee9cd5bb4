"""nucseg.io readers and row files, and the tile multiple read from the network."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from nucseg.inference import sliding_window_predict
from nucseg.inference.tiling import DEFAULT_TILE_MULTIPLE, input_divisor
from nucseg.io.regions import TiffRegionReader, read_whole
from nucseg.io.resample import ResampledRegionReader


class Divided(nn.Module):
    """An identity-like network that says its input must be a multiple of 16."""

    input_divisor = 16

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images[:, :1]


class Wrapper(nn.Module):
    """A module holding the network as ``net``, as SegmentationModule does."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Divided()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def test_input_divisor_comes_from_the_network_or_its_net() -> None:
    assert input_divisor(Divided()) == 16
    assert input_divisor(Wrapper()) == 16
    assert input_divisor(lambda x: x) == DEFAULT_TILE_MULTIPLE


def test_tiles_are_checked_against_the_networks_divisor() -> None:
    image = torch.rand(3, 100, 90)
    logits = sliding_window_predict(image, Wrapper(), tile_size=48, overlap=16)  # 48 = 3 x 16
    assert logits.shape == (1, 100, 90)
    with pytest.raises(ValueError, match="multiple of 32"):
        sliding_window_predict(image, lambda x: x[:, :1], tile_size=48, overlap=16)


def test_uncompressed_tiff_is_memory_mapped_and_compressed_read_through_zarr(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    raw, tiled = tmp_path / "raw.tif", tmp_path / "tiled.tif"
    tifffile.imwrite(raw, image, photometric="rgb")
    tifffile.imwrite(tiled, image, tile=(32, 32), compression="zlib", photometric="rgb")
    with TiffRegionReader(raw) as a, TiffRegionReader(tiled) as b:
        assert isinstance(a._pixels, np.memmap) and not isinstance(b._pixels, np.memmap)  # noqa: SLF001
        for reader in (a, b):
            assert np.array_equal(reader.read(5, 7, 40, 50), image[5:45, 7:57])
            assert np.array_equal(read_whole(reader, block=32), image)


def test_huge_compressed_strip_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "strip.tif"
    tifffile.imwrite(path, np.zeros((40, 30, 3), np.uint8), compression="zlib", photometric="rgb")
    import nucseg.io.regions as regions

    with pytest.MonkeyPatch.context() as patch, caplog.at_level(logging.WARNING, logger="nucseg.io.regions"):
        patch.setattr(regions, "LARGE_SEGMENT_PIXELS", 100)
        TiffRegionReader(path).close()
    assert "must be decoded whole" in caplog.text


def test_resampled_reader_blocks_equal_a_whole_read() -> None:
    from nucseg.io.regions import ArrayRegionReader

    image = np.random.default_rng(1).integers(0, 255, (61, 47, 3), dtype=np.uint8)
    resampled = ResampledRegionReader(ArrayRegionReader(image), 30, 23)
    assert np.array_equal(read_whole(resampled, block=8), resampled.read(0, 0, 30, 23))
