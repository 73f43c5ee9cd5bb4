"""Own annotated images: QuPath GeoJSON rasterisation, the folder layout, splits, problems, training."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hydra.utils import instantiate
from PIL import Image

from nucseg.data.annotations import AnnotationError, relabel_consecutive
from nucseg.data.folder import FolderDataModule, FolderSource, FolderSourceError
from nucseg.data.geojson_annotations import (
    geojson_to_instance_labels,
    labels_to_geojson_features,
    read_geojson_shapes,
)
from nucseg.data.synthetic import make_synthetic_set
from nucseg.pipeline import train


def _feature(geometry: dict, object_type: str = "annotation", name: str | None = None) -> dict:
    properties: dict = {"objectType": object_type}
    if name is not None:
        properties["classification"] = {"name": name, "color": [255, 0, 0]}
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def _square(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _write(path: Path, features: list[dict]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


# -- GeoJSON ---------------------------------------------------------------------------------
def test_qupath_corner_convention_fills_pixels_whose_centres_are_inside(tmp_path):
    # (0, 0)-(2, 2) in QuPath pixels is exactly the 2 x 2 block of rows/columns 0 and 1.
    path = _write(tmp_path / "a.geojson", [_feature({"type": "Polygon", "coordinates": [_square(0, 0, 2, 2)]})])
    labels = geojson_to_instance_labels(path, (4, 5))
    expected = np.zeros((4, 5), np.int32)
    expected[:2, :2] = 1
    np.testing.assert_array_equal(labels, expected)


def test_holes_multipolygons_overlaps_and_skipped_points(tmp_path, caplog):
    features = [
        # 1: a 6 x 6 block at rows/cols 1..6 with a 2 x 2 hole at rows/cols 3..4: 32 pixels.
        _feature({"type": "Polygon", "coordinates": [_square(1, 1, 7, 7), _square(3, 3, 5, 5)]}),
        # a point: no area, skipped with a warning.
        _feature({"type": "Point", "coordinates": [3, 3]}),
        # 2: two parts, one id: 2 pixels at row 0 cols 8..9 and 1 pixel at row 9 col 0.
        _feature({"type": "MultiPolygon", "coordinates": [[_square(8, 0, 10, 1)], [_square(0, 9, 1, 10)]]},
                 object_type="detection"),
        # 3: drawn later over the right column of 1 (col 6, rows 1..6): wins those 6 pixels.
        _feature({"type": "Polygon", "coordinates": [_square(6, 1, 7, 7)]}, name="Tumor"),
    ]
    path = _write(tmp_path / "b.geojson", features)
    with caplog.at_level(logging.WARNING):
        labels = geojson_to_instance_labels(path, (10, 10))
    assert "1 Point" in caplog.text
    assert [(labels == k).sum() for k in (1, 2, 3)] == [32 - 4 - 2, 3, 6]  # hole rows 3..4 leave 2 of col 6
    assert labels[3, 3] == 0 and labels[0, 9] == 2 and labels[9, 0] == 2 and labels[1, 6] == 3

    cell = _feature({"type": "Polygon", "coordinates": [_square(0, 0, 10, 10)]}, object_type="cell")
    cell["nucleusGeometry"] = {"type": "Polygon", "coordinates": [_square(4, 4, 6, 6)]}
    cell_labels = geojson_to_instance_labels(_write(tmp_path / "cell.geojson", [cell]), (10, 10))
    assert (cell_labels == 1).sum() == 4 and cell_labels[4:6, 4:6].all()  # the nucleus, not the cell

    only_detections = geojson_to_instance_labels(path, (10, 10), object_types=["detection"])
    assert only_detections.max() == 1 and (only_detections == 1).sum() == 3
    only_tumor = geojson_to_instance_labels(path, (10, 10), classes=["Tumor"])
    assert (only_tumor == 1).sum() == 6 and only_tumor.max() == 1


def test_a_list_of_features_is_read_and_bad_files_name_the_problem(tmp_path):
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([_feature({"type": "Polygon", "coordinates": [_square(0, 0, 1, 1)]})]))
    assert len(read_geojson_shapes(listed)) == 1
    broken = tmp_path / "broken.geojson"
    broken.write_text("{not json")
    with pytest.raises(AnnotationError, match="broken.geojson: not readable JSON"):
        read_geojson_shapes(broken)
    other = tmp_path / "other.geojson"
    other.write_text(json.dumps({"type": "Topology"}))
    with pytest.raises(AnnotationError, match="not GeoJSON features"):
        read_geojson_shapes(other)
    bad = _write(tmp_path / "bad.geojson", [_feature({"type": "Polygon", "coordinates": [[["a", "b"]]]})])
    with pytest.raises(AnnotationError, match="feature 0 .*non-numeric"):
        read_geojson_shapes(bad)


def test_contours_written_as_geojson_read_back_to_the_same_instances(tmp_path):
    sample = make_synthetic_set(1, seed=3, size=96)[0]
    path = _write(tmp_path / "s.geojson", labels_to_geojson_features(sample.instance_labels))
    labels = geojson_to_instance_labels(path, sample.instance_labels.shape)
    np.testing.assert_array_equal(labels, relabel_consecutive(sample.instance_labels))


# -- the folder layout -----------------------------------------------------------------------
def make_geojson_folder(root: Path, count: int = 5, size: int = 96, suffix: str = ".png") -> Path:
    """``count`` synthetic images as PNG with their instances as QuPath GeoJSON annotations."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for sample in make_synthetic_set(count, seed=7, size=size, prefix="case"):
        Image.fromarray(sample.image).save(root / "images" / f"{sample.name}{suffix}")
        _write(root / "annotations" / f"{sample.name}.geojson", labels_to_geojson_features(sample.instance_labels))
    return root


