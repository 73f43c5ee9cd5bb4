"""GeoJSON export: QuPath's schema, valid polygons, areas that match the nuclei, overlays."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage
from skimage.draw import ellipse
from skimage.draw import polygon as raster_polygon

from nucseg.export import boundary, features_from_labels, overlay_contours, write_geojson
from nucseg.export.geojson import ring_is_simple


def labelled_nuclei() -> np.ndarray:
    """Ellipses, touching pairs, a one-pixel nucleus, a concave C, a ring with a hole, border nuclei."""
    rng = np.random.default_rng(7)
    labels = np.zeros((240, 260), dtype=np.int32)
    next_label = 1
    for _ in range(40):
        rr, cc = ellipse(
            rng.uniform(0, 240),
            rng.uniform(0, 260),
            rng.uniform(2, 12),
            rng.uniform(2, 12),
            shape=labels.shape,
            rotation=rng.uniform(0, math.pi),
        )
        free = labels[rr, cc] == 0
        labels[rr[free], cc[free]] = next_label
        next_label += 1
    labels[5, 250] = next_label  # one pixel
    next_label += 1
    c_shape = np.zeros((20, 20), dtype=bool)
    c_shape[2:18, 2:6] = c_shape[2:6, 2:18] = c_shape[14:18, 2:18] = True
    labels[200:220, 20:40][c_shape] = next_label
    next_label += 1
    ring = np.zeros((21, 21), dtype=bool)
    yy, xx = np.ogrid[-10:11, -10:11]
    ring[(yy**2 + xx**2 <= 100) & (yy**2 + xx**2 >= 16)] = True
    labels[100:121, 200:221][ring & (labels[100:121, 200:221] == 0)] = next_label
    next_label += 1
    labels[0:6, 0:9] = next_label  # in the corner
    return _relabel(labels)


def _relabel(labels: np.ndarray) -> np.ndarray:
    """One label per 4-connected piece, numbered 1..N (overlapping ellipses leave pieces and gaps)."""
    out = np.zeros_like(labels)
    count = 0
    for value in np.unique(labels[labels > 0]):
        pieces, found = ndimage.label(labels == value)
        out[pieces > 0] = pieces[pieces > 0] + count
        count += found
    return out


def segments_intersect(p1, p2, q1, q2) -> bool:  # noqa: ANN001 - plain tuples
    """Independent check: do closed segments p1p2 and q1q2 share a point?"""

    def cross(o, a, b) -> float:  # noqa: ANN001
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def within(a, b, c) -> bool:  # noqa: ANN001 - c on segment ab given collinear
        return min(a[0], b[0]) <= c[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= c[1] <= max(a[1], b[1])

    d1, d2 = cross(q1, q2, p1), cross(q1, q2, p2)
    d3, d4 = cross(p1, p2, q1), cross(p1, p2, q2)
    if ((d1 > 0) != (d2 > 0)) and d1 != 0 and d2 != 0 and ((d3 > 0) != (d4 > 0)) and d3 != 0 and d4 != 0:
        return True
    return (
        (d1 == 0 and within(q1, q2, p1))
        or (d2 == 0 and within(q1, q2, p2))
        or (d3 == 0 and within(p1, p2, q1))
        or (d4 == 0 and within(p1, p2, q2))
    )


def assert_valid_ring(ring: list) -> None:
    """Closed, >= 4 positions, finite numbers, counter-clockwise, no self-intersection (brute force)."""
    assert len(ring) >= 4
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for position in ring for v in position)
    assert all(len(position) == 2 for position in ring)
    assert ring[0] == ring[-1], "ring must be closed"
    points = [tuple(p) for p in ring[:-1]]
    assert len(set(points)) == len(points), "no repeated vertex"
    area2 = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring[:-1], ring[1:], strict=True))
    assert area2 > 0, "exterior ring must be counter-clockwise (RFC 7946)"
    edges = list(zip(ring[:-1], ring[1:], strict=True))
    n = len(edges)
    for i in range(n):
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):
                continue  # neighbours share a vertex
            assert not segments_intersect(*edges[i], *edges[j]), f"edges {i} and {j} intersect"


def assert_qupath_feature(feature: dict) -> None:
    assert feature["type"] == "Feature"
    uuid.UUID(feature["id"])  # QuPath 0.4+ reads the id as a UUID
    assert feature["geometry"]["type"] == "Polygon"
    rings = feature["geometry"]["coordinates"]
    assert isinstance(rings, list) and len(rings) == 1
    assert_valid_ring(rings[0])
    properties = feature["properties"]
    assert properties["objectType"] == "detection"
    assert properties["classification"]["name"] == "Nucleus"
    colour = properties["classification"]["color"]
    assert len(colour) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in colour)
    assert properties["isLocked"] is False
    assert all(
        isinstance(k, str) and isinstance(v, (int, float)) for k, v in properties["measurements"].items()
    )


def test_features_follow_qupath_schema_and_are_valid_polygons(tmp_path: Path) -> None:
    labels = labelled_nuclei()
    count = write_geojson(tmp_path / "n.geojson", features_from_labels(labels))
    document = json.loads((tmp_path / "n.geojson").read_text())
    assert document["type"] == "FeatureCollection"
    assert count == len(document["features"]) == labels.max()
    for feature in document["features"]:
        assert_qupath_feature(feature)


def test_polygon_areas_match_pixel_counts_and_cover_the_nuclei() -> None:
    labels = labelled_nuclei()
    for index, feature in enumerate(features_from_labels(labels), start=1):
        ring = np.asarray(feature["geometry"]["coordinates"][0])
        x, y = ring[:, 0], ring[:, 1]
        area = 0.5 * abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))
        pixels = np.count_nonzero(labels == index)
        assert feature["properties"]["measurements"]["Area px^2"] == pixels
        filled = np.count_nonzero(ndimage.binary_fill_holes(labels == index))  # holes are not rings
        assert abs(area - filled) <= max(2.0, 0.06 * filled), (index, area, filled)
        # rasterise the polygon at pixel centres: it should cover the nucleus
        rr, cc = raster_polygon(y - 0.5, x - 0.5, shape=labels.shape)
        drawn = np.zeros(labels.shape, dtype=bool)
        drawn[rr, cc] = True
        nucleus = labels == index
        if pixels >= 20:
            assert np.count_nonzero(drawn & nucleus) / pixels > 0.85


def test_offset_moves_coordinates_into_the_whole_image_frame() -> None:
    labels = np.zeros((10, 10), dtype=np.int32)
    labels[2:5, 3:7] = 1
    plain = next(features_from_labels(labels))["geometry"]["coordinates"][0]
    moved = next(features_from_labels(labels, offset=(100, 200)))["geometry"]["coordinates"][0]
    assert [[x + 200, y + 100] for x, y in plain] == moved
    xs, ys = [p[0] for p in plain], [p[1] for p in plain]
    assert min(xs) >= 3 and max(xs) <= 7 and min(ys) >= 2 and max(ys) <= 5  # x = column, y = row


def test_ring_is_simple_rejects_bow_ties_and_open_rings() -> None:
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]], dtype=float)
    bow_tie = np.array([[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]], dtype=float)
    assert ring_is_simple(square)
    assert not ring_is_simple(bow_tie)
    assert not ring_is_simple(square[:-1])


def test_geojson_write_is_atomic_on_error(tmp_path: Path) -> None:
    def failing():
        yield from features_from_labels(labelled_nuclei())
        raise RuntimeError("disk full")

    target = tmp_path / "n.geojson"
    with pytest.raises(RuntimeError):
        write_geojson(target, failing())
    assert not target.exists() and not list(tmp_path.iterdir())


def test_overlay_draws_contours_between_touching_nuclei() -> None:
    labels = np.zeros((8, 12), dtype=np.int32)
    labels[2:6, 2:6] = 1
    labels[2:6, 6:10] = 2
    edge = boundary(labels)
    assert edge[2:6, 5].all() and edge[2:6, 6].all()  # the shared border is drawn on both sides
    assert not edge[3:5, 3:5].any()  # interiors are not
    image = np.full((8, 12, 3), 200, dtype=np.uint8)
    drawn = overlay_contours(image, labels)
    assert (drawn[edge] == (0, 255, 0)).all() and (drawn[~edge] == 200).all()
    assert (image == 200).all(), "the input is not modified"


def test_predicted_geojson_is_a_valid_qupath_feature_collection(tmp_path: Path) -> None:
    """What predict writes: a FeatureCollection of valid detections with measurements in µm."""
    shapely_geometry = pytest.importorskip("shapely.geometry")
    from nucseg.predict import ImageGrid, OutputPaths, write_image_outputs

    labels = labelled_nuclei()
    image = np.full(labels.shape + (3,), (232, 196, 222), np.uint8)
    image[labels > 0] = (92, 58, 140)
    paths = OutputPaths.for_image(tmp_path, "n")
    count = write_image_outputs(
        image,
        (labels > 0).astype(np.float32),
        paths,
        grid=ImageGrid.identity(*labels.shape, mpp=0.5),
        model_mpp=0.25,
    )
    document = json.loads(paths.geojson.read_text(encoding="utf-8"))
    assert document["type"] == "FeatureCollection" and len(document["features"]) == count > 30
    labels = tifffile.imread(paths.labels)  # touching nuclei were merged by connected components
    assert document["nucseg"] == {
        "pixel_size_um": 0.5,
        "model_pixel_size_um": 0.25,
        "segmented_pixel_size_um": 0.5,
        "units": "µm",
    }
    for feature in document["features"]:
        assert_qupath_feature(feature)
        ring = feature["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1] and len(ring) >= 4
        x, y = np.asarray(ring).T
        assert np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]) > 0  # counter-clockwise (RFC 7946)
        polygon = shapely_geometry.shape(feature["geometry"])
        assert polygon.is_valid, feature["id"]
        measurements = feature["properties"]["measurements"]
        assert set(measurements) == {
            "Label", "Centroid X µm", "Centroid Y µm", "Area µm^2", "Perimeter µm",
            "Eccentricity", "Solidity", "Hematoxylin OD mean", "Eosin OD mean",
        }  # fmt: skip
        label = measurements["Label"]
        assert measurements["Area µm^2"] == pytest.approx(np.count_nonzero(labels == label) * 0.25, rel=1e-5)
        assert polygon.area * 0.25 == pytest.approx(measurements["Area µm^2"], rel=0.35, abs=1.0)
        centroid = polygon.centroid
        assert (centroid.x * 0.5, centroid.y * 0.5) == pytest.approx(
            (measurements["Centroid X µm"], measurements["Centroid Y µm"]), abs=1.5
        )
        assert measurements["Hematoxylin OD mean"] > measurements["Eosin OD mean"] > 0
    rows = paths.measurements.read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith(
        "Label,Centroid X µm,Centroid Y µm,Area µm^2,Perimeter µm,Eccentricity,Solidity"
    )
    assert rows[0].endswith("Pixel size µm") and len(rows) == count + 1


def test_measurements_are_in_pixels_when_the_pixel_size_is_unknown() -> None:
    from nucseg.export.measurements import measure_nuclei

    labels = np.zeros((20, 30), np.int32)
    labels[2:6, 3:13] = 1  # 4 x 10 rectangle
    image = np.full((20, 30, 3), 255, np.uint8)
    table = measure_nuclei(labels, image, None, offset=(100, 0), scale=(2.0, 2.0))
    assert table["Area px^2"][0] == 40 and table["Eccentricity"][0] > 0.9
    assert table["Centroid X px"][0] == pytest.approx(8.0 * 2) and table["Centroid Y px"][0] == pytest.approx(
        104 * 2
    )
    assert table["Hematoxylin OD mean"][0] == pytest.approx(0.0, abs=1e-6)  # white: no stain
    microns = measure_nuclei(labels, image, 0.25)
    assert microns["Area µm^2"][0] == pytest.approx(40 * 0.0625)
    assert microns["Perimeter µm"][0] == pytest.approx(table["Perimeter px"][0] * 0.25)
