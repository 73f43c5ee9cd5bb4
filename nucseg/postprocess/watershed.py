"""From per-pixel probabilities to instance labels, for each target: one entry point.

``postprocess(probabilities, target, **params)`` takes one image's probabilities (C, H, W) (what
``SegmentationModule.probabilities`` gives, one image) and returns (H, W) int32 labels, 0 =
background, 1..N in raster order of each object's first pixel:

- ``binary`` (C = 1): connected components of ``probability > threshold``
  (:func:`~nucseg.postprocess.instances.label_instances`, today's rule), optional hole filling.
- ``contour`` (C = 3: background, interior, boundary): marker-controlled watershed. Foreground
  = ``1 - P(background) > threshold``; markers = connected components of ``P(interior) >
  marker_threshold`` inside the foreground, eroded by ``marker_erosion_px`` and at least
  ``min_marker_size`` pixels; the flooding relief is ``1 - P(interior)``, so each marker grows
  over its nucleus and meets its neighbour on the predicted boundary.
- ``distance`` (C = 2: foreground, normalised distance): the same watershed on ``-distance``,
  with markers at the distance peaks: regional maxima of height ``h`` (``markers="h_maxima"``,
  skimage's ``h_maxima``) or peaks at least ``min_distance_px`` apart (``markers="peaks"``,
  ``peak_local_max``).
- ``hv`` (C = 3: foreground, horizontal and vertical maps; HoVer-Net's idea, our own rule): inside
  a nucleus each map increases along its axis, and between two touching nuclei it drops from
  about +1 to -1. The edge strength is the larger over both axes of the map's decrease per pixel
  (Sobel, after Gaussian smoothing of ``sigma_px``); markers are the foreground pixels whose edge
  strength is below ``edge_threshold``, opened by ``marker_opening_px``; the watershed floods
  the smoothed edge strength.

Then, for every target: holes inside each foreground component are filled (``fill_holes``) before
labelling, and objects smaller than ``min_size`` pixels are removed. A foreground component
without any marker is kept as one object (a nucleus whose interior the network missed is not
thrown away).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from nucseg.postprocess.instances import label_instances, structure

POSTPROCESS_TARGETS = ("binary", "contour", "distance", "hv")
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "binary": {"threshold": 0.5, "min_size": 0, "fill_holes": False, "connectivity": 1},
    "contour": {
        "threshold": 0.5,
        "marker_threshold": 0.5,
        "marker_erosion_px": 0,
        "min_marker_size": 4,
        "min_size": 10,
        "fill_holes": True,
    },
    "distance": {
        "threshold": 0.5,
        "markers": "h_maxima",
        "h": 0.2,
        "min_distance_px": 3,
        "min_size": 10,
        "fill_holes": True,
    },
    "hv": {
        "threshold": 0.5,
        "edge_threshold": 0.1,
        "sigma_px": 1.0,
        "marker_opening_px": 1,
        "min_marker_size": 4,
        "min_size": 10,
        "fill_holes": True,
    },
}
CHANNELS = {"binary": 1, "contour": 3, "distance": 2, "hv": 3}


def default_params(target: str) -> dict[str, Any]:
    """A copy of the default post-processing parameters of ``target``."""
    _check_target(target)
    return dict(DEFAULT_PARAMS[target])


def _check_target(target: str) -> None:
    if target not in POSTPROCESS_TARGETS:
        raise ValueError(f"postprocess: unknown target '{target}'; choose one of: {', '.join(POSTPROCESS_TARGETS)}")


def postprocess(probabilities: np.ndarray, target: str = "binary", **params: Any) -> np.ndarray:
    """Instance labels of one image from its per-pixel probabilities.

    Args:
        probabilities: (C, H, W) float probabilities in [0, 1] (for ``distance``: the foreground
            probability and the clamped distance; for ``hv``: the foreground probability and the
            two maps); C = 1, 3, 2, 3 for binary, contour, distance, hv.
        target: ``binary``, ``contour``, ``distance`` or ``hv``.
        **params: replace the target's defaults (:data:`DEFAULT_PARAMS`); unknown names raise.

    Returns:
        (H, W) int32 labels, 0 = background, 1..N.

    Raises:
        ValueError: unknown target or parameter, or a channel count that does not fit the target.
    """
    _check_target(target)
    unknown = set(params) - set(DEFAULT_PARAMS[target])
    if unknown:
        raise ValueError(
            f"postprocess: unknown parameter(s) {sorted(unknown)} for target '{target}'; "
            f"known: {sorted(DEFAULT_PARAMS[target])}"
        )
    options = {**DEFAULT_PARAMS[target], **params}
    array = np.asarray(probabilities, dtype=np.float32)
    expected_channels = CHANNELS[target]
    if array.ndim != 3 or array.shape[0] != expected_channels:
        raise ValueError(
            f"postprocess: target '{target}' needs ({expected_channels}, H, W) probabilities, got {array.shape}"
        )
    if target == "binary":
        foreground_mask = array[0] > options["threshold"]
        if options["fill_holes"]:
            foreground_mask = ndimage.binary_fill_holes(foreground_mask)
        return label_instances(foreground_mask, min_size=options["min_size"], connectivity=options["connectivity"])
    if target == "contour":
        foreground_mask = (1.0 - array[0]) > options["threshold"]
        relief = 1.0 - array[1]
        marker_mask = array[1] > options["marker_threshold"]
        if options["marker_erosion_px"] > 0:
            marker_mask = ndimage.binary_erosion(marker_mask, iterations=int(options["marker_erosion_px"]))
    elif target == "distance":
        foreground_mask = array[0] > options["threshold"]
        distance = np.where(foreground_mask, array[1], 0.0).astype(np.float32)
        relief = -distance
        marker_mask = _distance_peaks(distance, foreground_mask, options)
    else:
        foreground_mask = array[0] > options["threshold"]
        relief = hv_edge_strength(array[1:], foreground_mask, float(options["sigma_px"]))
        marker_mask = foreground_mask & (relief < options["edge_threshold"])
        if options["marker_opening_px"] > 0:
            marker_mask = ndimage.binary_opening(marker_mask, iterations=int(options["marker_opening_px"]))
    if options["fill_holes"]:
        foreground_mask = ndimage.binary_fill_holes(foreground_mask)
    return marker_watershed(
        relief,
        marker_mask & foreground_mask,
        foreground_mask,
        min_marker_size=int(options.get("min_marker_size", 1)),
        min_size=int(options["min_size"]),
    )


def hv_edge_strength(maps: np.ndarray, foreground_mask: np.ndarray, sigma_px: float = 1.0) -> np.ndarray:
    """(H, W) float32: the larger over both axes of how fast the hv maps decrease, per pixel.

    ``maps`` (2, H, W): horizontal offsets (increase along columns) and vertical offsets
    (increase along rows) in [-1, 1]. Outside the foreground the maps are taken as 0.
    """
    strength = np.zeros(maps.shape[1:], dtype=np.float32)
    for axis, values in ((1, maps[0]), (0, maps[1])):
        smooth = np.where(foreground_mask, values, 0.0).astype(np.float32)
        if sigma_px > 0:
            smooth = ndimage.gaussian_filter(smooth, sigma_px)
        # scipy's Sobel weighs a one-pixel step by 8 (1-2-1 smoothing x central difference of 2 px).
        decrease = np.maximum(-ndimage.sobel(smooth, axis=axis) / 8.0, 0.0)
        strength = np.maximum(strength, decrease)
    return strength


def _distance_peaks(distance: np.ndarray, foreground_mask: np.ndarray, options: dict[str, Any]) -> np.ndarray:
    """Boolean marker pixels at the peaks of the distance map."""
    if options["markers"] == "h_maxima":
        return h_maxima(distance, float(options["h"])).astype(bool) & foreground_mask
    if options["markers"] == "peaks":
        components, _ = ndimage.label(foreground_mask)
        peaks = peak_local_max(
            distance, min_distance=int(options["min_distance_px"]), labels=components, exclude_border=False
        )
        marker_mask = np.zeros(distance.shape, dtype=bool)
        marker_mask[tuple(peaks.T)] = True
        return marker_mask
    raise ValueError(f"postprocess: markers must be 'h_maxima' or 'peaks', got {options['markers']!r}")


def marker_watershed(
    relief: np.ndarray,
    marker_mask: np.ndarray,
    foreground_mask: np.ndarray,
    min_marker_size: int = 1,
    min_size: int = 0,
) -> np.ndarray:
    """Flood ``relief`` from the connected components of ``marker_mask`` inside ``foreground_mask``.

    Foreground components that hold no marker keep one label of their own. Objects of fewer than
    ``min_size`` pixels are removed; labels are renumbered 1..N in raster order.
    """
    markers = label_instances(marker_mask & foreground_mask, min_size=min_marker_size, connectivity=1)
    components, component_count = ndimage.label(foreground_mask, structure=structure(1))
    has_marker = np.zeros(component_count + 1, dtype=bool)
    has_marker[components[markers > 0]] = True
    orphans = (components > 0) & ~has_marker[components]
    if orphans.any():
        markers = np.where(orphans, components + int(markers.max()), markers).astype(np.int32)
    labels = watershed(relief, markers=markers, mask=foreground_mask)
    return _renumber(labels.astype(np.int32, copy=False), min_size)


def _renumber(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop objects under ``min_size`` pixels and number the rest 1..N in raster order."""
    if not labels.any():
        return labels.astype(np.int32)
    flat = labels.ravel()
    order_ids, first_index = np.unique(flat, return_index=True)
    areas = np.bincount(flat, minlength=int(order_ids.max()) + 1)
    keep = (order_ids > 0) & (areas[order_ids] >= max(min_size, 1))
    kept_ids = order_ids[keep][np.argsort(first_index[keep], kind="stable")]
    lut = np.zeros(int(order_ids.max()) + 1, dtype=np.int32)
    lut[kept_ids] = np.arange(1, len(kept_ids) + 1, dtype=np.int32)
    return lut[labels]
