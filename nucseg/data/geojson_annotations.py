"""QuPath GeoJSON exports -> instance label maps.

QuPath's *Export objects as GeoJSON* writes a ``FeatureCollection`` (or, in older versions and
with some scripts, a bare list of ``Feature`` objects). Every feature with a ``Polygon`` or
``MultiPolygon`` geometry becomes one nucleus: its holes are left out, and the parts of a
``MultiPolygon`` share one id. Annotations and detections (``properties.objectType``) are both
read unless ``object_types`` says otherwise; ``classes`` keeps only features whose
``properties.classification.name`` is listed. Other geometries (points, lines) enclose no area:
they are skipped and counted in one logged warning. QuPath cell objects are read by their
``nucleusGeometry`` (the nucleus), not by their cell outline.

Pixel convention. QuPath's coordinates are in pixels of the full-resolution image, with (0, 0)
the top-left *corner* of the top-left pixel, so the pixel at row ``r``, column ``c`` has its
centre at ``(x, y) = (c + 0.5, r + 0.5)``. A pixel belongs to a polygon when its centre is inside
it (MATLAB ``poly2mask``'s rule): rings are shifted by -0.5 and filled with
``skimage.draw.polygon``, which tests pixel centres. A square from (0, 0) to (2, 2) therefore
covers exactly the four pixels of rows and columns 0 and 1.

Overlaps follow ``nucseg.data.annotations.rasterize_polygons``: features are drawn in file
order, the later one wins, features left without a pixel are dropped and ids are renumbered
1..K in file order.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from skimage.draw import polygon as draw_polygon

from nucseg.data.annotations import AnnotationError, relabel_consecutive

logger = logging.getLogger(__name__)

AREA_GEOMETRIES = ("Polygon", "MultiPolygon")
#: QuPath's corner-based coordinates minus this are scikit-image's centre-based ones.
PIXEL_CENTRE_OFFSET = 0.5


@dataclass(frozen=True)
class NucleusShape:
    """One annotated object: one or more polygons with holes, in QuPath pixel coordinates.

    Attributes:
        polygons: per part, the rings as (N, 2) float arrays of (x, y); ring 0 is the outline,
            the others are holes.
        object_type: QuPath's ``objectType`` (``annotation``, ``detection``, ``cell``...) or ``None``.
        classification: the class name, or ``None``.
    """

    polygons: tuple[tuple[np.ndarray, ...], ...]
    object_type: str | None = None
    classification: str | None = None


def read_geojson_shapes(
    path: str | os.PathLike[str],
    object_types: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
) -> list[NucleusShape]:
    """Read the area objects of a QuPath GeoJSON export.

    Args:
        path: the ``.geojson`` / ``.json`` file.
        object_types: keep only these ``properties.objectType`` values (``None``: all).
        classes: keep only these classification names (``None``: all, unclassified included).

    Returns:
        One :class:`NucleusShape` per kept feature, in file order.

    Raises:
        AnnotationError: the file is missing, is not JSON, is not GeoJSON features, or has a
            malformed coordinate list.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AnnotationError(f"{path}: not readable JSON ({error})") from error
    shapes: list[NucleusShape] = []
    skipped: dict[str, int] = {}
    for index, feature in enumerate(_features(document, path)):
        properties = feature.get("properties") or {}
        object_type = properties.get("objectType")
        classification = _class_name(properties.get("classification"))
        if object_types is not None and object_type not in object_types:
            continue
        if classes is not None and classification not in classes:
            continue
        # QuPath cells carry their nucleus as ``nucleusGeometry`` beside the cell outline.
        geometry = feature.get("nucleusGeometry") or properties.get("nucleusGeometry") or feature.get("geometry") or {}
        kind = geometry.get("type")
        if kind not in AREA_GEOMETRIES:
            skipped[str(kind)] = skipped.get(str(kind), 0) + 1
            continue
        where = f"{path}: feature {index} ({kind})"
        parts = [geometry.get("coordinates")] if kind == "Polygon" else geometry.get("coordinates")
        if not isinstance(parts, list):
            raise AnnotationError(f"{where}: 'coordinates' is not a list")
        polygons = tuple(tuple(_ring(ring, where) for ring in _rings(part, where)) for part in parts)
        shapes.append(NucleusShape(polygons, object_type, classification))
    if skipped:
        summary = ", ".join(f"{count} {kind}" for kind, count in sorted(skipped.items()))
        logger.warning("%s: skipped features without area (%s)", path, summary)
    return shapes


def _features(document: Any, path: Path) -> Iterator[dict[str, Any]]:
    """Features of a FeatureCollection, a list of features, one Feature or one bare geometry."""
    if isinstance(document, list):
        items: Iterable[Any] = document
    elif isinstance(document, dict) and document.get("type") == "FeatureCollection":
        items = document.get("features") or []
    elif isinstance(document, dict) and document.get("type") == "Feature":
        items = [document]
    elif isinstance(document, dict) and document.get("type") in (*AREA_GEOMETRIES, "GeometryCollection"):
        items = [{"type": "Feature", "geometry": document, "properties": {}}]
    else:
        raise AnnotationError(f"{path}: not GeoJSON features (expected a FeatureCollection or a list of Features)")
    for item in items:
        if not isinstance(item, dict) or item.get("type") != "Feature":
            raise AnnotationError(f"{path}: an entry is not a GeoJSON Feature ({str(item)[:60]})")
        geometry = item.get("geometry") or {}
        if geometry.get("type") == "GeometryCollection":
            for member in geometry.get("geometries") or []:
                yield {**item, "geometry": member}
        else:
            yield item


