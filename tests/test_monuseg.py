"""The MoNuSeg folder reader, on a tiny fake copy of the official layout built in tmp_path."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from helpers import aperio_xml, random_rgb, rectangle

from nucseg.data.annotations import AnnotationError
from nucseg.data.monuseg import (
    MONUSEG_ROOT_ENV,
    MonusegEntry,
    MonusegError,
    list_monuseg_split,
    load_monuseg_entry,
    load_monuseg_split,
    resolve_monuseg_root,
)

HEIGHT, WIDTH = 12, 16
# One rectangle x 1.5..5.5, y 2.5..4.5 = 8 pixels: 0-based columns 1..4, rows 2..3 by the organisers'
# rule (1-based vertices), columns 2..5, rows 3..4 by the centre rule; one 3 x 3 square.
XML = aperio_xml([rectangle(1.5, 2.5, 5.5, 4.5), rectangle(9.5, 6.5, 12.5, 9.5)])


@pytest.fixture
def root(tmp_path):
    """train: a (LZW TIFF + XML), b (TIFF + uint16 label TIFF), c (XML and label: XML wins); test: d."""
    base = tmp_path / "monuseg"
    for folder in ("train/images", "train/annotations", "train/labels", "test/images", "test/annotations"):
        (base / folder).mkdir(parents=True)
    tifffile.imwrite(base / "train/images/a.tif", random_rgb(0, HEIGHT, WIDTH), photometric="rgb", compression="lzw")
    (base / "train/annotations/a.xml").write_text(XML)
    tifffile.imwrite(base / "train/images/b.tif", random_rgb(1, HEIGHT, WIDTH), photometric="rgb")
    labels = np.zeros((HEIGHT, WIDTH), dtype=np.uint16)
    labels[0:2, 0:3] = 700
    labels[5:9, 10:12] = 12
    tifffile.imwrite(base / "train/labels/b.tif", labels, compression="zlib")
    tifffile.imwrite(base / "train/images/c.tif", random_rgb(2, HEIGHT, WIDTH), photometric="rgb", compression="packbits")
    (base / "train/annotations/c.xml").write_text(XML)
    tifffile.imwrite(base / "train/labels/c.tif", np.ones((HEIGHT, WIDTH), dtype=np.uint16))
    tifffile.imwrite(base / "test/images/d.tif", random_rgb(3, HEIGHT, WIDTH), photometric="rgb")
    (base / "test/annotations/d.xml").write_text(XML)
    (base / "train/images/.hidden.tif").write_bytes(b"ignored")
    return base


def test_list_split_sorted_with_sources(root):
    entries = list_monuseg_split(root, "train")
    assert [entry.name for entry in entries] == ["a", "b", "c"]
    a, b, c = entries
    assert a.annotation_path == root / "train/annotations/a.xml" and a.label_path is None
    assert b.annotation_path is None and b.label_path == root / "train/labels/b.tif"
    assert c.annotation_path is not None and c.label_path is not None
    assert [entry.name for entry in list_monuseg_split(str(root), "test")] == ["d"]


def test_load_split_images_and_labels(root):
    images = {item.name: item for item in load_monuseg_split(root, "train")}
    a = images["a"]
    np.testing.assert_array_equal(a.image, random_rgb(0, HEIGHT, WIDTH))  # LZW decoded through imagecodecs
    assert a.instance_labels.dtype == np.int32 and a.instance_labels.shape == (HEIGHT, WIDTH)
    assert np.bincount(a.instance_labels.ravel())[1:].tolist() == [8, 9]
    assert (a.instance_labels[2:4, 1:5] == 1).all()
    centre = {item.name: item for item in load_monuseg_split(root, "train", annotation_rule="centre")}
    assert (centre["a"].instance_labels[3:5, 2:6] == 1).all()

    b = images["b"].instance_labels  # ids 12 and 700 renumbered in order
    assert b.dtype == np.int32 and b.max() == 2
    assert (b[5:9, 10:12] == 1).all() and (b[0:2, 0:3] == 2).all()
    assert images["c"].instance_labels.max() == 2  # XML preferred over the (all-ones) label map


def test_env_var_fallback(root, monkeypatch):
    monkeypatch.setenv(MONUSEG_ROOT_ENV, str(root))
    assert resolve_monuseg_root(None) == root
    assert len(load_monuseg_split(None, "test")) == 1


def test_missing_root(tmp_path, monkeypatch):
    with pytest.raises(MonusegError, match="nowhere") as caught:
        resolve_monuseg_root(tmp_path / "nowhere")
    assert "set data.root=" in str(caught.value), "the fix that works under train.py and evaluate.py"
    monkeypatch.delenv(MONUSEG_ROOT_ENV, raising=False)
    with pytest.raises(MonusegError, match=MONUSEG_ROOT_ENV):
        list_monuseg_split(None, "train")


def test_layout_errors(root, tmp_path):
    with pytest.raises(MonusegError, match="unknown MoNuSeg split"):
        list_monuseg_split(root, "val")
    empty = tmp_path / "empty"
    (empty / "test").mkdir(parents=True)
    with pytest.raises(MonusegError, match="train: split folder not found"):
        list_monuseg_split(empty, "train")
    with pytest.raises(MonusegError, match="images: images folder not found"):
        list_monuseg_split(empty, "test")
    (empty / "test/images").mkdir()
    with pytest.raises(MonusegError, match="no images"):
        list_monuseg_split(empty, "test")


def test_image_without_annotation(root):
    tifffile.imwrite(root / "train/images/lonely.tif", random_rgb(4, HEIGHT, WIDTH), photometric="rgb")
    with pytest.raises(MonusegError, match="lonely.tif: no annotation"):
        list_monuseg_split(root, "train")


def test_corrupt_tiff_names_file(root):
    (root / "train/images/a.tif").write_bytes(b"this is not a tiff at all")
    entry = list_monuseg_split(root, "train")[0]
    with pytest.raises(ValueError, match="a.tif"):
        load_monuseg_entry(entry)


def test_unparsable_xml_names_file(root):
    (root / "test/annotations/d.xml").write_text("<Annotations><Region")
    with pytest.raises(AnnotationError, match="d.xml"):
        load_monuseg_split(root, "test")


def test_label_shape_mismatch_names_file(root):
    tifffile.imwrite(root / "train/labels/b.tif", np.zeros((HEIGHT + 1, WIDTH), dtype=np.uint16))
    entry = list_monuseg_split(root, "train")[1]
    with pytest.raises(MonusegError, match=r"b\.tif: label map shape"):
        load_monuseg_entry(entry)


def test_label_map_png_and_bad_kinds(tmp_path):
    from PIL import Image

    image_path = tmp_path / "e.tif"
    tifffile.imwrite(image_path, random_rgb(5, HEIGHT, WIDTH), photometric="rgb")
    png = tmp_path / "e.png"
    labels = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    labels[1:3, 1:3] = 9
    Image.fromarray(labels).save(png)
    loaded = load_monuseg_entry(MonusegEntry("e", image_path, None, png))
    assert loaded.instance_labels.max() == 1 and (loaded.instance_labels == 1).sum() == 4

    rgb_label = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb_label, random_rgb(6, HEIGHT, WIDTH), photometric="rgb")
    with pytest.raises(MonusegError, match="rgb.tif: label map must be single-channel"):
        load_monuseg_entry(MonusegEntry("e", image_path, None, rgb_label))
    with pytest.raises(MonusegError, match="e.tif: no annotation"):
        load_monuseg_entry(MonusegEntry("e", image_path, None, None))


@pytest.mark.parametrize("rule", ["organisers", "centre"])
def test_annotation_rule_composes_into_the_data_module(compose_train, root, rule):
    from hydra.utils import instantiate

    cfg = compose_train(["data=monuseg", f"data.root={root}", f"data.annotation_rule={rule}"], tiny=False)
    datamodule = instantiate(cfg.data)
    assert datamodule.source.annotation_rule == rule
    labels = datamodule.source.load_split("train")[0].instance_labels
    assert (labels[2:4, 1:5] == 1).all() if rule == "organisers" else (labels[3:5, 2:6] == 1).all()


def test_unknown_annotation_rule_is_one_line(root):
    from nucseg.data.datamodule import MonusegDataModule

    with pytest.raises(ValueError, match="unknown data.annotation_rule 'matlab'; expected one of organisers, centre"):
        MonusegDataModule(root=root, annotation_rule="matlab")
