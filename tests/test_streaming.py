"""Streaming large images: region reads, band-wise prediction, labels and outputs equal in-memory ones."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from helpers import REPO_ROOT, DarknessNet, nuclei_image
from PIL import Image
from scipy import ndimage

from nucseg.data.stain import MacenkoStainNormalizer, stain_normalizer_from_state_dict
from nucseg.data.stain.apply import colour_table
from nucseg.inference import sliding_window_predict, streaming
from nucseg.inference.instances import PostprocessSettings, heads_of, sigmoid
from nucseg.inference.settings import InferenceSettings
from nucseg.inference.streaming import fixed_stain_transform, stream_logits
from nucseg.io.images import ImageReadError, read_rgb_image
from nucseg.io.overview import overview_stride, read_overview
from nucseg.io.regions import ArrayRegionReader, TiffRegionReader
from nucseg.io.rows import temporary_rows
from nucseg.postprocess import StreamingLabeler, label_instances
from nucseg.predict import OutputPaths, predict_file, write_image_outputs, write_outputs
from nucseg.predict.outputs import probability_bands

REPO = REPO_ROOT


def write_tiff_variants(directory: Path, image: np.ndarray) -> dict[str, Path]:
    """The same pixels as tiled/striped, compressed/raw, contiguous/planar, grey 16 bit and RGBA TIFFs."""
    paths = {
        name: directory / f"{name}.tif"
        for name in ("tiled", "raw_strip", "zlib_strips", "planar", "jpeg", "grey16", "rgba")
    }
    tifffile.imwrite(paths["tiled"], image, tile=(64, 64), compression="zlib", photometric="rgb")
    tifffile.imwrite(paths["raw_strip"], image, photometric="rgb")
    tifffile.imwrite(paths["zlib_strips"], image, compression="zlib", rowsperstrip=17, photometric="rgb")
    tifffile.imwrite(
        paths["planar"], np.moveaxis(image, -1, 0), planarconfig="separate", tile=(64, 64), photometric="rgb"
    )
    tifffile.imwrite(paths["jpeg"], image, compression="jpeg", tile=(64, 64), photometric="rgb")
    tifffile.imwrite(
        paths["grey16"], image[..., 0].astype(np.uint16) * 257, tile=(32, 48), compression="zlib"
    )
    alpha = np.full(image.shape[:2] + (1,), 9, dtype=np.uint8)
    tifffile.imwrite(
        paths["rgba"], np.concatenate([image, alpha], axis=-1), photometric="rgb", rowsperstrip=40
    )
    return paths


@pytest.fixture(scope="module")
def tiff_variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_tiff_variants(tmp_path_factory.mktemp("tiffs"), nuclei_image(230, 310, 40, seed=1))


@pytest.mark.parametrize("variant", ["tiled", "raw_strip", "zlib_strips", "planar", "jpeg", "grey16", "rgba"])
def test_tiff_region_reads_equal_whole_image_reads(tiff_variants: dict[str, Path], variant: str) -> None:
    whole = read_rgb_image(tiff_variants[variant])
    with TiffRegionReader(tiff_variants[variant]) as reader:
        assert (reader.height, reader.width) == whole.shape[:2]
        for top, left, height, width in [
            (0, 0, 230, 310),
            (13, 70, 100, 129),
            (229, 309, 9, 9),
            (64, 64, 64, 64),
        ]:
            assert np.array_equal(
                reader.read(top, left, height, width), whole[top : top + height, left : left + width]
            )


def test_corrupt_tiff_is_reported_by_name(tmp_path: Path) -> None:
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00" + b"\x00" * 20)
    with pytest.raises(ImageReadError, match="broken.tif"):
        TiffRegionReader(bad)


@pytest.mark.parametrize(
    ("size", "tile", "overlap", "block"),
    [
        ((700, 900), 128, 32, (2, 3)),
        ((700, 900), 128, 32, (1, 1)),
        ((513, 257), 64, 0.25, (3, 2)),
        ((100, 900), 128, 32, (2, 2)),
    ],
)
def test_streamed_logits_equal_whole_image_prediction(
    size: tuple[int, int], tile: int, overlap: int | float, block: tuple[int, int]
) -> None:
    image = nuclei_image(*size, count=60, seed=2)
    net = DarknessNet()
    bands = list(
        stream_logits(
            ArrayRegionReader(image), net, tile_size=tile, overlap=overlap, block_tiles=block, batch_size=5
        )
    )
    tops = [top for top, _ in bands]
    assert tops == sorted(tops) and tops[0] == 0
    streamed = np.concatenate([band for _, band in bands], axis=1)
    whole = sliding_window_predict(
        torch.from_numpy(image).permute(2, 0, 1).float() / 255, net, tile, overlap
    ).numpy()
    assert streamed.shape == whole.shape
    assert np.abs(streamed - whole).max() < 1e-4


def test_stain_normalisation_is_applied_per_block() -> None:
    seen: list[tuple[int, int]] = []

    def normalize(region: np.ndarray) -> np.ndarray:
        seen.append(region.shape[:2])
        return 255 - region

    image = nuclei_image(300, 300, 10)
    bands = list(
        stream_logits(
            ArrayRegionReader(image), DarknessNet(), normalize, tile_size=64, overlap=16, block_tiles=(2, 2)
        )
    )
    assert len(seen) > 1 and all(h <= 2 * 64 and w <= 2 * 64 for h, w in seen)
    inverted = sliding_window_predict(
        torch.from_numpy(255 - image).permute(2, 0, 1).float() / 255, DarknessNet(), 64, 16
    )
    assert np.abs(np.concatenate([b for _, b in bands], axis=1) - inverted.numpy()).max() < 1e-4


def he_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Beer-Lambert H&E with a stain shift (haematoxylin-rich blobs in eosin), white lower-left corner."""
    rng = np.random.default_rng(seed)
    vh, ve = np.array([0.45, 0.80, 0.35]), np.array([0.20, 0.90, 0.30])
    vh, ve = vh / np.linalg.norm(vh), ve / np.linalg.norm(ve)
    blobs = ndimage.gaussian_filter(rng.random((height, width)), 4) > 0.52
    c_h = np.where(blobs, rng.uniform(1.0, 2.0, (height, width)), rng.uniform(0.1, 0.5, (height, width)))
    c_e = np.where(blobs, rng.uniform(0.0, 0.3, (height, width)), rng.uniform(0.3, 0.8, (height, width)))
    c_h[height // 2 :, : width // 3] = c_e[height // 2 :, : width // 3] = 0.0
    density = c_h[..., None] * vh + c_e[..., None] * ve
    return np.clip(240.0 * np.exp(-density), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def stain_reference() -> dict:
    """A fitted Macenko reference (as a state, so every test gets a fresh normaliser and counters)."""
    reference = he_image(128, 128, seed=9)
    reference = np.clip(reference.astype(int) - 10, 0, 255).astype(np.uint8)  # other stains than he_image
    return MacenkoStainNormalizer().fit(reference).state_dict()


class RecordingReader(ArrayRegionReader):
    """An in-memory reader that remembers the rectangles it was asked for."""

    def __init__(self, image: np.ndarray) -> None:
        super().__init__(image)
        self.reads: list[tuple[int, int, int, int]] = []

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        self.reads.append((top, left, height, width))
        return super().read(top, left, height, width)


@pytest.mark.parametrize(
    ("read_pixels", "max_pixels"), [(10**6, 5000), (1000, 5000), (200, 1000), (10**6, 10**6)]
)
def test_overview_is_every_kth_pixel_and_bounded(read_pixels: int, max_pixels: int) -> None:
    image = nuclei_image(230, 310, 40, seed=1)
    stride = overview_stride(230, 310, max_pixels)
    overview = read_overview(ArrayRegionReader(image), max_pixels, read_pixels)
    assert overview.shape[0] * overview.shape[1] <= max_pixels
    assert np.array_equal(overview, image[::stride, ::stride])
    assert stride == 1 if max_pixels >= 230 * 310 else overview_stride(230, 310, max_pixels) > 1


def test_overview_of_a_tiff_reads_regions_only(tiff_variants: dict[str, Path]) -> None:
    whole = read_rgb_image(tiff_variants["tiled"])
    with TiffRegionReader(tiff_variants["tiled"]) as reader:
        overview = read_overview(reader, max_pixels=2000, read_pixels=310 * 40)
    stride = overview_stride(230, 310, 2000)
    assert stride > 1 and np.array_equal(overview, whole[::stride, ::stride])


def stream_recorded(
    reader: RecordingReader, normalize: Callable[[np.ndarray], np.ndarray], block: tuple[int, int]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Streamed logits of ``reader`` and every normalised region, in the order of ``reader.reads``."""
    outputs: list[np.ndarray] = []

    def recording(region: np.ndarray) -> np.ndarray:
        outputs.append(normalize(region))
        return outputs[-1]

    bands = stream_logits(
        reader, DarknessNet(), recording, tile_size=64, overlap=16, block_tiles=block, batch_size=4
    )
    return np.concatenate([band for _, band in bands], axis=1), outputs


def test_one_stain_transform_makes_streaming_block_layout_independent(
    stain_reference: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = he_image(300, 330, seed=4)
    normalizer = stain_normalizer_from_state_dict(stain_reference)
    estimate = normalizer.estimate_source(read_overview(ArrayRegionReader(image), 4000), name="slide")
    expected_pixels = normalizer.apply(image, estimate)
    results = []
    for block in [(1, 1), (2, 3)]:
        reader = RecordingReader(image)
        normalize = fixed_stain_transform(reader, normalizer, "slide", max_pixels=4000)
        reader.reads.clear()  # keep the block reads only, not the thumbnail's
        logits, outputs = stream_recorded(reader, normalize, block)
        results.append(logits)
        assert len(outputs) == len(reader.reads) > 1
        for (top, left, height, width), pixels in zip(reader.reads, outputs, strict=True):
            assert np.array_equal(pixels, expected_pixels[top : top + height, left : left + width])
    assert np.abs(results[0] - results[1]).max() < 1e-5
    whole = sliding_window_predict(
        torch.from_numpy(expected_pixels).permute(2, 0, 1).float() / 255, DarknessNet(), 64, 16
    ).numpy()
    assert np.abs(results[0] - whole).max() < 1e-4
    assert normalizer.fallback_count == 0
    # a slide-sized image goes through a table of all colours: the same pixels
    table_map = fixed_stain_transform(ArrayRegionReader(image), normalizer, "slide", 4000, colour_table_above=0)
    assert np.array_equal(table_map(image), expected_pixels)
    # the choice counts the pixels the transform will map (a resampled grid), not the input's
    tables = []
    monkeypatch.setattr(streaming, "colour_table", lambda transform: tables.append(colour_table(transform)) or tables[-1])
    pixels = image.shape[0] * image.shape[1]
    for mapped, built in [(pixels // 2, 0), (pixels * 2, 1)]:
        normalize = fixed_stain_transform(ArrayRegionReader(image), normalizer, "slide", 4000, pixels, mapped_pixels=mapped)
        assert len(tables) == built and np.array_equal(normalize(image), expected_pixels)
    # what this replaces: estimating per block makes the result depend on the layout
    per_block = [
        stream_recorded(RecordingReader(image), normalizer.normalize, block)[0] for block in [(1, 1), (2, 3)]
    ]
    assert np.abs(per_block[0] - per_block[1]).max() > 1e-3


def test_background_overview_falls_back_once_for_the_whole_image(stain_reference: dict) -> None:
    image = np.full((200, 260, 3), 245, dtype=np.uint8)
    image[50:60, 50:60] = (120, 60, 150)  # a speck of tissue: far below the tissue threshold
    normalizer = stain_normalizer_from_state_dict(stain_reference)
    normalize = fixed_stain_transform(ArrayRegionReader(image, name="blank.tif"), normalizer, max_pixels=5000)
    bands = stream_logits(
        ArrayRegionReader(image), DarknessNet(), normalize, tile_size=64, overlap=16, block_tiles=(1, 1)
    )
    streamed = np.concatenate([band for _, band in bands], axis=1)
    assert normalizer.fallback_count == 1 and normalizer.fallback_names == ["blank.tif"]
    raw = sliding_window_predict(
        torch.from_numpy(image).permute(2, 0, 1).float() / 255, DarknessNet(), 64, 16
    )
    assert np.abs(streamed - raw.numpy()).max() < 1e-4


def test_predict_file_estimates_stains_once_per_streamed_image(stain_reference: dict, tmp_path: Path) -> None:
    image = he_image(260, 300, seed=5)
    tiff = tmp_path / "slide.tif"
    tifffile.imwrite(tiff, image, tile=(64, 64), compression="zlib", photometric="rgb")
    normalizer = stain_normalizer_from_state_dict(stain_reference)
    estimated: list[tuple[int, ...]] = []
    applied: list[tuple[int, ...]] = []
    estimate_source, apply = normalizer.estimate_source, normalizer.apply

    def spy_estimate(overview: np.ndarray, name: str | None = None) -> object:
        estimated.append(overview.shape)
        return estimate_source(overview, name=name)

    def spy_apply(region: np.ndarray, estimate: object) -> np.ndarray:
        applied.append(region.shape)
        return apply(region, estimate)

    normalizer.estimate_source, normalizer.apply = spy_estimate, spy_apply  # type: ignore[method-assign]
    tiling = InferenceSettings(tile_size=64, overlap=16)
    result = predict_file(
        tiff,
        DarknessNet(),
        OutputPaths.for_image(tmp_path / "out", "slide"),
        normalizer,
        tiling,
        stream_above=1000,
        overview_pixels=3000,
    )
    assert result.streamed and estimated == [(44, 50, 3)]  # every 6th pixel and len(applied) > 1
    assert normalizer.fallback_count == 0

    class NormalizeOnly:
        def normalize(self, image: np.ndarray, name: str | None = None) -> np.ndarray:
            return image

    with pytest.raises(TypeError, match="slide.tif.*estimate_source"):
        predict_file(
            tiff,
            DarknessNet(),
            OutputPaths.for_image(tmp_path / "o2", "slide"),
            NormalizeOnly(),
            tiling,
            stream_above=1000,
        )


def test_stream_does_not_leave_inference_mode_on_between_bands() -> None:
    bands = stream_logits(
        ArrayRegionReader(nuclei_image(300, 300, 5)), DarknessNet(), tile_size=64, overlap=16
    )
    next(bands)
    assert not torch.is_inference_mode_enabled()
    bands.close()


@pytest.mark.parametrize("connectivity", [1, 2])
def test_streaming_labeler_equals_whole_image_labelling(connectivity: int) -> None:
    rng = np.random.default_rng(connectivity)
    mask = ndimage.binary_opening(rng.random((400, 333)) > 0.42)
    mask[:, 100] = True  # one component spanning every band
    expected = label_instances(mask, min_size=6, connectivity=connectivity)
    labeler = StreamingLabeler(min_size=6, connectivity=connectivity)
    bands, top = [], 0
    while top < mask.shape[0]:
        height = int(rng.integers(1, 50))
        bands.append(labeler.add_band(mask[top : top + height]))
        top += height
    lut = labeler.finish()
    assert np.array_equal(lut[np.concatenate(bands)], expected)
    boxes = ndimage.find_objects(expected)
    assert len(labeler.bboxes) == len(boxes) == expected.max()
    for index, box in enumerate(boxes):
        assert tuple(labeler.bboxes[index]) == (box[0].start, box[1].start, box[0].stop, box[1].stop)
        assert labeler.areas[index] == np.count_nonzero(expected == index + 1)


def test_temporary_rows_are_a_memmap_removed_on_exit(tmp_path: Path) -> None:
    rows = np.arange(50 * 7, dtype=np.int32).reshape(50, 7)
    with temporary_rows(50, 7, np.int32, tmp_path) as store:
        assert isinstance(store, np.memmap) and (store == 0).all()
        store[:20] = rows[:20]
        store[20:] = rows[20:]
        assert np.array_equal(store[5:45], rows[5:45])
        assert len(list(tmp_path.glob(".nucseg-rows-*"))) == 1
    assert not list(tmp_path.glob(".nucseg-rows-*"))


def test_streamed_outputs_equal_in_memory_outputs(tmp_path: Path) -> None:
    image = nuclei_image(520, 610, 150, seed=3)
    tiff = tmp_path / "image.tif"
    tifffile.imwrite(tiff, image, tile=(128, 128), compression="zlib", photometric="rgb")
    net = DarknessNet()
    settings = PostprocessSettings(min_size=5, band_rows=64, max_object_rows=32)  # seams every 64 rows
    logits = sliding_window_predict(torch.from_numpy(image).permute(2, 0, 1).float() / 255, net, 128, 32)
    memory = OutputPaths.for_image(tmp_path / "memory", "image", probability=True)
    streamed = OutputPaths.for_image(tmp_path / "streamed", "image", probability=True)
    count_memory = write_image_outputs(image, sigmoid(logits[0].numpy()), memory, settings)
    with TiffRegionReader(tiff) as reader:
        bands = stream_logits(reader, net, tile_size=128, overlap=32, block_tiles=(2, 2))
        probabilities = probability_bands(bands, heads_of(None))
        count_streamed = write_outputs(reader, probabilities, streamed, settings, band_rows=64)
    assert count_memory == count_streamed > 50
    assert np.array_equal(tifffile.imread(memory.labels), tifffile.imread(streamed.labels))
    assert (
        np.abs(tifffile.imread(memory.probability).astype(int) - tifffile.imread(streamed.probability)).max()
        <= 1
    )
    for name in ("mask", "overlay"):
        assert np.array_equal(
            np.asarray(Image.open(getattr(memory, name))), np.asarray(Image.open(getattr(streamed, name)))
        )
    rings = [
        [f["geometry"]["coordinates"] for f in json.loads(p.read_text())["features"]]
        for p in (memory.geojson, streamed.geojson)
    ]
    assert rings[0] == rings[1]
    assert memory.measurements.read_text() == streamed.measurements.read_text()
    assert not list(streamed.labels.parent.glob(".nucseg-rows-*")), "temporary row files must be removed"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from Linux /proc")
def test_10k_tiff_is_predicted_with_bounded_memory(tmp_path: Path) -> None:
    """A 10 000 x 10 000 RGB TIFF through predict_file, in a fresh process: peak RSS < 3 GB."""
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np, tifffile
        sys.path.insert(0, {str(REPO)!r})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from helpers import DarknessNet, nuclei_image
        from nucseg.inference.instances import PostprocessSettings
        from nucseg.inference.settings import InferenceSettings
        from nucseg.predict import OutputPaths
        from nucseg.predict import predict_file

        path = {str(tmp_path / "big.tif")!r}
        periodic = np.tile(nuclei_image(1000, 1000, 400), (2, 2, 1))  # 1000-px period, cut in 512 tiles
        def tiles():
            for y in range(0, 10000, 512):
                for x in range(0, 10000, 512):
                    yield np.ascontiguousarray(periodic[y % 1000 : y % 1000 + 512, x % 1000 : x % 1000 + 512])
        tifffile.imwrite(path, tiles(), shape=(10000, 10000, 3), dtype=np.uint8, tile=(512, 512),
                         photometric="rgb", compression="zlib")
        del periodic
        paths = OutputPaths.for_image({str(tmp_path / "out")!r}, "big")
        result = predict_file(path, DarknessNet(), paths, tiling=InferenceSettings(tile_size=256, overlap=64),
                              settings=PostprocessSettings(min_size=5), stream_above=4096 * 4096)
        # VmHWM, not ru_maxrss: ru_maxrss survives exec, so it would include pytest's own size
        peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        print(result.streamed, result.nuclei, peak)
        """
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=1200)
    assert completed.returncode == 0, completed.stderr[-2000:]
    streamed, nuclei, peak_kib = completed.stdout.split()
    assert streamed == "True" and int(nuclei) > 10000
    assert int(peak_kib) * 1024 < 3 * 1024**3, f"peak RSS {int(peak_kib) / 1024**2:.2f} GiB"
    with tifffile.TiffFile(tmp_path / "out" / "big_labels.tif") as labels:
        assert labels.pages.first.shape == (10000, 10000)
