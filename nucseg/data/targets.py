"""Training targets derived from instance labels: binary foreground, 3-class contour, distance.

Targets are made on the device from the (augmented) instance labels, in the data module's
``on_after_batch_transfer``, so rotations and zooms never blur a boundary: the label map is
resampled nearest (ids stay exact) and the boundary or distance is computed afterwards.

Every target maps instance labels (B, 1, H, W) (ids as float32 or integers, 0 = background) to a
float tensor:

- :class:`BinaryTarget` (``binary``, 1 output channel): foreground ``labels > 0``, (B, 1, H, W)
  in {0, 1}; what every binary loss term expects.
- :class:`ContourTarget` (``contour``, 3 output channels): class indices (B, 1, H, W) in
  {0 background, 1 interior, 2 boundary}. A nucleus pixel is boundary when a pixel of another
  label (background or another nucleus) lies within ``boundary_width_px`` pixels of it in
  chessboard distance, i.e. each nucleus's inner boundary (skimage ``find_boundaries(mode=
  "inner", connectivity=2)``) thickened inwards to ``boundary_width_px`` pixels. Two touching
  nuclei are therefore always separated by at least ``2 * boundary_width_px`` boundary pixels.
  The image border is not a boundary (a nucleus cut by a crop goes on outside it).
- :class:`DistanceTarget` (``distance``, 2 output channels): channel 0 the foreground, channel 1
  each nucleus's Euclidean distance to the nearest pixel outside it, divided by that nucleus's
  own maximum (so every nucleus peaks at 1, whatever its size). Computed exactly with scipy on
  the host (one nucleus at a time, on its bounding box), so it costs a device-to-host copy of
  the label batch.
- :class:`HVTarget` (``hv``, 3 output channels; HoVer-Net, Graham et al. 2019): channel 0 the
  foreground, channels 1 and 2 each nucleus's horizontal and vertical pixel offsets from its
  centre of mass, each divided by that nucleus's largest absolute offset on the axis (so in
  [-1, 1]), 0 outside nuclei. Computed on the host like the distance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
TARGET_NAMES = ("binary", "contour", "distance", "hv")
# float32 represents every integer up to 2**24 exactly: the largest id a label map may carry
# through the float augmentation.
MAX_EXACT_FLOAT32_ID = 2**24


class Target(Protocol):
    """A training target: ``target(instance_labels) -> tensor`` plus its name and channel count."""

    name: str
    out_channels: int

    def __call__(self, instance_labels: Tensor) -> Tensor: ...


def _check_labels(instance_labels: Tensor) -> None:
    if instance_labels.ndim != 4 or instance_labels.shape[1] != 1:
        raise ValueError(f"targets: instance labels must be (B, 1, H, W), got {tuple(instance_labels.shape)}")


class BinaryTarget:
    """Foreground (B, 1, H, W) float in {0, 1}."""

    name = "binary"
    out_channels = 1

    def __call__(self, instance_labels: Tensor) -> Tensor:
        _check_labels(instance_labels)
        return (instance_labels > 0).float()

    def __repr__(self) -> str:
        return "BinaryTarget()"


def inner_boundary(instance_labels: Tensor, width_px: int = 1) -> Tensor:
    """Boolean (B, 1, H, W): nucleus pixels with another label within ``width_px`` (chessboard).

    A pixel is interior when every pixel of the ``(2 * width_px + 1)`` square around it carries
    its own label; the image border is replicated, so it is no boundary.
    """
    _check_labels(instance_labels)
    if width_px < 1:
        raise ValueError(f"targets: boundary width must be at least 1 pixel, got {width_px}")
    labels = instance_labels.float()
    radius = width_px  # width 1: another label among the 8 neighbours (a 3 x 3 window)
    padded = F.pad(labels, (radius, radius, radius, radius), mode="replicate")
    window = 2 * radius + 1
    largest = F.max_pool2d(padded, window, stride=1)
    smallest = -F.max_pool2d(-padded, window, stride=1)
    return (labels > 0) & ((largest != labels) | (smallest != labels))


class ContourTarget:
    """Class indices (B, 1, H, W) float: 0 background, 1 interior, 2 boundary.

    Args:
        boundary_width_px: thickness of each nucleus's boundary band, inside the nucleus.
    """

    name = "contour"
    out_channels = 3

    def __init__(self, boundary_width_px: int = 2) -> None:
        if int(boundary_width_px) < 1:
            raise ValueError(f"ContourTarget: boundary_width_px must be >= 1, got {boundary_width_px}")
        self.boundary_width_px = int(boundary_width_px)

    def __call__(self, instance_labels: Tensor) -> Tensor:
        foreground = instance_labels > 0
        boundary = inner_boundary(instance_labels, self.boundary_width_px)
        classes = foreground.float() * INTERIOR
        return classes.masked_fill(boundary, float(BOUNDARY))

    def __repr__(self) -> str:
        return f"ContourTarget(boundary_width_px={self.boundary_width_px})"


def normalized_distance(instance_labels: np.ndarray) -> np.ndarray:
    """(H, W) float32: each nucleus's distance to the nearest pixel outside it, over its maximum.

    Exact Euclidean distances (scipy), one nucleus at a time on its bounding box padded by one
    pixel, so touching nuclei do not see into each other. The image border counts as outside
    (a nucleus cut by the border peaks inside the image).
    """
    labels = np.asarray(instance_labels)
    distance = np.zeros(labels.shape, dtype=np.float32)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        rows = slice(max(box[0].start - 1, 0), box[0].stop + 1)
        cols = slice(max(box[1].start - 1, 0), box[1].stop + 1)
        inside = labels[rows, cols] == index
        local = ndimage.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1]
        peak = local.max()
        if peak > 0:
            distance[rows, cols][inside] = (local[inside] / peak).astype(np.float32)
    return distance


def _foreground_and_maps(instance_labels: Tensor, maps_of: Callable[[np.ndarray], np.ndarray]) -> Tensor:
    """(B, 1 + C, H, W): the foreground, then ``maps_of`` (one image's sequential labels -> (C, H, W))
    computed per image on the host, where scipy's exact per-nucleus transforms run."""
    _check_labels(instance_labels)
    host = instance_labels.detach().to("cpu", torch.int64).numpy()
    maps = np.stack([maps_of(_sequential(labels[0])) for labels in host])
    return torch.cat([(instance_labels > 0).float(), torch.from_numpy(maps).to(instance_labels.device)], dim=1)


class DistanceTarget:
    """(B, 2, H, W) float: foreground, and the per-nucleus normalised distance to the outside."""

    name = "distance"
    out_channels = 2

    def __call__(self, instance_labels: Tensor) -> Tensor:
        return _foreground_and_maps(instance_labels, lambda labels: normalized_distance(labels)[None])

    def __repr__(self) -> str:
        return "DistanceTarget()"


def horizontal_vertical_maps(instance_labels: np.ndarray) -> np.ndarray:
    """(2, H, W) float32: each nucleus's column and row offsets from its centre of mass, in [-1, 1].

    Offsets are divided per nucleus and per axis by their largest absolute value (HoVer-Net's
    normalisation); a nucleus one pixel wide on an axis gets 0 on that axis.
    """
    labels = np.asarray(instance_labels)
    maps = np.zeros((2, *labels.shape), dtype=np.float32)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        inside = labels[box] == index
        rows, cols = np.nonzero(inside)
        for channel, coordinates in ((0, cols), (1, rows)):
            offsets = coordinates - coordinates.mean()
            largest = np.abs(offsets).max()
            if largest > 0:
                maps[channel][box][inside] = (offsets / largest).astype(np.float32)
    return maps


class HVTarget:
    """(B, 3, H, W) float: foreground, and the per-nucleus horizontal and vertical maps in [-1, 1]."""

    name = "hv"
    out_channels = 3

    def __call__(self, instance_labels: Tensor) -> Tensor:
        return _foreground_and_maps(instance_labels, horizontal_vertical_maps)

    def __repr__(self) -> str:
        return "HVTarget()"


def _sequential(labels: np.ndarray) -> np.ndarray:
    """Ids renumbered 1..N (find_objects indexes by id; crops hold few of an image's many ids)."""
    ids, inverse = np.unique(labels, return_inverse=True)
    if ids[0] != 0:
        inverse = inverse + 1
    return inverse.reshape(labels.shape).astype(np.int32)


def build_target(name: str = "binary", boundary_width_px: int = 2) -> Target:
    """The target called ``name``; options that do not apply to it are ignored.

    Raises:
        ValueError: ``name`` is not a known target.
    """
    if name == "binary":
        return BinaryTarget()
    if name == "contour":
        return ContourTarget(boundary_width_px)
    if name == "distance":
        return DistanceTarget()
    if name == "hv":
        return HVTarget()
    raise ValueError(f"unknown target '{name}'; choose one of: {', '.join(TARGET_NAMES)} (conf/target/)")
