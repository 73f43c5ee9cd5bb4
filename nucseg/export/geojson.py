"""Nucleus polygons from instance labels, as GeoJSON that QuPath imports as detection objects.

What QuPath (0.4 and later) reads from a Feature, and therefore what is written:

- ``"id"``: a UUID string (QuPath keeps it as the object's ID);
- ``geometry``: a ``Polygon`` in image pixel coordinates, x = column, y = row, with (0, 0) the
  top-left corner of the top-left pixel (so pixel (r, c) covers [c, c+1) x [r, r+1));
- ``properties.objectType``: ``"detection"`` (QuPath makes an annotation when it is missing);
- ``properties.classification``: ``{"name": "Nucleus", "color": [r, g, b]}``;
- ``properties.isLocked``: false; ``properties.measurements``: a name -> number object, QuPath's
  current form (older QuPath versions wrote a list of ``{"name", "value"}``; 0.4+ reads both),
  named like QuPath's own (``Area µm^2``, ``Perimeter µm``...; see ``nucseg.export.measurements``)
  or ``{"Area px^2": n}`` when no measurements are given.

The FeatureCollection also carries a foreign member ``"nucseg"`` (RFC 7946 section 6.1; QuPath
ignores it) with the image's pixel size, so the file records its own scale.

Coordinates may be scaled (``scale``): nuclei segmented at the model's resolution are traced
there and their rings mapped to the input image's pixel frame. ``shift`` (x, y), added after
scaling, places them in a larger frame: a whole slide's level-0 pixels, or a slide a region was
exported from.

Polygons. Each nucleus is traced with marching squares (``skimage.measure.find_contours`` at
level 0.5 on its zero-padded mask), so the ring runs midway between pixel centres and never
crosses itself; ``fully_connected="low"`` matches 4-connected labels, "high" 8-connected ones.
Only the exterior ring is written (holes inside a nucleus are filled in the polygon); a label is
expected to be one connected piece, as ``label_instances`` makes them (otherwise only the largest
piece is traced). The ring
is simplified with Douglas-Peucker (``tolerance``, 0.25 px by default: it removes the collinear
and nearly collinear vertices, about two thirds of them, and changes the area by well under 1%) and the unsimplified ring is kept
whenever simplification would leave fewer than 4 positions or make it self-intersecting
(shapely's ``LinearRing`` validity).
Rings are closed (first position repeated last) and counter-clockwise by the shoelace sign of
the coordinates as written (RFC 7946's rule; with y pointing down the ring looks clockwise on
screen). Unscaled coordinates are multiples of 0.5 and written exactly.

``write_geojson`` streams features to disk, so a slide with a million nuclei is not held as one
JSON document in memory.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.measure import approximate_polygon, find_contours

from nucseg.utils.atomic import atomic_path

NUCLEUS_CLASS = {"name": "Nucleus", "color": [230, 60, 60]}


def ring_signed_area(ring: np.ndarray) -> float:
    """Shoelace signed area of a closed or open ring of (x, y) positions (> 0: counter-clockwise)."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def ring_is_simple(ring: np.ndarray) -> bool:
    """Whether a closed ring (first == last) is a valid, simple ``LinearRing`` (shapely): no two
    edges cross or touch except neighbours at their shared vertex, and no edge folds back."""
    from shapely.geometry import LinearRing

    points = np.asarray(ring, dtype=np.float64)
    if len(points) < 4 or not np.array_equal(points[0], points[-1]):
        return False
    linear_ring = LinearRing(points)
    return bool(linear_ring.is_valid and linear_ring.is_simple)


def nucleus_ring(
    mask: np.ndarray, offset: tuple[int, int] = (0, 0), tolerance: float = 0.25, connectivity: int = 1
) -> np.ndarray | None:
    """The closed exterior ring of one object as (n, 2) float (x, y) positions, or None if empty.

    Args:
        mask: Boolean crop containing the object (only it should be True).
        offset: (row, column) of the crop's top-left pixel in the image.
        tolerance: Douglas-Peucker tolerance in pixels; 0 keeps every vertex.
        connectivity: 1 or 2, the connectivity the labels were made with.
    """
    padded = np.pad(np.asarray(mask, dtype=np.float32), 1)
    if not padded.any():
        return None
    contours = find_contours(padded, 0.5, fully_connected="low" if connectivity == 1 else "high")
    if not contours:
        return None
    # (row, col) in the padded crop -> (x, y) with pixel edges on integers
    rings = [np.stack([c[:, 1] - 0.5 + offset[1], c[:, 0] - 0.5 + offset[0]], axis=1) for c in contours]
    ring = max(rings, key=lambda r: abs(ring_signed_area(r)))
    if not np.array_equal(ring[0], ring[-1]):
        ring = np.vstack([ring, ring[:1]])
    ring = _drop_repeats(ring)
    if tolerance > 0:
        simplified = approximate_polygon(ring, tolerance)
        if (
            len(simplified) >= 4
            and np.array_equal(simplified[0], simplified[-1])
            and ring_is_simple(simplified)
        ):
            ring = simplified
    if len(ring) < 4:
        return None
    if ring_signed_area(ring) < 0:
        ring = ring[::-1].copy()
    return ring


def _drop_repeats(ring: np.ndarray) -> np.ndarray:
    """Remove consecutive duplicate positions (keeps the closing position)."""
    keep = np.ones(len(ring), dtype=bool)
    keep[1:] = np.any(ring[1:] != ring[:-1], axis=1)
    return ring[keep]