def test_geojson_folder_loads_by_fraction_split(tmp_path):
    root = make_geojson_folder(tmp_path / "data", count=7)
    source = FolderSource(root, test_fraction=0.3, validation_fraction=0.15, seed=1)
    assert source.annotation_kind == "annotations"
    sizes = {split: len(names) for split, names in source.splits.items()}
    assert sizes == {"test": 2, "validation": 1, "train": 4}
    assert set().union(*map(set, source.splits.values())) == set(source.pairs)
    assert FolderSource(root, test_fraction=0.3, validation_fraction=0.15, seed=1).splits == source.splits
    train = source.load_split("train")
    assert sorted(i.name for i in train) == sorted(source.splits["train"] + source.splits["validation"])
    assert source.validation_names() == source.splits["validation"]
    reference = {s.name: s for s in make_synthetic_set(7, seed=7, size=96, prefix="case")}
    for image in train:
        np.testing.assert_array_equal(image.image, reference[image.name].image)
        np.testing.assert_array_equal(image.instance_labels, relabel_consecutive(reference[image.name].instance_labels))


def test_labels_masks_jpeg_tiff_and_xml_layouts(tmp_path):
    samples = make_synthetic_set(3, seed=2, size=64, prefix="s")
    for kind in ("labels", "masks"):
        root = tmp_path / kind
        (root / "images").mkdir(parents=True)
        (root / kind).mkdir()
        Image.fromarray(samples[0].image).save(root / "images" / "a.jpg", quality=95)
        tifffile.imwrite(root / "images" / "b.tif", samples[1].image, photometric="rgb")
        Image.fromarray(samples[2].image).save(root / "images" / "c.png")
        for name, sample in zip("abc", samples, strict=True):
            if kind == "labels":
                tifffile.imwrite(root / kind / f"{name}.tif", sample.instance_labels.astype(np.uint16))
            else:
                Image.fromarray(((sample.instance_labels > 0) * 255).astype(np.uint8)).save(root / kind / f"{name}.png")
        source = FolderSource(root, splits={"train": ["a", "b.tif"], "test": ["c"]})
        loaded = {i.name: i for i in source.load_split("train") + source.load_split("test")}
        assert sorted(loaded) == ["a", "b", "c"]
        for name, sample in zip("abc", samples, strict=True):
            if kind == "labels":
                np.testing.assert_array_equal(loaded[name].instance_labels, relabel_consecutive(sample.instance_labels))
            else:  # connected components of the binary mask: same foreground, touching nuclei may merge
                np.testing.assert_array_equal(loaded[name].mask, sample.mask)
                assert 0 < loaded[name].instance_labels.max() <= sample.instance_labels.max()
    xml_root = tmp_path / "xml"
    (xml_root / "images").mkdir(parents=True)
    (xml_root / "annotations").mkdir()
    for name in ("x", "y"):
        Image.fromarray(samples[0].image).save(xml_root / "images" / f"{name}.png")
        (xml_root / "annotations" / f"{name}.xml").write_text(
            '<Annotations><Annotation><Regions><Region Id="1"><Vertices><Vertex X="1.5" Y="1.5"/>'
            '<Vertex X="4.5" Y="1.5"/><Vertex X="4.5" Y="3.5"/></Vertices></Region></Regions></Annotation></Annotations>'
        )
    (xml_root / "splits.json").write_text(json.dumps({"train": ["x"], "test": ["y"]}))
    source = FolderSource(xml_root)
    assert source.splits["train"] == ["x"] and source.validation_names() is None
    assert source.load_split("test")[0].instance_labels.max() == 1


