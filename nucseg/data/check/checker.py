"""The data check itself: every file of a MoNuSeg root read once, each problem with its fix.

See :mod:`nucseg.data.check` for what is read and what counts as a problem or a change.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nucseg.data.annotations import AnnotationError, parse_aperio_xml
from nucseg.data.check.headers import ImageHeader, read_image_header
from nucseg.data.check.report import (
    DEGENERATE_REGIONS_SKIPPED,
    FILES_IGNORED,
    ORPHAN_ANNOTATIONS_IGNORED,
    VERTICES_CLIPPED,
    XML_PREFERRED_OVER_LABEL_MAP,
    DataCheckReport,
)
from nucseg.data.monuseg import (
    IMAGE_SUFFIXES,
    LABEL_SUFFIXES,
    SPLITS,
    MonusegError,
    read_label_map,
    resolve_monuseg_root,
)
from nucseg.io.images import ImageReadError, rgb_conversions

# Vertices this far beyond the image edge are clipped (MoNuSeg's own reach 2.5 px past it);
# further out, the annotation was drawn on another image (e.g. one since resized).
OUTSIDE_TOLERANCE_PX = 8.0

_REGION_TAG = re.compile(rb"<Region[\s>/]")
_FIX_COPY = "copy the file again from the original data set"


def _access_problem(path: Path) -> str | None:
    """Why ``path`` cannot be opened (a symlink loop, a broken link...), or None."""
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symlink loop"
        if path.is_symlink():
            return f"broken symlink (points to {os.readlink(path)})"
        return f"cannot access ({error.strerror})"
    return None


def _without_path(message: str, path: Path) -> str:
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _polygon_areas(polygons: Sequence[np.ndarray]) -> np.ndarray:
    """Shoelace areas in square pixels."""
    return np.array(
        [0.5 * abs(float(np.dot(p[:, 0], np.roll(p[:, 1], -1)) - np.dot(p[:, 1], np.roll(p[:, 0], -1)))) for p in polygons]
    )


# -- the check -------------------------------------------------------------------------------------
class _Checker:
    def __init__(self, root: Path, outside_tolerance_px: float) -> None:
        self.root = root
        self.tolerance = outside_tolerance_px
        self.report = DataCheckReport(root=root)

    def _record(self, path: Path, data: bytes) -> None:
        self.report.checksums[str(path.relative_to(self.root))] = hashlib.sha256(data).hexdigest()

    def split(self, split: str) -> list[str]:
        """Check one split; return the names of its usable images."""
        report = self.report
        split_dir = self.root / split
        images_dir = split_dir / "images"
        for folder in (split_dir, images_dir):
            problem = _access_problem(folder)
            if problem is not None or not folder.is_dir():
                shown = f" ({problem})" if problem and folder.is_symlink() else ""
                report.add_problem(
                    folder,
                    f"{split} {'split' if folder == split_dir else 'images'} folder not found{shown}",
                    f"restore {split}/images/ with {split}/annotations/ (XML) or {split}/labels/ under the data root",
                )
                report.images[split] = 0
                return []

        images: dict[str, Path] = {}
        image_stems: set[str] = set()  # usable or not: their annotations are not orphans
        for path in sorted(images_dir.iterdir()):
            if path.name.startswith("."):
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                report.add_change(FILES_IGNORED, path, "not a .tif, .tiff or .png image")
                continue
            image_stems.add(path.stem)
            problem = _access_problem(path)
            if problem is not None:
                report.add_problem(path, problem, "replace the link with the image file")
                continue
            if not path.is_file():
                report.add_problem(path, "not a file", "remove it or replace it with the image file")
                continue
            if path.stem in images:
                report.add_problem(
                    path, f"two images named {path.stem!r} (also {images[path.stem].name})", "keep one of them"
                )
                continue
            images[path.stem] = path
        if not images:
            report.add_problem(images_dir, "no images (.tif, .tiff, .png)", f"put the {split} images here")

        usable = [name for name in sorted(images) if self.entry(split_dir, name, images[name])]
        self._orphans(split_dir, image_stems)
        report.images[split] = len(usable)
        return usable

    def entry(self, split_dir: Path, name: str, image_path: Path) -> bool:
        """Check one image and its annotation; True when both are usable."""
        report = self.report
        header = self.image(image_path)
        xml_path = split_dir / "annotations" / f"{name}.xml"
        label_path = next(
            (split_dir / "labels" / f"{name}{s}" for s in LABEL_SUFFIXES if (split_dir / "labels" / f"{name}{s}").exists()),
            None,
        )
        has_xml = xml_path.exists() or xml_path.is_symlink()
        if not has_xml and label_path is None:
            report.add_problem(
                image_path,
                "no annotation",
                f"add annotations/{name}.xml or labels/{name}.tif|.png, or remove the image",
            )
            return False
        if has_xml and label_path is not None:
            report.add_change(XML_PREFERRED_OVER_LABEL_MAP, xml_path, f"{label_path.name} not used")
        if has_xml:
            annotation_ok = self.xml(xml_path, image_path, header)
        else:
            annotation_ok = self.label_map(label_path, image_path, header)  # type: ignore[arg-type]
        return header is not None and annotation_ok

    def image(self, path: Path) -> ImageHeader | None:
        try:
            header, data = read_image_header(path)
            changes = rgb_conversions(header.channels, header.dtype, str(path))
        except ImageReadError as error:
            self.report.add_problem(path, _without_path(str(error), path), _FIX_COPY + " (an RGB TIFF or PNG)")
            return None
        self._record(path, data)
        for change in changes:
            self.report.add_change(change, path, f"{header.channels} channel(s), {header.dtype}")
        return header

    def _annotation_bytes(self, path: Path, xml: bool) -> bytes | None:
        """The file's bytes, checksum recorded; None (problem reported) for a bad link or an empty file.

        An XML file with only white space is empty; a label map only when it has 0 bytes.
        """
        problem = _access_problem(path)
        if problem is not None:
            self.report.add_problem(path, problem, f"replace the link with the {'annotation file' if xml else 'label map'}")
            return None
        data = path.read_bytes()
        if not (data.strip() if xml else data):
            self.report.add_problem(path, "empty annotation file" if xml else "empty file (0 bytes)", _FIX_COPY)
            return None
        self._record(path, data)
        return data

    def xml(self, path: Path, image_path: Path, header: ImageHeader | None) -> bool:
        report = self.report
        data = self._annotation_bytes(path, xml=True)
        if data is None:
            return False
        try:
            polygons = parse_aperio_xml(path)
        except AnnotationError as error:
            report.add_problem(path, _without_path(str(error), path), _FIX_COPY + " or export it again from ImageScope")
            return False
        areas = _polygon_areas(polygons)
        skipped = len(_REGION_TAG.findall(data)) - len(polygons) + int(np.sum(areas <= 0.0))
        if skipped > 0:
            report.add_change(DEGENERATE_REGIONS_SKIPPED, path, f"{skipped} region(s) without area")
        if not np.any(areas > 0.0):
            report.add_problem(
                path,
                "no region with an area: the image would train as background only",
                "use the annotation of this image (one <Region> with 3 or more vertices per nucleus)",
            )
            return False
        return header is None or self._extent(path, image_path, header, polygons)

    def _extent(self, path: Path, image_path: Path, header: ImageHeader, polygons: list[np.ndarray]) -> bool:
        """Vertices a little past the edge are clipped (counted); far past it, the files do not match."""
        lows = np.array([p.min(axis=0) for p in polygons])  # (N, 2) x, y
        highs = np.array([p.max(axis=0) for p in polygons])
        limits = np.array([header.width, header.height], dtype=np.float64) + 0.5
        beyond = np.maximum(np.max(-0.5 - lows, axis=1), np.max(highs - limits, axis=1))  # px past the edge
        far = beyond > self.tolerance
        if far.any():
            low, high = lows.min(axis=0), highs.max(axis=0)
            self.report.add_problem(
                path,
                f"{int(far.sum())} of {len(polygons)} regions reach up to {float(beyond.max()):.0f} px outside "
                f"its image {image_path} ({header.width}x{header.height} px; the vertices span x {low[0]:.0f}..{high[0]:.0f}, "
                f"y {low[1]:.0f}..{high[1]:.0f}): the annotation was drawn on an image of another size",
                "use the original image (not resized or cropped) or the annotation of this image",
            )
            return False
        clipped = int(np.sum(beyond > 0.0))
        if clipped:
            self.report.add_change(VERTICES_CLIPPED, path, f"{clipped} region(s) cross the image edge")
        return True

    def label_map(self, path: Path, image_path: Path, header: ImageHeader | None) -> bool:
        report = self.report
        if self._annotation_bytes(path, xml=False) is None or header is None:
            return False
        try:
            labels = read_label_map(path, (header.height, header.width))
        except (ImageReadError, MonusegError) as error:
            report.add_problem(
                path,
                _without_path(str(error), path),
                f"a single-channel integer label map of {image_path.name}'s size ({header.width}x{header.height})",
            )
            return False
        if not labels.any():
            report.add_problem(
                path, "no nuclei (all background)", f"use the label map of {image_path.name} (0 = background, k = nucleus k)"
            )
            return False
        return True

    def _orphans(self, split_dir: Path, image_names: set[str]) -> None:
        for folder, suffixes in (("annotations", (".xml",)), ("labels", LABEL_SUFFIXES)):
            directory = split_dir / folder
            if not directory.is_dir():
                continue
            for path in sorted(directory.iterdir()):
                if path.name.startswith(".") or path.suffix.lower() not in suffixes:
                    continue
                if path.stem not in image_names:
                    self.report.add_change(ORPHAN_ANNOTATIONS_IGNORED, path, f"no images/{path.stem}.* to annotate")


def check_monuseg_root(
    root: str | os.PathLike[str] | None,
    splits: Sequence[str] = SPLITS,
    *,
    num_val_images: int = 0,
    stain_reference: str | None = None,
    outside_tolerance_px: float = OUTSIDE_TOLERANCE_PX,
) -> DataCheckReport:
    """Check every file of the given splits and return the report (it does not raise on problems).

    Args:
        root: the data root (None: ``$MONUSEG_ROOT``).
        splits: the splits the run will read.
        num_val_images: training images held out for validation; the train split needs more.
        stain_reference: the training image the stain normaliser is fitted to, if one is named.
        outside_tolerance_px: vertices further than this beyond the image edge are an error.

    Returns:
        The report; call :meth:`DataCheckReport.raise_if_failed` to stop on problems.

    Raises:
        MonusegError: the root itself is missing (nothing else can be checked), or a split name is unknown.
    """
    started = time.perf_counter()
    unknown = [split for split in splits if split not in SPLITS]
    if unknown:
        raise MonusegError(f"unknown MoNuSeg split(s) {unknown}: expected {', '.join(SPLITS)}")
    checker = _Checker(resolve_monuseg_root(root), outside_tolerance_px)
    for split in splits:
        names = checker.split(split)
        if split != "train" or not checker.report.images.get("train"):
            continue
        train_dir = checker.root / "train" / "images"
        if num_val_images and len(names) <= num_val_images:
            checker.report.add_problem(
                train_dir,
                f"{len(names)} usable training images, but data.num_val_images={num_val_images} are held out for validation",
                f"set data.num_val_images below {len(names)} or add training images",
            )
        if stain_reference and stain_reference not in names:
            checker.report.add_problem(
                train_dir,
                f"data.stain_reference={stain_reference} is not a usable training image",
                "set data.stain_reference to one of the training images (null: the first by name)",
            )
    checker.report.seconds = time.perf_counter() - started
    return checker.report


def check_data_source(source: Any, num_val_images: int = 0, stain_reference: str | None = None) -> DataCheckReport | None:
    """Check the files behind a data source before training and log the changes it lists.

    Args:
        source: the data module's source; only :class:`~nucseg.data.sources.MonusegSource` has files.
        num_val_images: training images held out for validation.
        stain_reference: the training image the stain normaliser is fitted to, if named.

    Returns:
        The report, or None for a source without files (synthetic data).

    Raises:
        DataCheckError: the data root has problems (all of them in the message).
    """
    from nucseg.data.sources import MonusegSource

    if not isinstance(source, MonusegSource):
        return None
    report = check_monuseg_root(source.root, num_val_images=num_val_images, stain_reference=stain_reference)
    report.log()
    report.raise_if_failed()
    return report
