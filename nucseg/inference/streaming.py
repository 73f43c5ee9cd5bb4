"""Prediction of images of any size in memory that does not grow with the image's area.

Reading. ``TiffRegionReader`` reads a rectangle of a TIFF's first page by decoding only the
tiles or strips that intersect it (tifffile's per-segment decoder; zarr is not needed). For an
uncompressed striped TIFF the rows are read straight from the file, however tall the strips.
A compressed TIFF stored as one huge strip (rare; tifffile and most tools tile or use small
strips) must be decoded whole: the reader warns, because memory then grows with the image.
PNG and JPEG cannot be read by region; they are read whole (``ArrayRegionReader``).

Predicting. ``stream_logits`` uses the tile grid that ``sliding_window_predict`` would use on
the whole image and walks it in blocks of tile rows x tile columns: each block's pixels are read,
stain-normalised (``normalize``, a fixed pixelwise transform), cut into tiles and predicted;
tile logits are blended into an accumulator that spans one block row of the image width. When
a block row is done, the rows no later tile touches are final: they are divided by the
(separable) weight sum and yielded, and the rest carries over. With a fixed ``normalize`` (or
none) the result equals ``sliding_window_predict`` on the whole normalised image (up to float
summation order), whatever ``block_tiles`` is.

Skipping. ``skip(top, left, height, width) -> bool`` (optional) is asked about each block's
pixel rectangle before it is read; a block it answers True for is neither read nor predicted:
its tiles contribute ``skip_logits`` (one value per channel, "certainly background" by default)
with their usual blending weights, so the rows still normalise exactly and a pixel covered only
by skipped tiles gets exactly ``skip_logits``. Whole-slide prediction uses it to leave out glass
(``nucseg.io.slide.TissueMask``).

Memory. Peak memory is one block of pixels (read, normalised, as tiles) plus the accumulator of
one block row, ``C x (rows of a block row) x W`` floats (about 2 KB per image column with the
defaults): it does not grow with the number of rows, only with the width, so a 100 000-pixel
wide slide needs about 200 MB for it (fewer with ``block_tiles=(1, n)``).

Stain normalisation: one transform per image. Macenko estimates the stain vectors of whatever
it is given, so normalising each block on its own would map neighbouring blocks of one slide
differently (seams, and predictions that depend on the block layout). Instead
``fixed_stain_transform`` estimates the source stains once per image, from a thumbnail of at
most ``DEFAULT_OVERVIEW_PIXELS`` (2048 x 2048, about 4.2 million) pixels: every k-th pixel in
both axes, read region by region through the reader, so memory stays bounded (``read_overview``).
That one estimate is applied to every block (``apply_stain_transform``, as training images: pixelwise,
so blocks join without seams). A thumbnail with too little tissue makes the whole image fall
back to its raw pixels, logged and counted once for the image, not per block.

Resampling. ``ResampledRegionReader`` presents an image at another pixel size (the model's) as
a region reader: each region is interpolated from the source pixels it needs with
``linear_weights`` (bilinear, antialiased when shrinking), which depend only on the output
position, so a resampled image streams in blocks exactly as it would be resampled whole.

``RawRowFile`` keeps rows of an intermediate result (probabilities, provisional labels) in a
temporary file on disk, so later passes can read any rows back without holding the image.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np
import torch

from nucseg.inference.sliding_window import (
    TileGrid,
    accumulate_tiles,
    gather_tiles,
    model_device,
    predict_tile_batch,
    resolve_tiling,
    sliding_window_predict,
    zeros,
)
from nucseg.utils.image_io import ImageReadError, read_rgb_image, to_rgb_uint8

logger = logging.getLogger(__name__)

Normalizer = Callable[[np.ndarray], np.ndarray]

#: Most pixels of the thumbnail on which a streamed image's stains are estimated (2048 x 2048).
DEFAULT_OVERVIEW_PIXELS = 2048 * 2048
#: Most pixels read at once while building the thumbnail (48 MB of RGB).
OVERVIEW_READ_PIXELS = 16 * 1024 * 1024
#: Logits of skipped blocks: sigmoid(-20) = 2e-9, a probability that rounds to 0 in uint8.
SKIP_LOGIT = -20.0

SkipFn = Callable[[int, int, int, int], bool]


class StainEstimator(Protocol):
    """A stain normaliser split into estimate and apply (``nucseg.data.stain``)."""

    def estimate_source(self, image: np.ndarray, name: str | None = None) -> Any: ...

    def apply(self, image: np.ndarray, estimate: Any) -> np.ndarray: ...


class RegionReader(Protocol):
    """Anything that reads (h, w, 3) uint8 RGB rectangles of an image of ``height x width``."""

    height: int
    width: int
    name: str

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray: ...

    def close(self) -> None: ...


class ArrayRegionReader:
    """A region reader over an image already in memory (PNG/JPEG, tests)."""

    def __init__(self, image: np.ndarray, name: str = "<array>") -> None:
        self.image = to_rgb_uint8(image, name)
        self.height, self.width = self.image.shape[:2]
        self.name = name

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        return self.image[top : top + height, left : left + width]

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> ArrayRegionReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TiffRegionReader:
    """Read rectangles of the first page of a TIFF, decoding only the segments needed.

    Handles tiled and striped pages, any compression tifffile decodes (including JPEG tiles of
    whole-slide images), contiguous and separate planes, and 8/16-bit grey, RGB or RGBA
    samples (converted like ``read_rgb_image``: alpha dropped, grey replicated, 16 bit scaled).

    Raises:
        ImageReadError: When the file cannot be opened or its first page is not a 2-D image.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import tifffile

        self.path = Path(path)
        self.name = str(self.path)
        try:
            self._tif = tifffile.TiffFile(self.path)
            page = self._tif.pages.first
        except Exception as error:  # noqa: BLE001 - every parser error becomes one clear line
            raise ImageReadError(
                f"{self.path}: cannot read TIFF ({type(error).__name__}: {error})"
            ) from error
        self._page = page
        shaped = page.shaped  # (separate samples, depth, length, width, contig samples)
        if shaped[1] != 1:
            self._tif.close()
            raise ImageReadError(f"{self.path}: volumetric TIFF pages are not supported")
        self.height, self.width = int(shaped[2]), int(shaped[3])
        self._separate = page.planarconfig == 2
        self._samples = int(shaped[0] if self._separate else shaped[4])
        self._dtype = np.dtype(page.dtype)
        if page.is_tiled:
            self._seg_h, self._seg_w = int(page.tilelength), int(page.tilewidth)
        else:
            self._seg_h, self._seg_w = min(int(page.rowsperstrip or self.height), self.height), self.width
        self._grid = (math.ceil(self.height / self._seg_h), math.ceil(self.width / self._seg_w))
        per_plane = self._grid[0] * self._grid[1]
        planes = self._samples if self._separate else 1
        if len(page.dataoffsets) != per_plane * planes:
            self._tif.close()
            raise ImageReadError(
                f"{self.path}: unexpected TIFF segment layout ({len(page.dataoffsets)} segments)"
            )
        self._raw_rows = (
            page.compression == 1 and not page.is_tiled and page.predictor == 1 and not self._separate
        )
        self._raw_rows = self._raw_rows and page.bitspersample in (8, 16, 32) and page.fillorder == 1
        if not self._raw_rows and self._seg_h * self._seg_w > 64 * 1024 * 1024:
            logger.warning(
                "%s: compressed segments of %dx%d pixels must be decoded whole",
                self.path,
                self._seg_h,
                self._seg_w,
            )
        self._decode_args: dict[str, object] = {"_fullsize": bool(page.is_tiled)}
        if page.compression in (6, 7, 33007, 34892):  # JPEG flavours need the shared tables
            self._decode_args.update(jpegtables=page.jpegtables, jpegheader=page.jpegheader)

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        """Read an (h, w, 3) uint8 RGB rectangle (clipped to the image)."""
        bottom, right = min(top + height, self.height), min(left + width, self.width)
        try:
            if self._raw_rows:
                raw = self._read_raw_rows(top, bottom)[:, left:right]
            else:
                raw = self._read_segments(top, left, bottom, right)
        except ImageReadError:
            raise
        except Exception as error:  # noqa: BLE001 - a corrupt segment becomes one clear line
            raise ImageReadError(
                f"{self.path}: cannot read region y={top}..{bottom} x={left}..{right} ({type(error).__name__}: {error})"
            ) from error
        return to_rgb_uint8(raw, self.name)

    def _read_raw_rows(self, top: int, bottom: int) -> np.ndarray:
        """Rows of an uncompressed striped page, read with seek/read (no strip is decoded whole)."""
        dtype = self._dtype.newbyteorder(self._tif.byteorder)
        row_bytes = self.width * self._samples * dtype.itemsize
        out = np.empty((bottom - top, self.width, self._samples), dtype=self._dtype)
        handle = self._tif.filehandle
        row = top
        while row < bottom:
            strip, first = divmod(row, self._seg_h)
            count = min(bottom - row, self._seg_h - first)
            with handle.lock:
                handle.seek(self._page.dataoffsets[strip] + first * row_bytes)
                data = handle.read(count * row_bytes)
            if len(data) != count * row_bytes:
                raise ImageReadError(f"{self.path}: file is truncated (strip {strip})")
            out[row - top : row - top + count] = np.frombuffer(data, dtype=dtype).reshape(
                count, self.width, self._samples
            )
            row += count
        return out

    def _read_segments(self, top: int, left: int, bottom: int, right: int) -> np.ndarray:
        """Decode the tiles/strips intersecting the rectangle and copy their overlap."""
        page = self._page
        out = np.zeros((bottom - top, right - left, self._samples), dtype=self._dtype)
        rows = range(top // self._seg_h, (bottom - 1) // self._seg_h + 1)
        cols = range(left // self._seg_w, (right - 1) // self._seg_w + 1)
        per_plane = self._grid[0] * self._grid[1]
        planes = self._samples if self._separate else 1
        indices = [p * per_plane + r * self._grid[1] + c for p in range(planes) for r in rows for c in cols]
        offsets = [page.dataoffsets[i] for i in indices]
        counts = [page.databytecounts[i] for i in indices]
        for data, index in self._tif.filehandle.read_segments(offsets, counts, indices=indices, sort=True):
            segment, (plane, _, y0, x0, _), _ = page.decode(data, index, **self._decode_args)
            if segment is None:
                continue  # an empty segment reads as zeros
            segment = segment[0]  # drop depth
            sy0, sx0 = max(top, y0), max(left, x0)
            sy1, sx1 = min(bottom, y0 + segment.shape[0]), min(right, x0 + segment.shape[1])
            piece = segment[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
            target = out[sy0 - top : sy1 - top, sx0 - left : sx1 - left]
            if self._separate:
                target[..., plane] = piece[..., 0]
            else:
                target[...] = piece
        return out

    def close(self) -> None:
        """Close the file."""
        self._tif.close()

    def __enter__(self) -> TiffRegionReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_region_reader(path: str | os.PathLike[str]) -> TiffRegionReader | ArrayRegionReader:
    """A region reader for ``path``: by region for TIFF, whole for PNG/JPEG."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        return TiffRegionReader(path)
    return ArrayRegionReader(read_rgb_image(path), name=str(path))


def overview_stride(height: int, width: int, max_pixels: int = DEFAULT_OVERVIEW_PIXELS) -> int:
    """The smallest k for which every k-th row and column of the image give at most ``max_pixels``."""
    if max_pixels < 1:
        raise ValueError(f"overview: max_pixels must be >= 1, got {max_pixels}")
    stride = max(1, math.ceil(math.sqrt(height * width / max_pixels)))
    while math.ceil(height / stride) * math.ceil(width / stride) > max_pixels:
        stride += 1
    return stride


def read_overview(
    reader: RegionReader,
    max_pixels: int = DEFAULT_OVERVIEW_PIXELS,
    read_pixels: int = OVERVIEW_READ_PIXELS,
) -> np.ndarray:
    """A thumbnail of the whole image: every k-th pixel in both axes, at most ``max_pixels``.

    Why strided and not resampled: the stain estimate needs real pixel colours (averaging
    would mix nuclei with background). The image is read in full-width bands of about
    ``read_pixels`` (a multiple of k rows, so band boundaries keep the global grid); when k
    rows alone are wider than that, only the sampled rows are read.

    Returns:
        (ceil(H / k), ceil(W / k), 3) uint8.
    """
    height, width = reader.height, reader.width
    stride = overview_stride(height, width, max_pixels)
    rows_per_read = max(1, read_pixels // max(1, width))
    parts = []
    if stride <= rows_per_read:
        band = stride * (rows_per_read // stride)
        for top in range(0, height, band):
            parts.append(reader.read(top, 0, min(band, height - top), width)[::stride, ::stride])
    else:
        for top in range(0, height, stride):
            parts.append(reader.read(top, 0, 1, width)[:, ::stride])
    return np.ascontiguousarray(np.concatenate(parts, axis=0))


def fixed_stain_transform(
    reader: RegionReader,
    normalizer: StainEstimator,
    name: str | None = None,
    max_pixels: int = DEFAULT_OVERVIEW_PIXELS,
) -> Normalizer:
    """Estimate the image's stains once from ``read_overview`` and return the fixed per-block map.

    Args:
        reader: The image to be streamed.
        normalizer: A fitted normaliser with ``estimate_source`` and ``apply``.
        name: The image's name in the fallback warning (default: ``reader.name``).
        max_pixels: Thumbnail size limit, see ``read_overview``.

    Returns:
        region -> ``normalizer.apply(region, estimate)`` (for Macenko the transform training
        images get), for ``stream_logits(normalize=...)``.
        After a fallback (too little tissue in the thumbnail, recorded once by
        ``estimate_source``) it returns regions unchanged.

    Raises:
        TypeError: ``normalizer`` cannot estimate once and apply per block.
    """
    label = name or reader.name
    if not (
        callable(getattr(normalizer, "estimate_source", None))
        and callable(getattr(normalizer, "apply", None))
    ):
        raise TypeError(
            f"{label}: stain normaliser {type(normalizer).__name__} has no estimate_source/apply, "
            "so a streamed image cannot get one stain transform"
        )
    overview = read_overview(reader, max_pixels)
    estimate = normalizer.estimate_source(overview, name=label)
    logger.info(
        "%s: one stain transform for the image, estimated on a %dx%d thumbnail (every %d-th pixel)%s",
        label,
        overview.shape[1],
        overview.shape[0],
        overview_stride(reader.height, reader.width, max_pixels),
        "" if estimate is not None else "; none applied",
    )

    def normalize(region: np.ndarray) -> np.ndarray:
        return normalizer.apply(region, estimate)

    return normalize


def stream_logits(
    reader: RegionReader,
    predict_fn: Callable[[torch.Tensor], torch.Tensor],
    normalize: Normalizer | None = None,
    tile_size: int | tuple[int, int] = 256,
    overlap: int | float = 64,
    batch_size: int = 8,
    blend: str = "gaussian",
    tta: str = "none",
    amp: bool = False,
    tile_multiple: int = 32,
    block_tiles: tuple[int, int] = (2, 8),
    progress: bool = False,
    skip: SkipFn | None = None,
    skip_logits: Sequence[float] = (SKIP_LOGIT,),
) -> Iterator[tuple[int, np.ndarray]]:
    """Predict an image band by band; yield ``(top_row, logits)`` with logits (C, h, W) float32.

    Bands come in order and cover every row once. Arguments are those of
    ``sliding_window_predict``, plus ``normalize`` (uint8 RGB region -> uint8 RGB region, or
    None) and ``block_tiles``, the (rows, columns) of tiles read and normalised together.
    ``normalize`` must be one fixed pixelwise transform for the whole image (e.g.
    ``fixed_stain_transform``); a normaliser that re-estimates per region would make the output
    depend on ``block_tiles``.

    ``skip(top, left, height, width)``, when given, is asked about each block's rectangle (in
    the reader's pixels); blocks it answers True for are not read or predicted and contribute
    ``skip_logits`` (one per output channel; module docstring). Without it every block is
    predicted, as before.

    Raises:
        ValueError: the network's channel count differs from ``len(skip_logits)`` (with ``skip``).
    """
    tile, overlap_px = resolve_tiling(tile_size, overlap, batch_size, blend, tta, tile_multiple)
    height, width = reader.height, reader.width
    device = model_device(predict_fn) or torch.device("cpu")
    use_amp = bool(amp)  # float32 unless asked, as sliding_window_predict (one precision rule)
    fill = None if skip is None else torch.tensor([float(v) for v in skip_logits], dtype=torch.float32)
    if fill is not None and fill.numel() < 1:
        raise ValueError("stream_logits: skip_logits needs one value per output channel")
    if height < tile[0] or width < tile[1]:  # thinner than a tile: small enough to do at once
        if skip is not None and fill is not None and skip(0, 0, height, width):
            yield 0, np.broadcast_to(fill.numpy()[:, None, None], (fill.numel(), height, width)).copy()
            return
        pixels = reader.read(0, 0, height, width)
        image = _to_tensor(_normalized(pixels, normalize), device)
        logits = sliding_window_predict(
            image, predict_fn, tile, overlap, batch_size, blend, tta, amp=use_amp, tile_multiple=tile_multiple
        )
        yield 0, logits.cpu().numpy()
        return

    grid = TileGrid((height, width), tile, overlap_px, blend, device)
    row_sums, col_sums = grid.axis_weight_sums()
    ys, xs = grid.starts
    row_groups = [ys[i : i + block_tiles[0]] for i in range(0, len(ys), block_tiles[0])]
    col_groups = [xs[i : i + block_tiles[1]] for i in range(0, len(xs), block_tiles[1])]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(ys) * len(xs), desc=f"tiles {Path(reader.name).name}", unit="tile", leave=False)
    carry: torch.Tensor | None = None
    try:
        for group_index, group in enumerate(row_groups):
            last = group_index == len(row_groups) - 1
            next_top = height if last else row_groups[group_index + 1][0]
            # inference mode only while computing: a generator must not leave it on at ``yield``
            with torch.inference_mode():
                accumulator = _predict_block_row(
                    reader,
                    predict_fn,
                    normalize,
                    grid,
                    group,
                    col_groups,
                    carry,
                    batch_size,
                    tta,
                    use_amp,
                    bar,
                    skip,
                    fill,
                )
                final_rows = next_top - group[0]
                carry = None if last else accumulator[:, :, final_rows:].clone()
                done = accumulator[0, :, :final_rows]  # normalised in place: no band-sized temporaries
                done /= row_sums[group[0] : next_top, None]
                done /= col_sums[None, :]
                band = done.cpu().numpy()
            del accumulator, done
            yield group[0], band
    finally:
        if bar is not None:
            bar.close()


def _predict_block_row(
    reader: RegionReader,
    predict_fn: Callable[[torch.Tensor], torch.Tensor],
    normalize: Normalizer | None,
    grid: TileGrid,
    rows: list[int],
    col_groups: list[list[int]],
    carry: torch.Tensor | None,
    batch_size: int,
    tta: str,
    use_amp: bool,
    bar: Any,
    skip: SkipFn | None = None,
    fill: torch.Tensor | None = None,
) -> torch.Tensor:
    """Predict the tile rows starting at ``rows``; return their (1, C, h, W) weighted sum plus ``carry``."""
    (th, tw), width = grid.tile, grid.size[1]
    band_top, band_bottom = rows[0], rows[-1] + th
    accumulator: torch.Tensor | None = None
    for columns in col_groups:
        region_left, region_right = columns[0], columns[-1] + tw
        skipped = skip is not None and skip(
            band_top, region_left, band_bottom - band_top, region_right - region_left
        )
        region = None
        if not skipped:
            pixels = reader.read(band_top, region_left, band_bottom - band_top, region_right - region_left)
            region = _to_tensor(_normalized(pixels, normalize), grid.device)
        jobs = [(y, x) for y in rows for x in columns]
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            if region is None:
                assert fill is not None
                logits = fill.to(grid.device)[None, :, None, None].expand(len(chunk), -1, th, tw)
            else:
                tiles = gather_tiles(
                    region[None], [(0, y - band_top, x - region_left) for y, x in chunk], grid.tile
                )
                logits = predict_tile_batch(tiles, predict_fn, tta, use_amp)
                if fill is not None and logits.shape[1] != fill.numel():
                    raise ValueError(
                        f"{reader.name}: the network gives {logits.shape[1]} channels but skipped blocks "
                        f"{fill.numel()} (skip_logits)"
                    )
            if accumulator is None:
                accumulator = zeros((1, logits.shape[1], band_bottom - band_top, width), grid.device)
                if carry is not None:
                    accumulator[:, :, : carry.shape[2]] += carry
            corners = [(0, y - band_top, x) for y, x in chunk]
            accumulate_tiles(accumulator, logits, corners, [grid.weight(y, x) for y, x in chunk])
            if bar is not None:
                bar.update(len(chunk))
    assert accumulator is not None
    return accumulator


def _normalized(pixels: np.ndarray, normalize: Normalizer | None) -> np.ndarray:
    return pixels if normalize is None else normalize(np.ascontiguousarray(pixels))


def _to_tensor(pixels: np.ndarray, device: torch.device) -> torch.Tensor:
    """(h, w, 3) uint8 -> (3, h, w) float32 in [0, 1] on ``device``."""
    tensor = torch.from_numpy(np.require(pixels, requirements=["C", "W"])).to(device)
    return tensor.permute(2, 0, 1).float().div_(255.0)


class RawRowFile:
    """Rows of a (height, width) array of one dtype, appended in order to a temporary file.

    A later pass reads any rows back with :meth:`read`. The file lives in ``directory`` (next to
    the outputs, where there is room for them) and is deleted on :meth:`close`.
    """

    def __init__(
        self, width: int, dtype: np.dtype | type, directory: str | os.PathLike[str] | None = None
    ) -> None:
        self.width = int(width)
        self.dtype = np.dtype(dtype)
        handle, name = tempfile.mkstemp(prefix=".nucseg-rows-", suffix=".raw", dir=directory)
        self.path = Path(name)
        self._file = os.fdopen(handle, "w+b")
        self.rows = 0

    def append(self, rows: np.ndarray) -> None:
        """Append rows (h, width) at the end."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"{self.path}: rows must have shape (h, {self.width}), got {rows.shape}")
        self._file.seek(0, os.SEEK_END)
        rows.tofile(self._file)  # no bytes copy of the band
        self.rows += rows.shape[0]

    def read(self, top: int, bottom: int) -> np.ndarray:
        """Rows ``top`` to ``bottom`` (exclusive, clipped to what was written)."""
        top, bottom = max(0, top), min(bottom, self.rows)
        if bottom <= top:
            return np.zeros((0, self.width), dtype=self.dtype)
        row_bytes = self.width * self.dtype.itemsize
        self._file.seek(top * row_bytes)
        data = self._file.read((bottom - top) * row_bytes)
        return np.frombuffer(data, dtype=self.dtype).reshape(bottom - top, self.width).copy()

    def close(self) -> None:
        """Delete the file."""
        self._file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> RawRowFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


# -- resampling to the model's pixel size ---------------------------------------------------------
def linear_weights(out_start: int, out_stop: int, in_size: int, out_size: int) -> tuple[int, np.ndarray]:
    """Weights of output pixels ``out_start:out_stop`` of one axis resized from ``in_size`` to ``out_size``.

    A triangle (linear) kernel, widened by the reduction factor when shrinking (antialiasing, as
    Pillow's bilinear resize does), with pixel centres aligned (``align_corners=False``) and the
    edges handled by renormalising the weights that fall inside. Each output pixel's weights
    depend only on its position, so resizing an image region by region gives the same pixels as
    resizing it whole.

    Returns:
        ``(in_start, weights)``: weights (out_stop - out_start, n) float32 applying to input
        pixels ``in_start .. in_start + n``.
    """
    scale = out_size / in_size
    radius = max(1.0, 1.0 / scale)
    centres = (np.arange(out_start, out_stop, dtype=np.float64) + 0.5) / scale - 0.5
    if len(centres) == 0:
        return 0, np.zeros((0, 0), dtype=np.float32)
    first = max(0, int(math.floor(centres[0] - radius)) + 1)
    last = min(in_size - 1, int(math.ceil(centres[-1] + radius)) - 1)
    first, last = min(first, in_size - 1), max(last, 0)
    positions = np.arange(first, last + 1, dtype=np.float64)
    weights = np.clip(1.0 - np.abs(positions[None, :] - centres[:, None]) / radius, 0.0, None)
    sums = weights.sum(axis=1, keepdims=True)
    nearest = np.clip(np.round(centres).astype(np.int64), first, last) - first
    empty = sums[:, 0] == 0
    weights[empty, nearest[empty]] = 1.0  # cannot happen with radius >= 1; kept for safety
    sums[empty] = 1.0
    return first, (weights / sums).astype(np.float32)


def resample_region(
    source: Callable[[int, int, int, int], np.ndarray],
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    top: int,
    left: int,
    height: int,
    width: int,
) -> np.ndarray:
    """Rows ``top:top+height``, columns ``left:left+width`` of an image resized from ``in_size`` to ``out_size``.

    Args:
        source: ``source(top, left, height, width)`` reads a region of the input, (h, w) or (h, w, c).
        in_size: Input (height, width).
        out_size: Output (height, width).
        top, left, height, width: The output region (clipped to ``out_size``).

    Returns:
        float32 region, (h, w) or (h, w, c) like the source.
    """
    bottom, right = min(top + height, out_size[0]), min(left + width, out_size[1])
    row0, row_weights = linear_weights(top, bottom, in_size[0], out_size[0])
    col0, col_weights = linear_weights(left, right, in_size[1], out_size[1])
    pixels = np.asarray(source(row0, col0, row_weights.shape[1], col_weights.shape[1]), dtype=np.float32)
    rows = np.tensordot(row_weights, pixels, axes=(1, 0))  # (h', w, ...)
    out = np.tensordot(col_weights, rows, axes=(1, 1))  # (w', h', ...)
    return np.swapaxes(out, 0, 1)


def nearest_indices(out_start: int, out_stop: int, in_size: int, out_size: int) -> np.ndarray:
    """Input index of each output pixel of one axis for nearest-neighbour resizing (centres aligned)."""
    centres = (np.arange(out_start, out_stop, dtype=np.float64) + 0.5) * (in_size / out_size)
    return np.clip(np.floor(centres).astype(np.int64), 0, in_size - 1)


class ResampledRegionReader:
    """A region reader of another reader's image resized to ``height x width`` (uint8 RGB).

    Regions are resized with :func:`linear_weights`, so streaming a resampled image gives the
    same pixels as resampling it whole.
    """

    def __init__(self, reader: RegionReader, height: int, width: int) -> None:
        self.source = reader
        self.height, self.width = int(height), int(width)
        self.name = reader.name

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        region = resample_region(
            self.source.read,
            (self.source.height, self.source.width),
            (self.height, self.width),
            top,
            left,
            height,
            width,
        )
        return np.clip(np.round(region), 0, 255).astype(np.uint8)

    def close(self) -> None:
        """The source reader is closed by its owner."""
