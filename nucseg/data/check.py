"""Check a MoNuSeg data root before any training: every problem at once, nothing changed silently.

``python -m nucseg.data.check ROOT`` (or ``make check-data ROOT=...``) runs the check alone;
``train.py`` runs it before the first training step on every split the run uses (train, whose
held-out images are the validation set, and test).

What is read, once per file, so that the check costs seconds on MoNuSeg:

- images: the bytes (hashed for the run's record) and the header (size, channels, bit depth,
  and for TIFF whether the file holds all the bytes its strips or tiles claim); pixels are not
  decoded;
- XML annotations: parsed with :func:`nucseg.data.annotations.parse_aperio_xml`; their vertices
  are compared with the image's size;
- label maps: decoded (they are small) to check shape, type and that they hold nuclei.

Problems (the run cannot be right) are collected, one line per file with the reason and the fix,
and raised together as :class:`DataCheckError`. Changes that alter what the model sees without
being wrong (alpha dropped, greyscale replicated, 16-bit scaled, degenerate regions skipped,
vertices clipped at the border, XML preferred over a label map, files without an image ignored)
are counted and listed in the report, which the training run logs and stores in ``metrics.json``.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import io
import logging
import os
import re
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nucseg.data.annotations import AnnotationError, parse_aperio_xml
from nucseg.data.monuseg import (
    IMAGE_SUFFIXES,
    LABEL_SUFFIXES,
    SPLITS,
    MonusegError,
    read_label_map,
    resolve_monuseg_root,
)
from nucseg.utils.image_io import TIFF_SUFFIXES, ImageReadError, rgb_conversions

logger = logging.getLogger(__name__)

# Vertices this far beyond the image edge are clipped (MoNuSeg's own reach 2.5 px past it);
# further out, the annotation was drawn on another image (e.g. one since resized).
OUTSIDE_TOLERANCE_PX = 8.0

# Change kinds besides the image conversions named in nucseg.utils.image_io.
DEGENERATE_REGIONS_SKIPPED = "degenerate_regions_skipped"
VERTICES_CLIPPED = "vertices_clipped"
XML_PREFERRED_OVER_LABEL_MAP = "xml_preferred_over_label_map"
ORPHAN_ANNOTATIONS_IGNORED = "orphan_annotations_ignored"
FILES_IGNORED = "files_ignored"

_REGION_TAG = re.compile(rb"<Region[\s>/]")
_FIX_COPY = "copy the file again from the original data set"


@dataclass(frozen=True)
class DataProblem:
    """One file that makes the data root unusable, with what to do about it."""

    path: Path
    reason: str
    fix: str

    def line(self) -> str:
        return f"{self.path}: {self.reason} (fix: {self.fix})"


@dataclass(frozen=True)
class ImageHeader:
    """What the check needs to know of an image without decoding its pixels."""

    height: int
    width: int
    channels: int
    dtype: np.dtype


@dataclass
class DataCheckReport:
    """Outcome of :func:`check_monuseg_root`.

    Attributes:
        root: the data root checked.
        images: number of usable images per split checked.
        problems: files that must be fixed before training.
        changes: change kind -> files it applies to (with a detail each).
        checksums: path relative to ``root`` -> SHA-256 of every data file read.
        seconds: wall time of the check.
    """

    root: Path
    images: dict[str, int] = field(default_factory=dict)
    problems: list[DataProblem] = field(default_factory=list)
    changes: dict[str, list[str]] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add_problem(self, path: Path, reason: str, fix: str) -> None:
        self.problems.append(DataProblem(path, reason, fix))

    def add_change(self, kind: str, path: Path, detail: str | None = None) -> None:
        self.changes.setdefault(kind, []).append(f"{path} ({detail})" if detail else str(path))

    def summary(self) -> str:
        splits = ", ".join(f"{split} {count} images" for split, count in self.images.items())
        changed = sum(len(files) for files in self.changes.values())
        if self.problems:
            files = len({problem.path for problem in self.problems})
            return (
                f"data check of {self.root}: {len(self.problems)} problem(s) in {files} file(s) ({splits}); "
                f"nothing was trained: fix them and run `python -m nucseg.data.check {self.root}` again"
            )
        return f"data check of {self.root}: ok ({splits}; {changed} change(s) listed, {self.seconds:.1f} s)"

    def change_lines(self) -> list[str]:
        """One line per change kind with its count and files."""
        return [f"{kind} ({len(files)}): {', '.join(files)}" for kind, files in sorted(self.changes.items())]

    def message(self) -> str:
        """The problems, one line each, then the summary: what a user sees when the check fails."""
        return "\n".join([problem.line() for problem in self.problems] + [self.summary()])

    def log(self, log: logging.Logger = logger) -> None:
        """Log the changes once (warnings: they alter what the model sees) and, when ok, the summary."""
        for line in self.change_lines():
            log.warning("data check: %s", line)
        if self.ok:
            log.info(self.summary())

    def to_dict(self) -> dict[str, Any]:
        """The record stored as ``metrics.json["data_check"]`` (checksums go to the run's provenance)."""
        return {
            "root": str(self.root),
            "ok": self.ok,
            "images": dict(self.images),
            "problems": [problem.line() for problem in self.problems],
            "changes": {kind: {"count": len(files), "files": files} for kind, files in sorted(self.changes.items())},
            "files_read": len(self.checksums),
            "seconds": round(self.seconds, 2),
        }

    def raise_if_failed(self) -> None:
        """Raises:
        DataCheckError: when any problem was found."""
        if self.problems:
            raise DataCheckError(self)


class DataCheckError(MonusegError):
    """The data root has problems; the message lists every one, then a summary line."""

    def __init__(self, report: DataCheckReport) -> None:
        self.report = report
        super().__init__(report.message())


# -- headers ---------------------------------------------------------------------------------------
def _tiff_header(data: bytes, path: Path) -> ImageHeader:
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            if not len(tif.pages):
                raise ImageReadError(f"{path}: TIFF without an image")
            page = tif.pages[0]
            height, width, channels, dtype = page.imagelength, page.imagewidth, page.samplesperpixel, page.dtype
            offsets, counts = list(page.dataoffsets), list(page.databytecounts)
    except tifffile.TiffFileError as error:
        raise ImageReadError(f"{path}: not a readable TIFF ({error})") from error
    except (OSError, ValueError, struct.error, IndexError) as error:
        raise ImageReadError(f"{path}: damaged TIFF header ({type(error).__name__}: {error})") from error
    if dtype is None:
        raise ImageReadError(f"{path}: TIFF pixel type not supported")
    if not counts or min(counts) == 0:
        raise ImageReadError(f"{path}: TIFF with missing image data (empty strips or tiles)")
    needed = max(offset + count for offset, count in zip(offsets, counts, strict=True))
    if needed > len(data):
        raise ImageReadError(f"{path}: truncated: the file has {len(data)} bytes, its image data needs {needed}")
    return ImageHeader(int(height), int(width), int(channels), np.dtype(dtype))


# PIL modes: samples per pixel and pixel type as ``np.asarray`` returns them.
_PIL_MODES: dict[str, tuple[int, str]] = {
    "RGB": (3, "uint8"),
    "RGBA": (4, "uint8"),
    "L": (1, "uint8"),
    "1": (1, "bool"),
    "I;16": (1, "uint16"),
    "I;16L": (1, "uint16"),
    "I;16B": (1, "uint16"),
    "F": (1, "float32"),
}


def _pil_header(data: bytes, path: Path) -> ImageHeader:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as opened:
            mode, (width, height) = opened.mode, opened.size
            opened.verify()  # walks the chunks and their checksums; catches truncation without decoding
    except Exception as error:  # noqa: BLE001 - every decoder error becomes one line
        raise ImageReadError(f"{path}: cannot read image ({type(error).__name__}: {error})") from error
    if mode not in _PIL_MODES:
        raise ImageReadError(f"{path}: image mode {mode!r} is not RGB, RGBA or greyscale (save it as RGB)")
    channels, dtype = _PIL_MODES[mode]
    return ImageHeader(int(height), int(width), channels, np.dtype(dtype))


def read_image_header(path: str | os.PathLike[str]) -> tuple[ImageHeader, bytes]:
    """Read an image's bytes and header without decoding its pixels.

    Args:
        path: a TIFF or PNG image.

    Returns:
        The header and the file's bytes.

    Raises:
        ImageReadError: the file is empty, not an image, truncated, or of a layout the reader
            refuses (see :func:`nucseg.utils.image_io.rgb_conversions`).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageReadError(f"{path}: cannot read ({error.strerror})") from error
    if not data:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    header = _tiff_header(data, path) if path.suffix.lower() in TIFF_SUFFIXES else _pil_header(data, path)
    if header.height < 1 or header.width < 1:
        raise ImageReadError(f"{path}: image of size {header.width}x{header.height}")
    return header, data


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

    def xml(self, path: Path, image_path: Path, header: ImageHeader | None) -> bool:
        report = self.report
        problem = _access_problem(path)
        if problem is not None:
            report.add_problem(path, problem, "replace the link with the annotation file")
            return False
        data = path.read_bytes()
        if not data.strip():
            report.add_problem(path, "empty annotation file", _FIX_COPY)
            return False
        self._record(path, data)
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
        problem = _access_problem(path)
        if problem is not None:
            report.add_problem(path, problem, "replace the link with the label map")
            return False
        data = path.read_bytes()
        if not data:
            report.add_problem(path, "empty file (0 bytes)", _FIX_COPY)
            return False
        self._record(path, data)
        if header is None:
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m nucseg.data.check ROOT``: 0 when the root is usable, 2 when it has problems."""
    parser = argparse.ArgumentParser(
        prog="python -m nucseg.data.check", description="Check a MoNuSeg data root (every problem at once)."
    )
    parser.add_argument("root", nargs="?", help="the folder holding train/ and test/ (default: $MONUSEG_ROOT)")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument("--tolerance-px", type=float, default=OUTSIDE_TOLERANCE_PX, help="vertices allowed past the edge")
    args = parser.parse_args(argv)
    try:
        report = check_monuseg_root(args.root, args.splits, outside_tolerance_px=args.tolerance_px)
    except MonusegError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for line in report.change_lines():
        print(f"note: {line}")
    for problem in report.problems:
        print(problem.line(), file=sys.stderr)
    print(report.summary(), file=sys.stderr if report.problems else sys.stdout)
    return 0 if report.ok else 2


if __name__ == "__main__":
    raise SystemExit(main())