def nucleus_feature(
    ring: np.ndarray,
    area_px: int | None = None,
    feature_id: str | None = None,
    extra: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """One QuPath detection Feature for a ring (see the module docstring for the fields).

    Args:
        ring: Closed (n, 2) ring of (x, y) positions.
        area_px: Pixel count, written as ``Area px^2`` (None: not written).
        feature_id: The feature's UUID (default: a new random one).
        extra: Further measurements, name -> number.
    """
    measurements: dict[str, float] = {} if area_px is None else {"Area px^2": int(area_px)}
    if extra:
        measurements.update({name: _number(value) for name, value in extra.items()})
    return {
        "type": "Feature",
        "id": feature_id or str(uuid.uuid4()),
        "geometry": {"type": "Polygon", "coordinates": [ring.tolist()]},
        "properties": {
            "objectType": "detection",
            "classification": dict(NUCLEUS_CLASS),
            "isLocked": False,
            "measurements": measurements,
        },
    }


def _number(value: float) -> float:
    """A JSON number: ints stay ints, floats are rounded to 6 significant digits, NaN becomes 0."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return 0.0 if not math.isfinite(value) else float(f"{value:.6g}")


def scale_ring(ring: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Map a ring from a resampled grid to the input image: x times ``scale[1]``, y times ``scale[0]``."""
    if scale == (1.0, 1.0) or scale == (1, 1):
        return ring
    return np.round(ring * np.array([scale[1], scale[0]]), 4)


def features_from_labels(
    labels: np.ndarray,
    offset: tuple[int, int] = (0, 0),
    tolerance: float = 0.25,
    connectivity: int = 1,
    only: Iterable[int] | None = None,
    max_rows: int | None = None,
    scale: tuple[float, float] = (1.0, 1.0),
    measurements: Mapping[int, Mapping[str, float]] | None = None,
    shift: tuple[float, float] = (0.0, 0.0),
) -> Iterator[dict[str, Any]]:
    """Yield one Feature per label of an (H, W) label image (or window of one), in label order.

    Args:
        labels: int labels, 0 = background.
        offset: (row, column) of ``labels[0, 0]`` in the whole image.
        tolerance: Douglas-Peucker tolerance in pixels.
        connectivity: The connectivity the labels were made with.
        only: Restrict to these label values.
        max_rows: Skip objects taller than this many rows (not nuclei; the streamed writer's rule).
        scale: (rows, columns) of output frame per label pixel (``scale_ring``).
        measurements: Per label value, the measurements to write instead of ``Area px^2``.
        shift: (x, y) added to every position after scaling (output-frame pixels).
    """
    wanted = None if only is None else set(int(v) for v in only)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None or (wanted is not None and index not in wanted):
            continue
        if max_rows is not None and box[0].stop - box[0].start > max_rows:
            continue
        mask = labels[box] == index
        ring = nucleus_ring(
            mask, (offset[0] + box[0].start, offset[1] + box[1].start), tolerance, connectivity
        )
        if ring is None:
            continue
        ring = scale_ring(ring, scale)
        if shift[0] or shift[1]:
            ring = np.round(ring + np.array([shift[0], shift[1]], dtype=np.float64), 4)
        if measurements is None:
            yield nucleus_feature(ring, int(mask.sum()))
        else:
            yield nucleus_feature(ring, extra=measurements[index])


class GeoJsonWriter:
    """Write a FeatureCollection one feature at a time, atomically (a context manager).

    Args:
        path: Destination.
        metadata: The ``"nucseg"`` foreign member (e.g. pixel size), or None for none.
    """

    def __init__(self, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None) -> None:
        self.path = path
        self.metadata = metadata
        self.count = 0

    def __enter__(self) -> GeoJsonWriter:
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        self._file = open(tmp, "w", encoding="utf-8")
        self._file.write('{"type": "FeatureCollection", ')
        if self.metadata is not None:
            self._file.write(
                f'"nucseg": {json.dumps(dict(self.metadata), allow_nan=False, ensure_ascii=False)}, '
            )
        self._file.write('"features": [')
        return self

    def add(self, feature: Mapping[str, Any]) -> None:
        """Append one Feature."""
        self._file.write(",\n" if self.count else "\n")
        self._file.write(json.dumps(feature, separators=(",", ":"), allow_nan=False, ensure_ascii=False))
        self.count += 1

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        try:
            if exc_type is None:
                self._file.write("\n]}\n")
        finally:
            self._file.close()
            self._atomic.__exit__(exc_type, exc, traceback)


def write_geojson(
    path: str | os.PathLike[str],
    features: Iterable[dict[str, Any]],
    metadata: Mapping[str, Any] | None = None,
) -> int:
    """Write a FeatureCollection atomically, one feature at a time; return the feature count."""
    with GeoJsonWriter(path, metadata) as writer:
        for feature in features:
            writer.add(feature)
    return writer.count


def feature_collection(features: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """An in-memory FeatureCollection (for small images and tests)."""
    return {"type": "FeatureCollection", "features": list(features)}


__all__ = [
    "NUCLEUS_CLASS",
    "GeoJsonWriter",
    "feature_collection",
    "features_from_labels",
    "nucleus_feature",
    "nucleus_ring",
    "ring_is_simple",
    "ring_signed_area",
    "scale_ring",
    "write_geojson",
]
