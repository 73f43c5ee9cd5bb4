"""Aperio ImageScope XML annotations -> polygons -> instance label maps.

MoNuSeg ships one Aperio XML per image: ``<Annotations>/<Annotation>/<Regions>/<Region>`` with one
``<Region>`` per nucleus and its outline as ``<Vertices>/<Vertex X=... Y=...>``. ``X`` is the image
column and ``Y`` the row, both in pixels, possibly fractional.

Coordinate convention: the pixel at row ``r``, column ``c`` has its centre at ``(X=c, Y=r)``
(scikit-image's convention). A pixel belongs to a polygon when its centre lies inside it;
scikit-image also counts centres lying exactly on an axis-aligned edge as inside.
"""

from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from skimage.draw import polygon as draw_polygon

logger = logging.getLogger(__name__)

MIN_VERTICES = 3


class AnnotationError(ValueError):
    """An annotation file is missing, malformed or cannot be turned into labels."""


def parse_aperio_xml(path: str | os.PathLike[str]) -> list[np.ndarray]:
    """Read the nucleus outlines of an Aperio ImageScope XML file.

    Regions of every ``<Annotation>`` are returned in document order. Regions with fewer than
    three vertices enclose no area; they are skipped and counted in one logged warning, because
    real files contain such stray clicks and they should not abort a whole data set.

    Args:
        path: the XML file.

    Returns:
        One float64 array of shape (N, 2) per kept region, columns (x, y) = (column, row).

    Raises:
        AnnotationError: the file is missing, is not well-formed XML, has no ``<Region>``
            elements, or a region lacks ``<Vertices>`` or has a non-numeric coordinate.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as error:
        raise AnnotationError(f"{path}: not well-formed XML ({error})") from error
    except OSError as error:
        raise AnnotationError(f"{path}: cannot read annotation file ({error})") from error

    regions = list(root.iter("Region"))
    if not regions:
        raise AnnotationError(f"{path}: no <Region> elements (not an Aperio ImageScope annotation?)")

    polygons: list[np.ndarray] = []
    skipped = 0
    for index, region in enumerate(regions):
        region_id = region.get("Id", f"#{index}")
        vertices = region.find("Vertices")
        if vertices is None:
            raise AnnotationError(f"{path}: region {region_id} has no <Vertices> element")
        points = [_vertex_xy(vertex, path, region_id) for vertex in vertices.iter("Vertex")]
        if len(points) < MIN_VERTICES:
            skipped += 1
            continue
        polygons.append(np.asarray(points, dtype=np.float64))
    if skipped:
        logger.warning("%s: skipped %d region(s) with fewer than %d vertices", path, skipped, MIN_VERTICES)
    return polygons


def _vertex_xy(vertex: ElementTree.Element, path: Path, region_id: str) -> tuple[float, float]:
    """Return the (x, y) of one ``<Vertex>``; a missing or non-finite coordinate is an error."""
    try:
        x, y = float(vertex.attrib["X"]), float(vertex.attrib["Y"])
    except (KeyError, ValueError) as error:
        raise AnnotationError(
            f"{path}: region {region_id} has a vertex without numeric X and Y ({dict(vertex.attrib)})"
        ) from error
    if not (math.isfinite(x) and math.isfinite(y)):
        raise AnnotationError(f"{path}: region {region_id} has a non-finite vertex ({x}, {y})")
    return x, y


def rasterize_polygons(polygons: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Fill polygons into an instance label map.

    Rules, chosen so that every input gives a valid label map:

    - A pixel is filled when its centre lies inside the polygon (see the module docstring).
    - Polygons reaching past the image border are clipped to the image.
    - Overlaps: polygons are drawn in order and a pixel claimed by several belongs to the one
      drawn last (the later annotation wins, as it would on screen in ImageScope).
    - A polygon left with no pixel (too small to cover a pixel centre, entirely outside the
      image or entirely covered by later polygons) is dropped; the remaining ids are renumbered
      so that they stay consecutive and keep the polygon order.

    Args:
        polygons: (N, 2) arrays of (x, y) = (column, row) vertices, e.g. from ``parse_aperio_xml``.
        shape: (height, width) of the image.

    Returns:
        (H, W) int32 labels: 0 is background, ``k`` the k-th polygon that kept pixels (1-based).

    Raises:
        ValueError: ``shape`` is not two positive integers or a polygon is not an (N, 2) array.
    """
    if len(shape) != 2 or min(shape) <= 0:
        raise ValueError(f"shape must be (height, width) with positive sizes, got {tuple(shape)}")
    height, width = int(shape[0]), int(shape[1])
    labels = np.zeros((height, width), dtype=np.int32)
    for index, vertices in enumerate(polygons, start=1):
        vertices = np.asarray(vertices, dtype=np.float64)
        if vertices.ndim != 2 or vertices.shape[1] != 2:
            raise ValueError(f"polygon {index} must be an (N, 2) array of (x, y), got shape {vertices.shape}")
        if len(vertices) < MIN_VERTICES:
            continue
        rows, cols = draw_polygon(vertices[:, 1], vertices[:, 0], shape=(height, width))
        labels[rows, cols] = index
    return relabel_consecutive(labels)


def relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    """Renumber the positive ids of a label map to 1..K keeping their order; 0 stays 0.

    Args:
        labels: (H, W) non-negative integer labels.

    Returns:
        (H, W) int32 labels with consecutive ids.

    Raises:
        ValueError: the labels are negative or not integers.
    """
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if labels.size == 0:
        return labels.astype(np.int32)
    if labels.min() < 0:
        raise ValueError("labels must be non-negative")
    top = int(labels.max())
    if top < 2**24:
        # A lookup table over all possible ids: one bincount and one gather, no sort.
        counts = np.bincount(labels.ravel().astype(np.intp, copy=False), minlength=top + 1)
        present = counts > 0
        present[0] = False
        lookup = np.cumsum(present).astype(np.int32)
        lookup[0] = 0
        return lookup[labels]
    ids, inverse = np.unique(labels, return_inverse=True)
    offset = 0 if ids[0] == 0 else 1
    return (inverse.reshape(labels.shape) + offset).astype(np.int32)


def xml_to_instance_labels(path: str | os.PathLike[str], shape: tuple[int, int]) -> np.ndarray:
    """Read an Aperio XML file and rasterise it to (H, W) int32 instance labels.

    Args:
        path: the XML file.
        shape: (height, width) of the image it annotates.

    Returns:
        Instance labels following the rules of ``rasterize_polygons``.

    Raises:
        AnnotationError: the file cannot be parsed (see ``parse_aperio_xml``).
    """
    return rasterize_polygons(parse_aperio_xml(path), shape)
