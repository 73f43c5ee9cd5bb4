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
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nucseg.inference.settings import InferenceSettings
from nucseg.inference.tiling import (
    BLEND_MODES,
    DEFAULT_TILE_MULTIPLE,
    TileGrid,
    cached_grid,
    input_divisor,
    resolve_tiling,
    tile_starts,
)
from nucseg.inference.tta import tta_forward

DEFAULTS = InferenceSettings()

__all__ = [
    "BLEND_MODES",
    "DEFAULT_TILE_MULTIPLE",
    "TileGrid",
    "cached_grid",
    "input_divisor",
    "resolve_tiling",
    "sliding_window_predict",
    "tile_starts",
]



def sliding_window_predict(
    images: torch.Tensor,
    predict_fn: Callable[[torch.Tensor], torch.Tensor],
    tile_size: int | tuple[int, int] = DEFAULTS.tile_size,
    overlap: int | float = DEFAULTS.overlap,
    batch_size: int = DEFAULTS.batch_size,
    blend: str = DEFAULTS.blend,
    tta: str = DEFAULTS.tta,
    pad_mode: str = "reflect",
    amp: bool = DEFAULTS.amp,
    progress: bool = False,
    tile_multiple: int | None = DEFAULTS.tile_multiple,
    border_pad: int = DEFAULTS.border_pad,
) -> torch.Tensor:
    """Predict ``images`` tile by tile and blend the tiles into full-size logits.

    The defaults are :class:`~nucseg.inference.settings.InferenceSettings`'s; a run passes its own
    (``**settings.kwargs()``).

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
        tile_multiple: Each tile side must be a multiple of this (default: the network's
            ``input_divisor``, see ``tiling.input_divisor``). Use 1 to disable the check.
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
    if tile_multiple is None:
        tile_multiple = input_divisor(predict_fn)
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