def _class_name(classification: Any) -> str | None:
    """QuPath writes ``{"name": ..., "color": ...}``; some tools write the name alone."""
    if isinstance(classification, dict):
        return classification.get("name")
    return classification if isinstance(classification, str) else None


def _rings(part: Any, where: str) -> list[Any]:
    if not isinstance(part, list) or not part:
        raise AnnotationError(f"{where}: a polygon has no rings")
    return part


def _ring(ring: Any, where: str) -> np.ndarray:
    try:
        vertices = np.asarray(ring, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise AnnotationError(f"{where}: a ring has non-numeric coordinates") from error
    if vertices.ndim != 2 or vertices.shape[1] < 2:
        raise AnnotationError(f"{where}: a ring is not a list of [x, y] positions (shape {vertices.shape})")
    vertices = vertices[:, :2]
    if not np.isfinite(vertices).all():
        raise AnnotationError(f"{where}: a ring has a non-finite coordinate")
    return vertices


def rasterize_shapes(shapes: Sequence[NucleusShape], shape: tuple[int, int]) -> np.ndarray:
    """Fill objects into an instance label map (rules in the module docstring).

    Args:
        shapes: objects in QuPath pixel coordinates, e.g. from :func:`read_geojson_shapes`.
        shape: (height, width) of the image.

    Returns:
        (H, W) int32 labels: 0 background, ids 1..K in object order.

    Raises:
        ValueError: ``shape`` is not two positive integers.
    """
    if len(shape) != 2 or min(shape) <= 0:
        raise ValueError(f"shape must be (height, width) with positive sizes, got {tuple(shape)}")
    height, width = int(shape[0]), int(shape[1])
    labels = np.zeros((height, width), dtype=np.int32)
    for index, nucleus in enumerate(shapes, start=1):
        box = _bounding_box(nucleus, height, width)
        if box is None:
            continue
        top, left, bottom, right = box
        inside = np.zeros((bottom - top, right - left), dtype=bool)
        for rings in nucleus.polygons:
            part = _fill(rings[0], top, left, inside.shape)
            for hole in rings[1:]:
                part &= ~_fill(hole, top, left, inside.shape)
            inside |= part
        labels[top:bottom, left:right][inside] = index
    return relabel_consecutive(labels)


def _bounding_box(nucleus: NucleusShape, height: int, width: int) -> tuple[int, int, int, int] | None:
    """The pixel rows/columns whose centres may be inside the object, clipped to the image."""
    points = np.concatenate([rings[0] for rings in nucleus.polygons if len(rings[0])])
    x_low, y_low = points.min(axis=0) - PIXEL_CENTRE_OFFSET
    x_high, y_high = points.max(axis=0) - PIXEL_CENTRE_OFFSET
    top, left = max(0, math.floor(y_low)), max(0, math.floor(x_low))
    bottom, right = min(height, math.ceil(y_high) + 1), min(width, math.ceil(x_high) + 1)
    if top >= bottom or left >= right:
        return None
    return top, left, bottom, right


def _fill(ring: np.ndarray, top: int, left: int, size: tuple[int, int]) -> np.ndarray:
    """Pixels of the (top, left)-offset window whose centres are inside ``ring``."""
    filled = np.zeros(size, dtype=bool)
    if len(ring) < 3:
        return filled
    rows = ring[:, 1] - PIXEL_CENTRE_OFFSET - top
    cols = ring[:, 0] - PIXEL_CENTRE_OFFSET - left
    rr, cc = draw_polygon(rows, cols, shape=size)
    filled[rr, cc] = True
    return filled


def geojson_to_instance_labels(
    path: str | os.PathLike[str],
    shape: tuple[int, int],
    object_types: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
) -> np.ndarray:
    """Read a QuPath GeoJSON export and rasterise it to (H, W) int32 instance labels.

    Args:
        path: the GeoJSON file.
        shape: (height, width) of the image it annotates.
        object_types: keep only these QuPath object types (``None``: all).
        classes: keep only these classification names (``None``: all).

    Raises:
        AnnotationError: the file cannot be parsed (see :func:`read_geojson_shapes`).
    """
    return rasterize_shapes(read_geojson_shapes(path, object_types, classes), shape)


def labels_to_geojson_features(labels: np.ndarray, object_type: str = "annotation") -> list[dict[str, Any]]:
    """Outline each instance as a QuPath GeoJSON Polygon feature (the inverse of the reader).

    Contours are traced at level 0.5 between pixel centres (``skimage.measure.find_contours``),
    so reading them back with the centre-inside rule gives the same pixels for simply connected
    instances. Used to write annotations for tests and examples.

    Args:
        labels: (H, W) instance labels, 0 background.
        object_type: QuPath object type written into ``properties``.

    Returns:
        One Feature per instance with at least one traced outline, in id order.
    """
    from skimage.measure import find_contours

    features = []
    for instance in np.unique(labels[labels > 0]):
        padded = np.pad(labels == instance, 1).astype(np.float32)
        contours = find_contours(padded, 0.5)
        if not contours:
            continue
        # (row, col) in the padded frame -> QuPath (x, y): subtract the pad, add half a pixel.
        rings = [[[float(c - 1 + PIXEL_CENTRE_OFFSET), float(r - 1 + PIXEL_CENTRE_OFFSET)] for r, c in contour]
                 for contour in contours]
        outline = max(rings, key=len)
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [outline]},
            "properties": {"objectType": object_type, "id": int(instance)},
        })
    return features
