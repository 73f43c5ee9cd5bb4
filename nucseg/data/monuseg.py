"""The official MoNuSeg 2018 layout -> ``AnnotatedImage`` lists.

Expected layout under the data root (see the data set's README)::

    <root>/<split>/images/<name>.tif            RGB H&E image (LZW or PackBits TIFF; PNG also accepted)
    <root>/<split>/annotations/<name>.xml       Aperio ImageScope XML, one <Region> per nucleus
    <root>/<split>/labels/<name>.tif|.tiff|.png instance label map, 0 = background

Each image needs an XML annotation or a label map; where both exist the XML is used, because it
is the original annotation and label maps are derived from it.

This module reads one file at a time and stops at the first problem; :mod:`nucseg.data.check`
checks a whole root first (``python -m nucseg.data.check ROOT``), reporting every problem at once
and listing what is converted or skipped (the XML-over-label-map choice, orphan annotations,
alpha / greyscale / 16-bit images, clipped or degenerate regions). Training runs it first.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nucseg.data.annotations import relabel_consecutive, xml_to_instance_labels
from nucseg.data.types import AnnotatedImage
from nucseg.io.images import read_image_array, read_rgb_image

logger = logging.getLogger(__name__)

MONUSEG_ROOT_ENV = "MONUSEG_ROOT"
SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
LABEL_SUFFIXES = (".tif", ".tiff", ".png")


class MonusegError(ValueError):
    """The MoNuSeg folder is missing or does not follow the official layout."""


@dataclass(frozen=True)
class MonusegEntry:
    """One image of a split and where its annotation lives.

    Attributes:
        name: file stem, e.g. ``TCGA-2Z-A9J9-01A-01-TS1``.
        image_path: the RGB image.
        annotation_path: the Aperio XML, or None.
        label_path: the instance label map, or None (ignored when ``annotation_path`` is set).
    """

    name: str
    image_path: Path
    annotation_path: Path | None
    label_path: Path | None


def resolve_monuseg_root(root: str | os.PathLike[str] | None) -> Path:
    """Find the MoNuSeg data root from the argument or, when it is None or empty, ``$MONUSEG_ROOT``.

    Args:
        root: the data root, or None to use the environment variable.

    Returns:
        The root as an existing directory path.

    Raises:
        MonusegError: neither is set, or the path is not an existing directory.
    """
    if root is None or str(root) == "":
        root = os.environ.get(MONUSEG_ROOT_ENV) or None
        if root is None:
            raise MonusegError(
                "MoNuSeg root not given: set data.root=/path/to/monuseg (the folder holding train/ and test/) "
                f"or the {MONUSEG_ROOT_ENV} environment variable"
            )
    path = Path(root).expanduser()
    if not path.is_dir():
        # The root is given (a value or $MONUSEG_ROOT resolved into it), so only data.root fixes it,
        # under train.py and evaluate.py alike.
        raise MonusegError(
            f"{path}: MoNuSeg root not found: set data.root=/path/to/monuseg (the folder holding train/ and test/)"
        )
    return path


def list_monuseg_split(root: str | os.PathLike[str] | None, split: str) -> list[MonusegEntry]:
    """List the images of one split with their annotation files, sorted by name.

    Args:
        root: the data root (None: ``$MONUSEG_ROOT``).
        split: ``"train"`` or ``"test"``.

    Returns:
        One entry per image, sorted by name.

    Raises:
        MonusegError: unknown split; the split or its ``images`` folder is missing; the folder
            holds no images; two images share a name; an image has neither an XML nor a label map.
    """
    if split not in SPLITS:
        raise MonusegError(f"unknown MoNuSeg split {split!r}: expected one of {', '.join(SPLITS)}")
    split_dir = resolve_monuseg_root(root) / split
    if not split_dir.is_dir():
        raise MonusegError(f"{split_dir}: split folder not found")
    images_dir = split_dir / "images"
    if not images_dir.is_dir():
        raise MonusegError(f"{images_dir}: images folder not found")

    images: dict[str, Path] = {}
    for path in sorted(images_dir.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if path.stem in images:
            raise MonusegError(f"{path}: two images named {path.stem!r} (also {images[path.stem].name})")
        images[path.stem] = path
    if not images:
        raise MonusegError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")

    entries = []
    for name in sorted(images):
        annotation = split_dir / "annotations" / f"{name}.xml"
        label = _find_label(split_dir / "labels", name)
        if not annotation.is_file() and label is None:
            raise MonusegError(
                f"{images[name]}: no annotation (expected annotations/{name}.xml or labels/{name}.tif|.png)"
            )
        entries.append(
            MonusegEntry(
                name=name,
                image_path=images[name],
                annotation_path=annotation if annotation.is_file() else None,
                label_path=label,
            )
        )
    return entries


def _find_label(labels_dir: Path, name: str) -> Path | None:
    """Return the first existing ``labels/<name><suffix>``, or None."""
    for suffix in LABEL_SUFFIXES:
        candidate = labels_dir / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def load_monuseg_entry(entry: MonusegEntry, annotation_rule: str = "organisers") -> AnnotatedImage:
    """Read an entry's image and build its instance labels (XML preferred over a label map).

    Args:
        entry: from ``list_monuseg_split``.
        annotation_rule: how an XML is rasterised (``rasterize_polygons``'s ``rule``).

    Returns:
        The image (H, W, 3) uint8 with (H, W) int32 instance labels: from an XML, ids are the
        ``<Region>`` positions (gaps where a region has no pixel; 1..K with ``"centre"``); from a
        label map, consecutive ids.

    Raises:
        ImageReadError: the image or label map cannot be read (a ValueError naming the file).
        AnnotationError: the XML cannot be parsed (a ValueError naming the file).
        MonusegError: the entry has no annotation, or the label map is not a single-channel
            integer image of the image's size.
    """
    image = read_rgb_image(entry.image_path)
    shape = image.shape[:2]
    if entry.annotation_path is not None:
        labels = xml_to_instance_labels(entry.annotation_path, shape, rule=annotation_rule)
    elif entry.label_path is not None:
        labels = read_label_map(entry.label_path, shape)
    else:
        raise MonusegError(f"{entry.image_path}: no annotation file for this image")
    return AnnotatedImage(name=entry.name, image=image, instance_labels=labels)


def read_label_map(path: str | os.PathLike[str], shape: tuple[int, int]) -> np.ndarray:
    """Read an instance label image and renumber its ids to 1..K (0 stays background).

    Args:
        path: a single-channel integer TIFF or PNG.
        shape: the (height, width) it must have (that of its image).

    Returns:
        (H, W) int32 consecutive instance labels.

    Raises:
        ImageReadError: the file cannot be read.
        MonusegError: it is not single-channel, not integer, has negative values, or its size
            differs from ``shape``.
    """
    path = Path(path)
    labels = read_image_array(path)
    if labels.ndim == 3 and labels.shape[-1] == 1:
        labels = labels[..., 0]
    if labels.ndim != 2:
        raise MonusegError(f"{path}: label map must be single-channel (H, W), got shape {labels.shape}")
    if labels.dtype == np.bool_:
        raise MonusegError(f"{path}: label map is a binary mask, expected instance ids")
    if not np.issubdtype(labels.dtype, np.integer):
        raise MonusegError(f"{path}: label map must hold integer ids, got {labels.dtype}")
    if tuple(labels.shape) != tuple(shape):
        raise MonusegError(f"{path}: label map shape {labels.shape} differs from image shape {tuple(shape)}")
    if labels.size and labels.min() < 0:
        raise MonusegError(f"{path}: label map has negative ids")
    return relabel_consecutive(labels)


def load_monuseg_split(
    root: str | os.PathLike[str] | None, split: str, annotation_rule: str = "organisers"
) -> list[AnnotatedImage]:
    """Load every image of a split with its instance labels, sorted by name.

    Args:
        root: the data root (None: ``$MONUSEG_ROOT``).
        split: ``"train"`` or ``"test"``.
        annotation_rule: how XML annotations are rasterised (see ``load_monuseg_entry``).

    Returns:
        One ``AnnotatedImage`` per image.

    Raises:
        MonusegError, ImageReadError, AnnotationError: see ``list_monuseg_split`` and
            ``load_monuseg_entry``; each names the offending file.
    """
    entries = list_monuseg_split(root, split)
    images = [load_monuseg_entry(entry, annotation_rule) for entry in entries]
    logger.info(
        "MoNuSeg %s: %d images, %d nuclei",
        split,
        len(images),
        sum(int(np.count_nonzero(np.bincount(item.instance_labels.ravel())[1:])) for item in images),
    )
    return images
