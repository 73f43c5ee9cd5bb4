"""Prediction of images of any size in memory that does not grow with the image's area.

Reading is ``nucseg.io`` (region readers, resampling); the readers stay importable from here.

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
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from nucseg.data.stain.apply import COLOUR_TABLE_MIN_PIXELS, colour_table, lookup_colours
from nucseg.inference.sliding_window import (
    DEFAULTS,
    TileGrid,
    accumulate_tiles,
    gather_tiles,
    input_divisor,
    model_device,
    predict_tile_batch,
    resolve_tiling,
    sliding_window_predict,
    zeros,
)
from nucseg.io.overview import DEFAULT_OVERVIEW_PIXELS, OVERVIEW_READ_PIXELS, overview_stride, read_overview
from nucseg.io.regions import ArrayRegionReader, RegionReader, TiffRegionReader, open_region_reader
from nucseg.io.resample import ResampledRegionReader, linear_weights, nearest_indices, resample_region

__all__ = [
    "DEFAULT_OVERVIEW_PIXELS",
    "OVERVIEW_READ_PIXELS",
    "ArrayRegionReader",
    "RegionReader",
    "ResampledRegionReader",
    "TiffRegionReader",
    "fixed_stain_transform",
    "linear_weights",
    "nearest_indices",
    "open_region_reader",
    "overview_stride",
    "read_overview",
    "resample_region",
    "stream_logits",
]

logger = logging.getLogger(__name__)

Normalizer = Callable[[np.ndarray], np.ndarray]

#: Logits of skipped blocks: sigmoid(-20) = 2e-9, a probability that rounds to 0 in uint8.
SKIP_LOGIT = -20.0

SkipFn = Callable[[int, int, int, int], bool]


class StainEstimator(Protocol):
    """A stain normaliser split into estimate and apply (``nucseg.data.stain``)."""

    def estimate_source(self, image: np.ndarray, name: str | None = None) -> Any: ...

    def apply(self, image: np.ndarray, estimate: Any) -> np.ndarray: ...


def fixed_stain_transform(
    reader: RegionReader,
    normalizer: StainEstimator,
    name: str | None = None,
    max_pixels: int = DEFAULT_OVERVIEW_PIXELS,
    colour_table_above: int = COLOUR_TABLE_MIN_PIXELS,
    mapped_pixels: int | None = None,
) -> Normalizer:
    """Estimate the image's stains once from ``read_overview`` and return the fixed per-block map.

    Args:
        reader: The image to be streamed.
        normalizer: A fitted normaliser with ``estimate_source`` and ``apply``.
        name: The image's name in the fallback warning (default: ``reader.name``).
        max_pixels: Thumbnail size limit, see ``read_overview``.
        colour_table_above: images of at least this many pixels are mapped through a table of
            all 2**24 colours (:func:`nucseg.data.stain.apply.colour_table`, built once, ~3 s on
            2 cores): the same pixels as ``apply`` block by block, in about half the time.
        mapped_pixels: how many pixels the transform will map (default: the reader's); an image
            resampled to the model's pixel size maps its resampled grid, not the input's.

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

    if mapped_pixels is None:
        mapped_pixels = reader.height * reader.width
    if estimate is None or mapped_pixels < colour_table_above:
        return normalize
    table = colour_table(normalize)
    return lambda region: lookup_colours(region, table)


def stream_logits(
    reader: RegionReader,
    predict_fn: Callable[[torch.Tensor], torch.Tensor],
    normalize: Normalizer | None = None,
    tile_size: int | tuple[int, int] = DEFAULTS.tile_size,
    overlap: int | float = DEFAULTS.overlap,
    batch_size: int = DEFAULTS.batch_size,
    blend: str = DEFAULTS.blend,
    tta: str = DEFAULTS.tta,
    amp: bool = DEFAULTS.amp,
    tile_multiple: int | None = DEFAULTS.tile_multiple,
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
    if tile_multiple is None:
        tile_multiple = input_divisor(predict_fn)
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