def test_every_problem_is_reported_at_once_one_line_per_file(tmp_path):
    root = make_geojson_folder(tmp_path / "data", count=4, size=64)
    (root / "images" / "notes.txt").write_text("not an image")
    (root / "images" / ".DS_Store").write_bytes(b"")  # hidden files are ignored
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "lonely.png")
    (root / "annotations" / "orphan.geojson").write_text("[]")
    with pytest.raises(FolderSourceError) as caught:
        FolderSource(root)
    problems = caught.value.problems
    assert len(problems) == 3
    assert any("notes.txt: not a supported image file" in p for p in problems)
    assert any("lonely.png: no annotation annotations/lonely.*" in p for p in problems)
    assert any("orphan.geojson: no image images/orphan.*" in p for p in problems)
    assert str(caught.value).count("\n") == 3

    for path in ("images/notes.txt", "images/lonely.png", "annotations/orphan.geojson"):
        (root / path).unlink()
    (root / "images" / "case_0000.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (root / "annotations" / "case_0001.geojson").write_text("{broken")
    source = FolderSource(root, splits={"train": ["case_0000", "case_0001", "case_0002"], "test": ["case_0003"]})
    with pytest.raises(FolderSourceError) as caught:
        source.load_split("train")
    assert len(caught.value.problems) == 2
    assert "case_0000.png: cannot read image" in caught.value.problems[0]
    assert "case_0001.geojson: not readable JSON" in caught.value.problems[1]

    with pytest.raises(FolderSourceError) as caught:
        FolderSource(root, splits={"train": ["case_0002", "ghost"], "test": ["case_0002"], "tset": []})
    text = str(caught.value)
    assert "'ghost' in train is not an annotated image" in text
    assert "'case_0002' is in both train and test" in text and "unknown split(s) ['tset']" in text


def test_layout_errors_say_what_to_do(tmp_path):
    with pytest.raises(FolderSourceError, match="expected DIR/images/"):
        FolderSource(tmp_path)
    (tmp_path / "images").mkdir()
    with pytest.raises(FolderSourceError, match="no labels/, masks/ or annotations/"):
        FolderSource(tmp_path)
    (tmp_path / "labels").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(FolderSourceError, match="annotation_kind"):
        FolderSource(tmp_path)
    with pytest.raises(ValueError, match="data.root is not set"):
        FolderSource(None)  # type: ignore[arg-type]


def test_datamodule_holds_out_the_named_validation_images(tmp_path):
    root = make_geojson_folder(tmp_path / "data", count=5, size=64)
    splits = {"train": ["case_0000", "case_0001", "case_0002"], "validation": ["case_0003"], "test": ["case_0004"]}
    datamodule = FolderDataModule(root, splits=splits, stain_normalizer=None, num_val_images=2, patch_size=32)
    datamodule.setup("fit")
    assert [i.name for i in datamodule.val_images] == ["case_0003"]
    assert sorted(i.name for i in datamodule.train_images) == splits["train"]


def test_folder_config_composes(compose_train, tmp_path):
    root = make_geojson_folder(tmp_path / "data", count=3, size=64)
    cfg = compose_train(["data=folder", f"data.root={root}", "data.mpp=0.5"], tiny=False)
    assert cfg.data.root == str(root) and cfg.data.mpp == 0.5
    datamodule = instantiate(cfg.data)
    assert isinstance(datamodule, FolderDataModule) and datamodule.source.annotation_kind == "annotations"


@pytest.mark.slow
def test_fast_run_trains_and_tests_on_a_geojson_folder(compose_train, tmp_path):
    root = make_geojson_folder(tmp_path / "data", count=5, size=96)
    overrides = [
        "data=folder", f"data.root={root}", "data.test_fraction=0.2", "data.validation_fraction=0.2",
        "data.patch_size=64", "data.patches_per_image=2", "data.batch_size=2",
        "module.inference.tile_size=64", "module.inference.overlap=16", "++widths.unet=4",
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "debug=fast",
    ]
    metrics = train(compose_train(overrides, tiny=False))
    assert 0.0 <= metrics["test"]["dice"] <= 1.0
    assert metrics["test"]["num_images"] == 1
