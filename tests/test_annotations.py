"""Aperio XML parsing and polygon rasterisation, on hand-made annotations with known pixel counts.

The ``REGIONS`` tests exercise the earlier centre-inside fill (``rule="centre"``); the organisers'
rule (the default) has its own hand-counted cases below and, when the MoNuSeg folder is present,
is checked against the organisers' 14 test label maps.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from helpers import aperio_xml

from nucseg.data.annotations import (
    ANNOTATION_RULES,
    AnnotationError,
    parse_aperio_xml,
    rasterize_polygons,
    relabel_consecutive,
    xml_to_instance_labels,
)

# Image of 10 rows x 12 columns. Vertex coordinates sit on half pixels so that no pixel centre lies
# on an edge and the filled pixels follow from "centre inside" alone.
SHAPE = (10, 12)
REGIONS = [
    # 1: rectangle, columns 2..4 (x 1.5..4.5), rows 1..2 (y 0.5..2.5): 3 x 2 = 6 pixels.
    [(1.5, 0.5), (4.5, 0.5), (4.5, 2.5), (1.5, 2.5)],
    # a stray 2-vertex region: skipped by the parser.
    [(8.0, 8.0), (9.0, 9.0)],
    # 2: right triangle x > 6.5, y > 0.5, x + y < 11.5 -> rows 1..4 hold 4, 3, 2, 1 pixels = 10.
    [(6.5, 0.5), (11.0, 0.5), (6.5, 5.0)],
    # tiny triangle covering no pixel centre: dropped by the rasteriser, ids stay consecutive.
    [(10.2, 8.2), (10.4, 8.2), (10.3, 8.4)],
    # 3: crosses the left and bottom borders: columns 0..1 and rows 7..9 remain = 6 pixels.
    [(-3.5, 6.5), (1.5, 6.5), (1.5, 12.5), (-3.5, 12.5)],
    # 4: columns 4..7, rows 6..7 (8 pixels), 4 of which the next region takes.
    [(3.5, 5.5), (7.5, 5.5), (7.5, 7.5), (3.5, 7.5)],
    # 5: columns 6..9, rows 6..8 = 12 pixels, drawn later so it wins the overlap.
    [(5.5, 5.5), (9.5, 5.5), (9.5, 8.5), (5.5, 8.5)],
]


@pytest.fixture
def xml_file(tmp_path):
    path = tmp_path / "case.xml"
    path.write_text(aperio_xml(REGIONS))
    return path


def test_parse_returns_xy_arrays_and_skips_short_regions(xml_file, caplog):
    with caplog.at_level(logging.WARNING, logger="nucseg.data.annotations"):
        polygons = parse_aperio_xml(xml_file)
    assert len(polygons) == 6
    assert all(p.dtype == np.float64 and p.shape[1] == 2 for p in polygons)
    np.testing.assert_array_equal(polygons[0], np.array(REGIONS[0]))
    assert "skipped 1 region" in caplog.text and "case.xml" in caplog.text


def test_rasterised_pixel_counts_and_ids(xml_file):
    labels = xml_to_instance_labels(xml_file, SHAPE, rule="centre")
    assert labels.shape == SHAPE and labels.dtype == np.int32
    counts = np.bincount(labels.ravel())
    assert counts[1:].tolist() == [6, 10, 6, 4, 12]
    assert labels.max() == 5  # tiny polygon dropped, ids consecutive


def test_x_is_column_and_y_is_row(xml_file):
    labels = xml_to_instance_labels(xml_file, SHAPE, rule="centre")
    assert (labels[1:3, 2:5] == 1).all()  # 2 rows x 3 columns
    assert labels[4, 1] == 0  # the transposed position is empty
    assert labels[1, 10] == 2 and labels[4, 7] == 2 and labels[4, 8] == 0


def test_border_clipping_and_later_polygon_wins(xml_file):
    labels = xml_to_instance_labels(xml_file, SHAPE, rule="centre")
    assert (labels[7:10, 0:2] == 3).all()
    assert (labels[6:8, 6:8] == 5).all()  # the overlap belongs to the later region
    assert (labels[6:8, 4:6] == 4).all()


def test_rasterize_drops_fully_covered_polygon_and_includes_integer_edges():
    square = np.array([(1.0, 1.0), (3.0, 1.0), (3.0, 2.0), (1.0, 2.0)])  # centres on edges count
    cover = np.array([(0.5, 0.5), (4.5, 0.5), (4.5, 2.5), (0.5, 2.5)])  # columns 1..4, rows 1..2
    labels = rasterize_polygons([square, cover], (5, 5), rule="centre")
    assert labels.max() == 1 and (labels == 1).sum() == 8  # the square lost every pixel: dropped
    single = rasterize_polygons([square], (5, 5), rule="centre")
    assert (single == 1).sum() == 6


@pytest.mark.parametrize("rule", ANNOTATION_RULES)
def test_rasterize_empty_and_bad_input(rule):
    assert rasterize_polygons([], (3, 4), rule=rule).shape == (3, 4)
    with pytest.raises(ValueError, match="polygon 1"):
        rasterize_polygons([np.zeros((4, 3))], (3, 4), rule=rule)
    with pytest.raises(ValueError, match="shape"):
        rasterize_polygons([], (0, 4), rule=rule)
    with pytest.raises(ValueError, match="unknown annotation rule 'matlab'"):
        rasterize_polygons([], (3, 4), rule="matlab")


def test_relabel_consecutive_keeps_order():
    labels = np.array([[0, 7, 7], [40000, 0, 3]], dtype=np.uint16)
    np.testing.assert_array_equal(relabel_consecutive(labels), [[0, 2, 2], [3, 0, 1]])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<Annotations><Region>", "not well-formed"),
        ("<Annotations><Annotation/></Annotations>", "no <Region>"),
        ('<Annotations><Regions><Region Id="4"/></Regions></Annotations>', "region 4 has no <Vertices>"),
        (
            '<Annotations><Region Id="2"><Vertices><Vertex X="a" Y="1"/></Vertices></Region></Annotations>',
            "region 2",
        ),
    ],
)
def test_malformed_files_name_the_file(tmp_path, text, message):
    path = tmp_path / "broken_annotation.xml"
    path.write_text(text)
    with pytest.raises(AnnotationError, match=message) as caught:
        parse_aperio_xml(path)
    assert "broken_annotation.xml" in str(caught.value)


def test_missing_file(tmp_path):
    with pytest.raises(AnnotationError, match="absent.xml"):
        parse_aperio_xml(tmp_path / "absent.xml")


def test_two_thousand_crowded_nuclei_keep_consecutive_ids():
    # speed is measured by benchmarks, not asserted here; this checks a MoNuSeg-sized crowd
    rng = np.random.default_rng(0)
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    circle = np.column_stack([np.cos(angles), np.sin(angles)])
    polygons = [rng.uniform(0, 1000, 2) + rng.uniform(5, 12) * circle for _ in range(2000)]
    labels = rasterize_polygons(polygons, (1000, 1000), rule="centre")
    assert labels.max() > 1500
    assert np.array_equal(np.unique(labels), np.arange(labels.max() + 1))
    organisers = rasterize_polygons(polygons, (1000, 1000))
    assert len(np.unique(organisers)) > 1500 and organisers.max() <= 2000
    # same outlines, the organisers' masks are the ring-free, area-true ones
    assert 0.85 < (organisers > 0).sum() / (labels > 0).sum() < 1.0


# -- the organisers' rule (MATLAB poly2mask, vertices as 1-based pixel centres, first region wins) --


def _square(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], dtype=np.float64)


def test_organisers_whole_pixel_square_covers_sixteen_pixels():
    # XML corners (1, 1)-(5, 5) are the centres of 0-based pixels 0 and 4: the fill is area-true,
    # 4 x 4 pixels, rows and columns 1..4 (whole-pixel edges snap 0.1 px right/down, so centres on
    # the top/left edge are outside and centres on the bottom/right edge inside).
    labels = rasterize_polygons([_square(1, 1, 5, 5)], (7, 7))
    expected = np.zeros((7, 7), dtype=np.int32)
    expected[1:5, 1:5] = 1
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.int32


def test_organisers_triangle():
    # (1, 1), (5, 1), (1, 5): 1-based centres (x, y) with x, y >= 2 and x + y <= 6 (the hypotenuse
    # counts): 3 + 2 + 1 pixels in 0-based rows 1, 2, 3 from column 1.
    labels = rasterize_polygons([np.array([(1.0, 1.0), (5.0, 1.0), (1.0, 5.0)])], (7, 7))
    expected = np.zeros((7, 7), dtype=np.int32)
    expected[1, 1:4] = expected[2, 1:3] = expected[3, 1] = 1
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize(
    "square",
    [_square(1.5, 1.5, 4.5, 3.5), _square(1.2, 1.2, 4.2, 3.7), _square(1.99, 1.6, 4.0, 3.0)],
    ids=["half", "fractional", "mixed"],
)
def test_organisers_fractional_vertices_fill_centres_inside(square):
    # 1-based centres x in {2, 3, 4}, y in {2, 3} lie inside: 0-based rows 1..2, columns 1..3
    labels = rasterize_polygons([square], (6, 7))
    assert np.argwhere(labels == 1).tolist() == [[r, c] for r in (1, 2) for c in (1, 2, 3)]


def test_organisers_first_region_wins_and_ids_are_positions():
    first = _square(1, 1, 4, 4)  # 0-based rows/columns 1..3
    second = _square(3, 3, 6, 6)  # 0-based rows/columns 3..5; (3, 3) already belongs to the first
    inside_first = _square(2, 2, 3, 3)  # one pixel, taken by the first: no pixel, id 3 is a gap
    fourth = _square(6, 0, 7, 1)  # row 0, column 6
    labels = rasterize_polygons([first, second, inside_first, fourth], (7, 8))
    assert labels[3, 3] == 1 and labels[3, 4] == 2 and labels[4, 3] == 2
    assert np.bincount(labels.ravel()).tolist() == [56 - 9 - 8 - 1, 9, 8, 0, 1]
    assert labels[0, 6] == 4


def test_organisers_clips_polygons_leaving_the_image():
    # 0-based pixels -2..2 and 2..7 before clipping; the second runs past the right and bottom edges
    labels = rasterize_polygons([_square(-2, -2, 3, 3), _square(2, 2, 9, 9)], (5, 6))
    expected = np.array(
        [
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 2, 2, 2],
            [0, 0, 2, 2, 2, 2],
            [0, 0, 2, 2, 2, 2],
        ]
    )
    np.testing.assert_array_equal(labels, expected)
    outside = rasterize_polygons([_square(10, 10, 20, 20), _square(-9, -9, -3, -3)], (5, 6))
    assert not outside.any()


def test_organisers_short_and_tiny_regions_leave_id_gaps(tmp_path):
    path = tmp_path / "gaps.xml"
    regions = [[(1, 1), (3, 1)], [(1, 1), (4, 1), (4, 3), (1, 3)], [(6.1, 6.1), (6.3, 6.1), (6.2, 6.3)]]
    path.write_text(aperio_xml(regions))
    labels = xml_to_instance_labels(path, (8, 8))
    assert np.unique(labels).tolist() == [0, 2]  # region 1 (two vertices) and 3 (no centre) leave gaps
    assert (labels == 2).sum() == 6
    assert xml_to_instance_labels(path, (8, 8), rule="centre").max() == 1


def _organiser_test_set() -> Path | None:
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "monuseg" / "test"
    return root if (root / "organiser_labels").is_dir() and (root / "annotations").is_dir() else None


@pytest.mark.skipif(_organiser_test_set() is None, reason="MoNuSeg test folder (../shared) not present")
def test_organisers_rule_reproduces_the_official_test_labels():
    from PIL import Image

    root = _organiser_test_set()
    pngs = sorted((root / "organiser_labels").glob("*.png"))
    assert len(pngs) == 14
    for png in pngs:
        expected = np.asarray(Image.open(png)).astype(np.int64)
        labels = xml_to_instance_labels(root / "annotations" / f"{png.stem}.xml", expected.shape)
        np.testing.assert_array_equal(labels, expected, err_msg=png.stem)
