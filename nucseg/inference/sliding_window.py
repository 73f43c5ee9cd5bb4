"""Sliding-window prediction of images larger than what the network is run on.

The image is covered by tiles of ``tile_size`` spaced evenly so that neighbours share at least
``overlap`` pixels; tiles from all images of the batch are stacked ``batch_size`` at a time
through the network, and the tile logits are blended into one map of exactly the input's size.

Blending. Each tile's logits are weighted by a separable map (a Gaussian with sigma = tile / 8,
as in nnU-Net and MONAI, or flat) and the weighted sum is divided by the sum of weights. Two
rules make the stitched map equal the untiled prediction of a translation-equivariant network:

- the outer ``overlap // 4`` pixels of a tile side that faces another tile get weight 0: a
  network's zero padding corrupts its output there, and only there if its receptive-field radius
  is at most ``overlap // 4`` (i.e. the receptive field fits in half the overlap);
- a tile side that lies on the image border keeps full weight from the border to the tile
  centre: those pixels are seen by no other tile, and the network sees the same image border as
  when it predicts the whole image, so nothing is gained by down-weighting them.

Padding. An image (axis) smaller than a tile is padded up to one tile, by reflection where the
image is large enough for it and by edge replication otherwise. ``border_pad`` adds reflected
context around every image (the U-Net "overlap-tile" strategy) so that border pixels are
predicted with image-like context instead of the network's zero padding; it costs extra tiles,
so it is off by default (random training crops, too, see zero padding at their borders).

Cost. Tile grids and weights are computed once per image size and cached; per tile there is
one slice copy and one multiply-add into a preallocated accumulator on the network's device,
with no host syncs until the final result is returned. On a GPU these are asynchronous torch
kernels. On the CPU they go through numpy views of the same memory: run as torch ops, each
tiny op would be split over torch's intra-op threads, and on a CPU shared with other processes
every split op can wait milliseconds for those threads (measured: 0.45 s per 1000 x 1000 image
with 2 threads on a loaded 2-core machine, against 5 ms through numpy).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nucseg.inference.tta import TTA_MODES, tta_forward

BLEND_MODES = ("gaussian", "flat")
GAUSSIAN_SIGMA_SCALE = 0.125
MIN_WEIGHT = 1e-6  # floor of the Gaussian inside a tile, so far corners still count


def sliding_window_predict(
    images: torch.Tensor,
    predict_fn: Callable[[torch.Tensor], torch.Tensor],
    tile_size: int | tuple[int, int] = 256,
    overlap: int | float = 64,
    batch_size: int = 8,
    blend: str = "gaussian",
    tta: str = "none",
    pad_mode: str = "reflect",
    amp: bool = False,
    progress: bool = False,
    tile_multiple: int = 32,
    border_pad: int = 0,
) -> torch.Tensor:
    """Predict ``images`` tile by tile and blend the tiles into full-size logits.

    Args:
        images: (B, 3, H, W) or (3, H, W) float images in [0, 1] on any device.
        predict_fn: Maps (b, 3, h, w) to (b, C, h, w) logits, e.g. a ``SegmentationModule`` or a
            bare ``nn.Module``. Tiles are sent to the device of its parameters (if it has any),
            otherwise they stay on the input's device.
        tile_size: Tile side, or (height, width), in pixels.
        overlap: Minimum pixels shared by neighbouring tiles (int), or a fraction of the tile
            side (float in [0, 1)).
        batch_size: Tiles per forward call.
        blend: ``"gaussian"`` or ``"flat"`` tile weights (see the module docstring).
        tta: ``"none"``, ``"flips"`` or ``"d4"`` test-time augmentation (see ``tta.py``).
        pad_mode: ``F.pad`` mode used to pad images smaller than a tile and for ``border_pad``;
            ``"reflect"`` falls back to ``"replicate"`` where the image is too small to reflect.
        amp: Autocast the forward pass (float16 on CUDA, bfloat16 elsewhere). Off by default:
            validation, test, ``evaluate.py`` and ``predict`` all score float32 logits, so the
            numbers a run reports are the numbers its checkpoint gives anywhere; turn it on
            explicitly (``module.inference.amp=true``) for speed when a small difference is fine.
        progress: Show a tqdm bar over tile batches.
        tile_multiple: Each tile side must be a multiple of this; 32 suits the encoders of
            segmentation_models_pytorch and U-Nets of depth <= 5. Use 1 to disable the check.
        border_pad: Pixels of reflected context added around each image before tiling.

    Returns:
        (B, C, H, W) float32 blended logits (or (C, H, W) for an unbatched input) on the input's
        device.

    Raises:
        ValueError: For a malformed input, tile, overlap, blend or TTA setting, or a network
            output of the wrong shape.
    """
    unbatched = images.ndim == 3
    batch = images.unsqueeze(0) if unbatched else images
    if batch.ndim != 4 or not batch.is_floating_point():
        raise ValueError(
            f"sliding_window_predict: expected float images (B, C, H, W) or (C, H, W), "
            f"got {tuple(images.shape)} {images.dtype}"
        )
    tile, overlap_px = resolve_tiling(tile_size, overlap, batch_size, blend, tta, tile_multiple)
    if border_pad < 0:
        raise ValueError(f"sliding_window_predict: border_pad must be >= 0, got {border_pad}")
    out_device = batch.device
    device = model_device(predict_fn) or out_device
    use_amp = bool(amp)

    with torch.inference_mode():
        source = batch.detach().to(device=device, dtype=torch.float32)
        padded, (top, left) = _pad_for_tiling(source, tile, border_pad, pad_mode)
        height, width = batch.shape[-2:]
        grid = cached_grid((int(padded.shape[-2]), int(padded.shape[-1])), tile, overlap_px, blend, device)
        logits = _predict_tiles(padded, predict_fn, grid, batch_size, tta, use_amp, progress)
        logits = logits[:, :, top : top + height, left : left + width]
        weights = grid.weight_sum()[top : top + height, left : left + width]
        result = _divide(logits, weights).to(out_device)
    return result[0] if unbatched else result


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


def predict_tile_batch(
    tiles: torch.Tensor, predict_fn: Callable[[torch.Tensor], torch.Tensor], tta: str, use_amp: bool
) -> torch.Tensor:
    """Run one batch of tiles (with TTA and optional autocast) and return float32 logits.

    Raises:
        ValueError: When ``predict_fn`` does not return (b, C, h, w) for (b, 3, h, w) tiles.
    """
    with autocast_context(tiles.device, use_amp):
        logits = tta_forward(predict_fn, tiles, tta)
    if logits.ndim != 4 or logits.shape[0] != tiles.shape[0] or logits.shape[-2:] != tiles.shape[-2:]:
        raise ValueError(
            f"sliding_window_predict: predict_fn returned {tuple(logits.shape)} for tiles "
            f"{tuple(tiles.shape)}; expected (b, C, {tiles.shape[-2]}, {tiles.shape[-1]})"
        )
    return logits.float()


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


def _predict_tiles(
    padded: torch.Tensor,
    predict_fn: Callable[[torch.Tensor], torch.Tensor],
    grid: TileGrid,
    batch_size: int,
    tta: str,
    use_amp: bool,
    progress: bool,
) -> torch.Tensor:
    """Run all tiles through ``predict_fn`` and return the weighted sum of their logits."""
    th, tw = grid.tile
    jobs = [(index, y, x) for index in range(padded.shape[0]) for y, x in grid.positions()]
    batches = range(0, len(jobs), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="tiles", unit="batch", leave=False)
    accumulator: torch.Tensor | None = None
    for start in batches:
        chunk = jobs[start : start + batch_size]
        tiles = gather_tiles(padded, chunk, (th, tw))
        logits = predict_tile_batch(tiles, predict_fn, tta, use_amp)
        if accumulator is None:
            accumulator = zeros((padded.shape[0], logits.shape[1], *grid.size), padded.device)
        accumulate_tiles(accumulator, logits, chunk, [grid.weight(y, x) for _, y, x in chunk])
    assert accumulator is not None
    return accumulator


def zeros(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A float32 zero tensor; on the CPU allocated by numpy (see :func:`gather_tiles`)."""
    if device.type == "cpu":
        return torch.from_numpy(np.zeros(shape, dtype=np.float32))
    return torch.zeros(shape, dtype=torch.float32, device=device)


