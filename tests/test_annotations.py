"""Aperio XML parsing and polygon rasterisation, on hand-made annotations with known pixel counts."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from nucseg.data.annotations import (
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


def _aperio_xml(regions: list[list[tuple[float, float]]]) -> str:
    """Build an XML string shaped like a MoNuSeg annotation file."""
    body = []
    for number, vertices in enumerate(regions, start=1):
        points = "".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in vertices)
        body.append(f'<Region Id="{number}" Type="0"><Attributes/><Vertices>{points}</Vertices></Region>')
    return (
        '<Annotations MicronsPerPixel="0.252700"><Annotation Id="1"><Attributes/><Regions>'
        '<RegionAttributeHeaders><AttributeHeader Id="9999" Name="Region"/></RegionAttributeHeaders>'
        + "".join(body)
        + "</Regions><Plots/></Annotation></Annotations>"
    )


@pytest.fixture
def xml_file(tmp_path):
    path = tmp_path / "case.xml"
    path.write_text(_aperio_xml(REGIONS))
    return path


def test_parse_returns_xy_arrays_and_skips_short_regions(xml_file, caplog):
    with caplog.at_level(logging.WARNING, logger="nucseg.data.annotations"):
        polygons = parse_aperio_xml(xml_file)
    assert len(polygons) == 6
    assert all(p.dtype == np.float64 and p.shape[1] == 2 for p in polygons)
    np.testing.assert_array_equal(polygons[0], np.array(REGIONS[0]))
    assert "skipped 1 region" in caplog.text and "case.xml" in caplog.text


def test_rasterised_pixel_counts_and_ids(xml_file):
    labels = xml_to_instance_labels(xml_file, SHAPE)
    assert labels.shape == SHAPE and labels.dtype == np.int32
    counts = np.bincount(labels.ravel())
    assert counts[1:].tolist() == [6, 10, 6, 4, 12]
    assert labels.max() == 5  # tiny polygon dropped, ids consecutive


def test_x_is_column_and_y_is_row(xml_file):
    labels = xml_to_instance_labels(xml_file, SHAPE)
    assert (labels[1:3, 2:5] == 1).all()  # 2 rows x 3 columns
    assert labels[4, 1] == 0  # the transposed position is empty
    assert labels[1, 10] == 2 and labels[4, 7] == 2 and labels[4, 8] == 0


def test_border_clipping_and_later_polygon_wins(xml_file):
    labels = xml_to_instance_labels(xml_file, SHAPE)
    assert (labels[7:10, 0:2] == 3).all()
    assert (labels[6:8, 6:8] == 5).all()  # the overlap belongs to the later region
    assert (labels[6:8, 4:6] == 4).all()


def test_rasterize_drops_fully_covered_polygon_and_includes_integer_edges():
    square = np.array([(1.0, 1.0), (3.0, 1.0), (3.0, 2.0), (1.0, 2.0)])  # centres on edges count
    cover = np.array([(0.5, 0.5), (4.5, 0.5), (4.5, 2.5), (0.5, 2.5)])  # columns 1..4, rows 1..2
    labels = rasterize_polygons([square, cover], (5, 5))
    assert labels.max() == 1 and (labels == 1).sum() == 8  # the square lost every pixel: dropped
    single = rasterize_polygons([square], (5, 5))
    assert (single == 1).sum() == 6


def test_rasterize_empty_and_bad_input():
    assert rasterize_polygons([], (3, 4)).shape == (3, 4)
    with pytest.raises(ValueError, match="polygon 1"):
        rasterize_polygons([np.zeros((4, 3))], (3, 4))
    with pytest.raises(ValueError, match="shape"):
        rasterize_polygons([], (0, 4))


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
    labels = rasterize_polygons(polygons, (1000, 1000))
    assert labels.max() > 1500
    assert np.array_equal(np.unique(labels), np.arange(labels.max() + 1))
