"""The data check: a damaged MoNuSeg copy built in tmp_path, every fault reported at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import REPO_ROOT, TWO_NUCLEI_XML, aperio_xml, make_monuseg_root, random_rgb, rectangle
from PIL import Image

from nucseg.data.check import (
    DEGENERATE_REGIONS_SKIPPED,
    ORPHAN_ANNOTATIONS_IGNORED,
    VERTICES_CLIPPED,
    XML_PREFERRED_OVER_LABEL_MAP,
    DataCheckError,
    check_data_source,
    check_monuseg_root,
    main,
)
from nucseg.data.sources import MonusegSource
from nucseg.io.images import ALPHA_DROPPED, GREYSCALE_REPLICATED, SCALED_16_TO_8_BIT

SIZE = 32  # the side of make_monuseg_root's images


def make_damaged_root(base: Path) -> tuple[Path, dict[str, str], dict[str, str]]:
    """A root with one fault per file; returns it, {file name: expected words} for the problems
    and {file name: change kind} for the changes that must be listed."""
    root = make_monuseg_root(base, num_train=3, with_test=False)
    train = root / "train"
    images, annotations, labels = train / "images", train / "annotations", train / "labels"
    problems: dict[str, str] = {}

    def image(name: str, pixels: np.ndarray | None = None, **kwargs: object) -> Path:
        path = images / f"{name}.tif"
        tifffile.imwrite(path, random_rgb(1) if pixels is None else pixels, **kwargs)
        return path

    full = image("truncated", photometric="rgb")
    full.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    (annotations / "truncated.xml").write_text(TWO_NUCLEI_XML)
    problems["truncated.tif"] = "truncated"

    (images / "empty.tif").write_bytes(b"")
    (annotations / "empty.xml").write_text(TWO_NUCLEI_XML)
    problems["empty.tif"] = "empty file"

    (images / "notimage.tif").write_text("this is a text file, not a TIFF\n")
    (annotations / "notimage.xml").write_text(TWO_NUCLEI_XML)
    problems["notimage.tif"] = "not a readable TIFF"

    image("malformed", photometric="rgb")
    (annotations / "malformed.xml").write_text("<Annotations><Region>")
    problems["malformed.xml"] = "not well-formed"

    image("emptyxml", photometric="rgb")
    (annotations / "emptyxml.xml").write_text("")
    problems["emptyxml.xml"] = "empty annotation"

    image("noregions", photometric="rgb")
    (annotations / "noregions.xml").write_text("<Annotations><Annotation/></Annotations>")
    problems["noregions.xml"] = "no <Region>"

    image("degenerate", photometric="rgb")
    two_vertices = '<Region Id="1"><Vertices><Vertex X="3" Y="3"/><Vertex X="9" Y="9"/></Vertices></Region>'
    collinear = aperio_xml([two_vertices, rectangle(5, 5, 5, 20)])  # a zero-width "rectangle"
    (annotations / "degenerate.xml").write_text(collinear)
    problems["degenerate.xml"] = "background only"

    image("badvertex", photometric="rgb")
    (annotations / "badvertex.xml").write_text(TWO_NUCLEI_XML.replace('X="4"', 'X="four"', 1))
    problems["badvertex.xml"] = "numeric"

    image("resized", random_rgb(2, height=20, width=28), photometric="rgb")  # annotation drawn at 32 x 32, then 100 px
    (annotations / "resized.xml").write_text(aperio_xml([rectangle(4, 4, 12, 12), rectangle(60, 60, 100, 100)]))
    problems["resized.xml"] = "resized.tif"  # both files in one line

    image("wrongshape", photometric="rgb")
    tifffile.imwrite(labels / "wrongshape.tif", np.ones((SIZE // 2, SIZE), dtype=np.uint16))
    problems["wrongshape.tif"] = "differs from image shape"

    image("floatlabels", photometric="rgb")
    tifffile.imwrite(labels / "floatlabels.tif", np.ones((SIZE, SIZE), dtype=np.float32))
    problems["floatlabels.tif"] = "integer"

    image("negative", photometric="rgb")
    tifffile.imwrite(labels / "negative.tif", np.full((SIZE, SIZE), -3, dtype=np.int16))
    problems["negative.tif"] = "negative"

    image("background", photometric="rgb")
    tifffile.imwrite(labels / "background.tif", np.zeros((SIZE, SIZE), dtype=np.uint16))
    problems["background.tif"] = "all background"

    image("unannotated", photometric="rgb")
    problems["unannotated.tif"] = "no annotation"

    os.symlink("loop.tif", images / "loop.tif")
    (annotations / "loop.xml").write_text(TWO_NUCLEI_XML)
    problems["loop.tif"] = "symlink loop"

    Image.fromarray(random_rgb(3)).save(images / "good0.png")  # same name as good0.tif
    problems["good0.png"] = "two images named"

    Image.fromarray(random_rgb(4)).convert("P").save(images / "palette.png")
    (annotations / "palette.xml").write_text(TWO_NUCLEI_XML)
    problems["palette.png"] = "mode 'P'"

    tifffile.imwrite(images / "twochannel.tif", np.zeros((SIZE, SIZE, 2), dtype=np.uint8), planarconfig="contig")
    (annotations / "twochannel.xml").write_text(TWO_NUCLEI_XML)
    problems["twochannel.tif"] = "2 channels"

    problems[f"{root / 'test'}:"] = "split folder not found"

    # Changes: listed, not refused.
    changes = {}
    image("rgba", np.dstack([random_rgb(5), np.full((SIZE, SIZE), 255, np.uint8)]), photometric="rgb", extrasamples=[2])
    (annotations / "rgba.xml").write_text(TWO_NUCLEI_XML)
    changes["rgba.tif"] = ALPHA_DROPPED
    image("grey", random_rgb(6)[..., 0], photometric="minisblack")
    (annotations / "grey.xml").write_text(TWO_NUCLEI_XML)
    changes["grey.tif"] = GREYSCALE_REPLICATED
    image("deep", random_rgb(7).astype(np.uint16) * 257, photometric="rgb")
    (annotations / "deep.xml").write_text(TWO_NUCLEI_XML)
    changes["deep.tif"] = SCALED_16_TO_8_BIT
    (annotations / "orphan.xml").write_text(TWO_NUCLEI_XML)
    changes["orphan.xml"] = ORPHAN_ANNOTATIONS_IGNORED
    tifffile.imwrite(labels / "good1.tif", np.ones((SIZE, SIZE), dtype=np.uint16))
    changes["good1.xml"] = XML_PREFERRED_OVER_LABEL_MAP
    image("stray", photometric="rgb")
    (annotations / "stray.xml").write_text(aperio_xml([rectangle(4, 4, 12, 12), two_vertices.replace('Id="1"', 'Id="2"')]))
    changes["stray.xml"] = DEGENERATE_REGIONS_SKIPPED
    image("border", photometric="rgb")
    (annotations / "border.xml").write_text(aperio_xml([rectangle(-2, 4, 12, 12), rectangle(20, 20, SIZE + 1.5, SIZE + 2)]))
    changes["border.xml"] = VERTICES_CLIPPED
    return root, problems, changes


def test_clean_root_passes_with_checksums(tmp_path):
    root = make_monuseg_root(tmp_path / "monuseg")
    report = check_monuseg_root(root, num_val_images=1)
    assert report.ok, report.message()
    assert report.images == {"train": 4, "test": 1}
    assert not report.changes
    assert set(report.checksums) == {
        *(f"train/{kind}/good{i}.{ext}" for i in range(4) for kind, ext in (("images", "tif"), ("annotations", "xml"))),
        "test/images/testgood.tif",
        "test/annotations/testgood.xml",
    }
    assert all(len(digest) == 64 for digest in report.checksums.values())
    assert report.to_dict()["ok"] is True


def test_every_fault_of_a_damaged_root_is_reported_in_one_pass(tmp_path):
    root, problems, changes = make_damaged_root(tmp_path / "monuseg")
    assert len(problems) >= 15
    report = check_monuseg_root(root, num_val_images=1)
    lines = [problem.line() for problem in report.problems]
    for name, words in problems.items():
        matching = [line for line in lines if name in line]
        assert matching, f"{name} not reported:\n" + "\n".join(lines)
        assert any(words in line for line in matching), (name, words, matching)
    assert all("(fix: " in line for line in lines)
    listed = {kind: " ".join(files) for kind, files in report.changes.items()}
    for name, kind in changes.items():
        assert name in listed.get(kind, ""), (name, kind, listed)
    # the good images and the changed ones are usable; the resized image's line names both files
    resized = next(line for line in lines if "resized.xml" in line)
    assert "resized.tif" in resized and "28x20 px" in resized
    # usable: good0..2 and the five changed images (rgba, grey, deep, stray, border)
    assert report.images["train"] == 8
    with pytest.raises(DataCheckError) as raised:
        report.raise_if_failed()
    message = str(raised.value)
    assert message.count("\n") == len(report.problems)
    assert message.splitlines()[-1].startswith(f"data check of {root}: {len(report.problems)} problem(s)")


def test_too_few_training_images_and_a_wrong_stain_reference_are_problems(tmp_path):
    root = make_monuseg_root(tmp_path / "monuseg", num_train=2)
    report = check_monuseg_root(root, num_val_images=2, stain_reference="TCGA-absent")
    text = report.message()
    assert "data.num_val_images=2" in text and "data.stain_reference=TCGA-absent" in text


def test_check_data_source_raises_and_skips_synthetic(tmp_path):
    root = make_monuseg_root(tmp_path / "monuseg", with_test=False)
    with pytest.raises(DataCheckError, match="test split folder not found"):
        check_data_source(MonusegSource(root))
    assert check_data_source(object()) is None


def test_command_line_exit_status(tmp_path, capsys):
    good = make_monuseg_root(tmp_path / "good")
    assert main([str(good)]) == 0
    assert "ok (train 4 images, test 1 images" in capsys.readouterr().out
    bad, problems, _ = make_damaged_root(tmp_path / "bad")
    assert main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in problems)
    assert main([str(tmp_path / "absent")]) == 2
    assert "MoNuSeg root not found" in capsys.readouterr().err


def _train_subprocess(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "train.py", *args, f"paths.log_dir={tmp_path / 'logs'}", f"paths.cache_dir={tmp_path / 'cache'}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "HYDRA_FULL_ERROR": ""},
    )


@pytest.mark.slow
def test_train_py_refuses_a_damaged_root_in_one_message_with_exit_2(tmp_path):
    root, problems, changes = make_damaged_root(tmp_path / "monuseg")
    result = _train_subprocess(["data=monuseg", f"data.root={root}", "data.stain_reference=null", "data.num_val_images=1"], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output
    for name in problems:
        assert name in result.stderr, name
    for name in changes:
        assert name in output, name
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: data check of {root}:")
    assert not list((tmp_path / "logs").rglob("*.ckpt")), "nothing may be trained"


def test_python_m_entry_point(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "nucseg.data.check", str(tmp_path / "absent")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "absent: MoNuSeg root not found" in result.stderr