def _divide(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``values / weights`` (broadcast), through numpy on the CPU (see :func:`gather_tiles`)."""
    if values.device.type == "cpu":
        return torch.from_numpy(np.divide(values.numpy(), weights.numpy()))
    return values / weights


def gather_tiles(
    source: torch.Tensor, corners: list[tuple[int, int, int]], tile: tuple[int, int]
) -> torch.Tensor:
    """Stack the tiles ``source[index, :, y:y+h, x:x+w]`` for each (index, y, x) into a batch.

    On the CPU the copies go through numpy: torch would run each as a tiny multi-threaded op,
    and on a CPU shared with other processes every such op can wait milliseconds for its worker
    threads to be scheduled. numpy copies on the calling thread and never waits.
    """
    th, tw = tile
    if source.device.type == "cpu":
        array = source.numpy()
        return torch.from_numpy(
            np.stack([array[index, :, y : y + th, x : x + tw] for index, y, x in corners])
        )
    return torch.stack([source[index, :, y : y + th, x : x + tw] for index, y, x in corners])


def accumulate_tiles(
    accumulator: torch.Tensor,
    logits: torch.Tensor,
    corners: list[tuple[int, int, int]],
    weights: list[torch.Tensor],
) -> None:
    """``accumulator[index, :, y:y+h, x:x+w] += logits[k] * weights[k]`` for each tile k, in place.

    On the CPU through numpy views of the same memory, for the reason given in
    :func:`gather_tiles`; on a GPU as fused ``addcmul_`` kernels (asynchronous, no host sync).
    """
    th, tw = logits.shape[-2:]
    if accumulator.device.type == "cpu":
        target, values = accumulator.numpy(), logits.numpy()
        for k, (index, y, x) in enumerate(corners):
            target[index, :, y : y + th, x : x + tw] += values[k] * weights[k].numpy()
        return
    for k, (index, y, x) in enumerate(corners):
        accumulator[index, :, y : y + th, x : x + tw].addcmul_(logits[k], weights[k])


def _pad_for_tiling(
    images: torch.Tensor, tile: tuple[int, int], border_pad: int, pad_mode: str
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad by ``border_pad`` on every side, then up to one tile; return the (top, left) offset."""
    top = left = 0
    if border_pad:
        images = _pad(images, (border_pad,) * 4, pad_mode)
        top = left = border_pad
    missing_h = max(0, tile[0] - images.shape[-2])
    missing_w = max(0, tile[1] - images.shape[-1])
    if missing_h or missing_w:
        pads = (missing_w // 2, missing_w - missing_w // 2, missing_h // 2, missing_h - missing_h // 2)
        images = _pad(images, pads, pad_mode)
        top += missing_h // 2
        left += missing_w // 2
    return images, (top, left)


def _pad(images: torch.Tensor, pads: tuple[int, int, int, int], mode: str) -> torch.Tensor:
    """``F.pad`` of (left, right, top, bottom); reflection needs pads smaller than the side."""
    if mode == "reflect" and (max(pads[:2]) >= images.shape[-1] or max(pads[2:]) >= images.shape[-2]):
        mode = "replicate"
    if mode == "constant":
        return F.pad(images, pads, mode="constant", value=0.0)
    return F.pad(images, pads, mode=mode)


@contextlib.contextmanager
def autocast_context(device: torch.device, enabled: bool) -> Iterator[None]:
    """Autocast to float16 on CUDA and bfloat16 elsewhere, or do nothing."""
    if not enabled:
        yield
        return
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def model_device(predict_fn: Any) -> torch.device | None:
    """The device of ``predict_fn``'s parameters (a module or a bound method of one), if any."""
    module = predict_fn if isinstance(predict_fn, nn.Module) else getattr(predict_fn, "__self__", None)
    if not isinstance(module, nn.Module):
        return None
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return None


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
