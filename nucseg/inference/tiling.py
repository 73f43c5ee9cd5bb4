"""Where the tiles of a sliding window go and how much each pixel of a tile counts.

Tiles of ``tile_size`` are spaced evenly so that neighbours share at least ``overlap`` pixels
(``tile_starts``); ``TileGrid`` holds their corners and separable blending weights (the rules
are in ``nucseg.inference.sliding_window``). ``resolve_tiling`` checks the settings once for
both the in-memory and the streamed predictor. Tile sides must be multiples of what the
network downsamples by: its ``input_divisor`` (``nucseg.models.registry``), read by
``input_divisor``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from nucseg.inference.tta import TTA_MODES

BLEND_MODES = ("gaussian", "flat")
GAUSSIAN_SIGMA_SCALE = 0.125
MIN_WEIGHT = 1e-6  # floor of the Gaussian inside a tile, so far corners still count
#: Tile multiple of a network that does not say (the encoders of segmentation_models_pytorch).
DEFAULT_TILE_MULTIPLE = 32


def input_divisor(predict_fn: Any) -> int:
    """What tile sides must be multiples of: the network's ``input_divisor``.

    Looked up on ``predict_fn`` itself (a bare network) and on its ``net`` (a
    ``SegmentationModule``); ``DEFAULT_TILE_MULTIPLE`` when neither says.
    """
    for candidate in (predict_fn, getattr(predict_fn, "net", None)):
        divisor = getattr(candidate, "input_divisor", None)
        if isinstance(divisor, int) and divisor >= 1:
            return divisor
    return DEFAULT_TILE_MULTIPLE


class TileGrid:
    """Tile positions and blending weights for one padded image size.

    Args:
        size: (height, width) of the padded image.
        tile: (height, width) of a tile; no larger than ``size``.
        overlap: Minimum (vertical, horizontal) overlap in pixels.
        blend: ``"gaussian"`` or ``"flat"``.
        device: Where the weight maps live (the accumulator's device).
    """

    def __init__(
        self,
        size: tuple[int, int] | torch.Size,
        tile: tuple[int, int],
        overlap: tuple[int, int],
        blend: str,
        device: torch.device,
    ) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.tile = tile
        self.device = device
        self.starts = tuple(
            tile_starts(length, side, ov) for length, side, ov in zip(self.size, tile, overlap, strict=True)
        )
        # 1-D profiles per axis, keyed by (starts on the image border, ends on it); numpy, so that
        # building a grid costs no small torch ops (slow when other processes load the CPU)
        self._profiles = [
            {key: _axis_profile(side, ov // 4, blend, *key) for key in self._axis_keys(starts)}
            for side, ov, starts in zip(tile, overlap, self.starts, strict=True)
        ]
        self._maps: dict[tuple[int, int, int, int], torch.Tensor] = {}
        for ky, py in self._profiles[0].items():
            for kx, px in self._profiles[1].items():
                weight = torch.from_numpy(np.outer(py, px).astype(np.float32))
                self._maps[(*ky, *kx)] = weight.to(device)
        self._weight_sum: torch.Tensor | None = None

    @staticmethod
    def _axis_keys(starts: list[int]) -> set[tuple[int, int]]:
        """The (first, last) kinds of tile that occur along an axis."""
        return {(int(index == 0), int(index == len(starts) - 1)) for index in range(len(starts))}

    def positions(self) -> Iterator[tuple[int, int]]:
        """Yield the (top, left) corner of every tile, row by row."""
        for y in self.starts[0]:
            for x in self.starts[1]:
                yield y, x

    def weight(self, y: int, x: int) -> torch.Tensor:
        """The (tile_h, tile_w) weight map of the tile whose corner is (y, x)."""
        ys, xs = self.starts
        return self._maps[(int(y == ys[0]), int(y == ys[-1]), int(x == xs[0]), int(x == xs[-1]))]

    def axis_weight_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row (H,) and per-column (W,) sums of the 1-D profiles of all tiles.

        Weights are separable and the tiles form a full grid, so the sum of all tile weights at
        (y, x) is ``rows[y] * cols[x]``: a band of the image can be normalised without the
        whole (H, W) map, which the streaming predictor relies on.
        """
        sums = []
        for axis, starts in enumerate(self.starts):
            total = np.zeros(self.size[axis], dtype=np.float64)
            for index, start in enumerate(starts):
                key = (int(index == 0), int(index == len(starts) - 1))
                total[start : start + self.tile[axis]] += self._profiles[axis][key]
            sums.append(torch.from_numpy(np.maximum(total, MIN_WEIGHT).astype(np.float32)).to(self.device))
        return sums[0], sums[1]

    def weight_sum(self) -> torch.Tensor:
        """The (H, W) sum of the weights of all tiles covering each pixel (positive everywhere)."""
        if self._weight_sum is None:
            rows, cols = self.axis_weight_sums()
            self._weight_sum = rows[:, None] * cols[None, :]
        return self._weight_sum


@functools.lru_cache(maxsize=8)
def cached_grid(
    size: tuple[int, int], tile: tuple[int, int], overlap: tuple[int, int], blend: str, device: torch.device
) -> TileGrid:
    """A :class:`TileGrid`, reused across calls: validation predicts many images of one size."""
    return TileGrid(size, tile, overlap, blend, device)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spaced tile starts covering ``[0, length)`` with at least ``overlap`` shared pixels.

    The first tile starts at 0 and the last ends at ``length``; the fewest tiles are used, so the
    actual overlap is between ``overlap`` and ``overlap + stride``.
    """
    if length <= tile:
        return [0]
    stride = tile - overlap
    count = math.ceil((length - tile) / stride) + 1
    span = length - tile
    return [round(index * span / (count - 1)) for index in range(count)]


def resolve_tiling(
    tile_size: int | tuple[int, int],
    overlap: int | float,
    batch_size: int,
    blend: str,
    tta: str,
    tile_multiple: int,
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Validate the tiling settings; return the tile and overlap as (height, width) pixel pairs.

    Raises:
        ValueError: With one line naming the bad setting.
    """
    tile = _pair(tile_size, "tile_size")
    _check_settings(tile, batch_size, blend, tta, tile_multiple)
    return tile, (_overlap_pixels(overlap, tile[0]), _overlap_pixels(overlap, tile[1]))


def _axis_profile(tile: int, trim: int, blend: str, first: int, last: int) -> np.ndarray:
    """1-D tile weight: Gaussian or flat, 0 on ``trim`` pixels of inner sides, full on border sides.

    ``first``/``last`` say that the tile's start/end side lies on the image border.
    """
    if blend == "gaussian":
        coords = np.arange(tile, dtype=np.float64) - (tile - 1) / 2
        profile = np.exp(-0.5 * (coords / (GAUSSIAN_SIGMA_SCALE * tile)) ** 2)
        profile = np.maximum(profile / profile.max(), MIN_WEIGHT)
    else:
        profile = np.ones(tile, dtype=np.float64)
    half = tile // 2
    if first:
        profile[:half] = 1.0
    elif trim:
        profile[:trim] = 0.0
    if last:
        profile[tile - half :] = 1.0
    elif trim:
        profile[tile - trim :] = 0.0
    return profile



def _pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    """Turn ``n`` or ``(h, w)`` into a pair of positive ints."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"sliding_window_predict: {name} must be a positive int or (h, w), got {value!r}")
    return pair  # type: ignore[return-value]


def _overlap_pixels(overlap: int | float, side: int) -> int:
    """Overlap in pixels for a tile side: an int as is, a float in [0, 1) as a fraction."""
    if isinstance(overlap, float):
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"sliding_window_predict: fractional overlap must be in [0, 1), got {overlap}")
        pixels = round(overlap * side)
    else:
        pixels = int(overlap)
    if not 0 <= pixels < side:
        raise ValueError(
            f"sliding_window_predict: overlap {overlap!r} must be >= 0 and smaller than the tile ({side})"
        )
    return pixels


def _check_settings(tile: tuple[int, int], batch_size: int, blend: str, tta: str, tile_multiple: int) -> None:
    """Reject settings that would fail later with a less clear message."""
    if tile_multiple > 1 and any(side % tile_multiple for side in tile):
        raise ValueError(
            f"sliding_window_predict: tile_size {tile} must be a multiple of {tile_multiple} "
            f"(the network downsamples by that factor); pass tile_multiple=1 to skip this check"
        )
    if batch_size < 1:
        raise ValueError(f"sliding_window_predict: batch_size must be >= 1, got {batch_size}")
    if blend not in BLEND_MODES:
        raise ValueError(
            f"sliding_window_predict: unknown blend {blend!r}, expected one of {', '.join(BLEND_MODES)}"
        )
    if tta not in TTA_MODES:
        raise ValueError(
            f"sliding_window_predict: unknown tta {tta!r}, expected one of {', '.join(TTA_MODES)}"
        )
