"""Your own annotated images as a data source: ``data=folder data.root=DIR``.

Layout::

    DIR/images/        the images: PNG, JPEG or TIFF (RGB, RGBA, grey; 8 or 16 bit)
    DIR/labels/        instance label maps (PNG/TIFF/NPY, 0 = background, one id per nucleus), or
    DIR/masks/         binary masks (PNG/TIFF/NPY, nonzero = nucleus; instances are the
                       4-connected components, so touching nuclei merge into one), or
    DIR/annotations/   QuPath GeoJSON exports (.geojson/.json) or Aperio ImageScope XML (.xml)
    DIR/splits.json    optional: {"train": [...], "validation": [...], "test": [...]} (image stems)

Exactly one of ``labels/``, ``masks/``, ``annotations/`` is used (``annotation_kind`` chooses
when several exist). An image pairs with the annotation file of the same stem (``a.png`` with
``a.tif``, ``a.geojson`` or ``a.xml``). GeoJSON is rasterised by
:mod:`nucseg.data.geojson_annotations` (pixel centre inside the polygon; QuPath's (0, 0) is the
corner of the first pixel), XML by :func:`nucseg.data.annotations.xml_to_instance_labels`.

Splits, first that applies: the ``splits`` argument (a config mapping), ``DIR/splits.json``, or
a split by whole image: ``test_fraction`` and ``validation_fraction`` of the images (at least one
each when the fraction is positive), drawn with ``seed`` from the sorted stems, so the split
does not depend on the file system's order. ``validation`` may be left out of a given split:
the DataModule then holds out ``num_val_images`` training images.

Nothing is skipped silently: files that are not images, images without annotation, annotations
without image, unknown names in the splits and unreadable files are all collected and reported
in one :class:`FolderSourceError`, one line per file. Pairing and splits are checked when the
source is built (before training starts); file contents when a split is loaded.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from skimage.measure import label as connected_components

from nucseg.data.annotations import AnnotationError, relabel_consecutive, xml_to_instance_labels
from nucseg.data.datamodule import NucleiDataModule
from nucseg.data.geojson_annotations import geojson_to_instance_labels
from nucseg.data.types import AnnotatedImage
from nucseg.io.images import IMAGE_SUFFIXES, ImageReadError, read_image_array, read_rgb_image

logger = logging.getLogger(__name__)

ANNOTATION_KINDS = ("labels", "masks", "annotations")
SPLIT_NAMES = ("train", "validation", "test")
LABEL_SUFFIXES = {".png", ".tif", ".tiff", ".npy"}
ANNOTATION_SUFFIXES = {".geojson", ".json", ".xml"}
IGNORED_PREFIXES = (".", "~$")  # hidden files, .DS_Store, Office lock files
# FolderSource arguments that FolderDataModule passes on (the rest go to NucleiDataModule).
SOURCE_OPTIONS = ("annotation_kind", "splits", "test_fraction", "validation_fraction", "object_types", "classes", "mpp")


class FolderSourceError(ValueError):
    """The folder cannot be used as it is; the message lists every problem, one per line."""

    def __init__(self, root: Path, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  {problem}" for problem in self.problems)
        super().__init__(f"{root}: {len(self.problems)} problem(s) in the annotated image folder:\n{lines}")


class FolderSource:
    """Annotated images in the folder layout of the module docstring.

    Args:
        root: the folder holding ``images/`` and one of ``labels/``, ``masks/``, ``annotations/``.
        annotation_kind: ``labels``, ``masks`` or ``annotations``; ``None`` picks the one present.
        splits: ``{"train": [...], "validation": [...], "test": [...]}`` of image stems; overrides
            ``splits.json``. ``validation`` is optional.
        test_fraction: share of images for the test when no split is given.
        validation_fraction: share of images for validation when no split is given (0: let
            the DataModule hold out ``num_val_images``).
        seed: seed of that split.
        object_types: GeoJSON only: keep these QuPath object types (``None``: all).
        classes: GeoJSON only: keep these QuPath classes (``None``: all).
        mpp: microns per pixel of the images, recorded with the run so that prediction and
            export know the resolution the model was trained at (``None``: unknown).

    Raises:
        FolderSourceError: the layout, the pairing or the splits are wrong (all problems listed).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        annotation_kind: str | None = None,
        splits: Mapping[str, Sequence[str]] | None = None,
        test_fraction: float = 0.2,
        validation_fraction: float = 0.15,
        seed: int = 0,
        object_types: Sequence[str] | None = None,
        classes: Sequence[str] | None = None,
        mpp: float | None = None,
    ) -> None:
        if root is None or str(root) in ("", "None"):
            raise ValueError("data.root is not set: point it at the folder with images/ (data=folder data.root=DIR)")
        self.root = Path(root).expanduser()
        self.object_types = list(object_types) if object_types is not None else None
        self.classes = list(classes) if classes is not None else None
        self.mpp = mpp
        problems: list[str] = []
        self.annotation_kind = self._resolve_kind(annotation_kind)
        images = self._index(self.root / "images", IMAGE_SUFFIXES, "image", problems)
        annotation_suffixes = ANNOTATION_SUFFIXES if self.annotation_kind == "annotations" else LABEL_SUFFIXES
        annotations = self._index(self.root / self.annotation_kind, annotation_suffixes, "annotation", problems)
        for stem in sorted(set(images) - set(annotations)):
            problems.append(f"{images[stem]}: no annotation {self.annotation_kind}/{stem}.*")
        for stem in sorted(set(annotations) - set(images)):
            problems.append(f"{annotations[stem]}: no image images/{stem}.*")
        self.pairs = {stem: (images[stem], annotations[stem]) for stem in sorted(set(images) & set(annotations))}
        if not self.pairs and not problems:
            problems.append(f"{self.root / 'images'}: no annotated images")
        self.splits = self._resolve_splits(splits, test_fraction, validation_fraction, seed, problems)
        if problems:
            raise FolderSourceError(self.root, problems)

    # -- layout --------------------------------------------------------------------------------
    def _resolve_kind(self, kind: str | None) -> str:
        if not (self.root / "images").is_dir():
            raise FolderSourceError(self.root, [f"{self.root / 'images'}: no such folder (expected DIR/images/)"])
        present = [name for name in ANNOTATION_KINDS if (self.root / name).is_dir()]
        if kind is not None:
            if kind not in ANNOTATION_KINDS:
                raise ValueError(f"annotation_kind must be one of {ANNOTATION_KINDS}, got '{kind}'")
            if kind not in present:
                raise FolderSourceError(self.root, [f"{self.root / kind}: no such folder (annotation_kind={kind})"])
            return kind
        if not present:
            raise FolderSourceError(
                self.root, [f"{self.root}: no labels/, masks/ or annotations/ folder next to images/"]
            )
        if len(present) > 1:
            raise FolderSourceError(
                self.root,
                [f"{self.root}: both {' and '.join(present)} exist; choose one with data.annotation_kind=labels|masks|annotations"],
            )
        return present[0]

    @staticmethod
    def _index(folder: Path, suffixes: set[str], what: str, problems: list[str]) -> dict[str, Path]:
        """Files of ``folder`` by stem; other files and duplicate stems are problems."""
        found: dict[str, Path] = {}
        for path in sorted(folder.iterdir()):
            if path.name.startswith(IGNORED_PREFIXES) or path.is_dir():
                continue
            if path.suffix.lower() not in suffixes:
                kinds = ", ".join(sorted(suffixes))
                problems.append(f"{path}: not a supported {what} file (expected {kinds})")
                continue
            if path.stem in found:
                problems.append(f"{path}: same name as {found[path.stem].name}; keep one {what} per stem")
                continue
            found[path.stem] = path
        return found

    # -- splits --------------------------------------------------------------------------------
    def _resolve_splits(
        self,
        splits: Mapping[str, Sequence[str]] | None,
        test_fraction: float,
        validation_fraction: float,
        seed: int,
        problems: list[str],
    ) -> dict[str, list[str]]:
        origin = "data.splits"
        if splits is None and (self.root / "splits.json").is_file():
            origin = str(self.root / "splits.json")
            try:
                splits = json.loads((self.root / "splits.json").read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                problems.append(f"{origin}: not readable JSON ({error})")
                return {}
        if splits is None:
            return self._split_by_fraction(test_fraction, validation_fraction, seed, problems)
        if not isinstance(splits, Mapping):
            problems.append(f"{origin}: expected a mapping of split name to image names")
            return {}
        unknown_splits = sorted(set(splits) - set(SPLIT_NAMES))
        if unknown_splits:
            problems.append(f"{origin}: unknown split(s) {unknown_splits}; use {list(SPLIT_NAMES)}")
        result: dict[str, list[str]] = {}
        owner: dict[str, str] = {}
        for split in SPLIT_NAMES:
            names = [Path(str(name)).stem if Path(str(name)).suffix.lower() in IMAGE_SUFFIXES else str(name)
                     for name in (splits.get(split) or [])]
            for name in names:
                if name not in self.pairs:
                    problems.append(f"{origin}: '{name}' in {split} is not an annotated image of {self.root}")
                elif name in owner:
                    problems.append(f"{origin}: '{name}' is in both {owner[name]} and {split}")
                owner.setdefault(name, split)
            result[split] = [name for name in names if name in self.pairs]
        for split in ("train", "test"):
            if not splits.get(split):
                problems.append(f"{origin}: the {split} split is empty")
        unused = sorted(set(self.pairs) - set(owner))
        if unused:
            logger.warning("%s: %d annotated image(s) in no split, not used: %s", origin, len(unused), ", ".join(unused))
        return result

    def _split_by_fraction(
        self, test_fraction: float, validation_fraction: float, seed: int, problems: list[str]
    ) -> dict[str, list[str]]:
        if not (0 < test_fraction < 1 and 0 <= validation_fraction < 1 and test_fraction + validation_fraction < 1):
            problems.append(
                f"test_fraction={test_fraction}, validation_fraction={validation_fraction}: need 0 < test, "
                "0 <= validation, and test + validation < 1"
            )
            return {}
        names = sorted(self.pairs)
        num_test = max(1, round(test_fraction * len(names)))
        num_val = max(1, round(validation_fraction * len(names))) if validation_fraction > 0 else 0
        if num_test + num_val >= len(names):
            problems.append(
                f"{self.root}: {len(names)} image(s) are too few for a test ({num_test}), validation ({num_val}) "
                "and training split; add images or give splits.json"
            )
            return {}
        order = np.random.default_rng(seed).permutation(len(names))
        shuffled = [names[i] for i in order]
        return {
            "test": sorted(shuffled[:num_test]),
            "validation": sorted(shuffled[num_test : num_test + num_val]),
            "train": sorted(shuffled[num_test + num_val :]),
        }

    def validation_names(self) -> list[str] | None:
        """The images held out for validation, or ``None`` to let the DataModule choose them."""
        return list(self.splits.get("validation") or []) or None

    # -- loading -------------------------------------------------------------------------------
    def load_split(self, split: str) -> list[AnnotatedImage]:
        """The annotated images of ``train`` (validation images included), ``validation`` or ``test``.

        Raises:
            ValueError: unknown split name.
            FolderSourceError: some files cannot be read (all of them listed).
        """
        if split not in ("train", "validation", "test"):
            raise ValueError(f"unknown split '{split}'; expected one of {SPLIT_NAMES}")
        names = list(self.splits.get(split, []))
        if split == "train":
            names += self.splits.get("validation", [])
        images: list[AnnotatedImage] = []
        problems: list[str] = []
        for name in sorted(names):
            try:
                images.append(self.load_image(name))
            except (ImageReadError, AnnotationError, ValueError) as error:
                problems.append(str(error))
        if problems:
            raise FolderSourceError(self.root, problems)
        return images

    def load_image(self, name: str) -> AnnotatedImage:
        """One image and its instances.

        Raises:
            ImageReadError, AnnotationError, ValueError: naming the file that cannot be used.
        """
        image_path, annotation_path = self.pairs[name]
        image = read_rgb_image(image_path)
        shape = image.shape[:2]
        if self.annotation_kind == "annotations":
            if annotation_path.suffix.lower() == ".xml":
                labels = xml_to_instance_labels(annotation_path, shape)
            else:
                labels = geojson_to_instance_labels(annotation_path, shape, self.object_types, self.classes)
        else:
            labels = self._read_label_map(annotation_path, binary=self.annotation_kind == "masks")
        if labels.shape != shape:
            raise AnnotationError(
                f"{annotation_path}: size {labels.shape[1]}x{labels.shape[0]} does not match its image "
                f"{image_path.name} ({shape[1]}x{shape[0]})"
            )
        return AnnotatedImage(name=name, image=image, instance_labels=labels)

    @staticmethod
    def _read_label_map(path: Path, binary: bool) -> np.ndarray:
        """Instance ids (labels/) or connected components of a binary mask (masks/)."""
        if path.suffix.lower() == ".npy":
            try:
                array = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as error:
                raise AnnotationError(f"{path}: cannot read NumPy array ({error})") from error
        else:
            array = np.asarray(read_image_array(path))
        if binary and array.ndim == 3:
            array = array[..., :3].any(axis=-1) if array.shape[-1] in (3, 4) else array
        if array.ndim != 2:
            raise AnnotationError(f"{path}: expected a single-channel (H, W) map, got shape {array.shape}")
        if binary:
            return connected_components(array != 0, connectivity=1).astype(np.int32)
        if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
            raise AnnotationError(f"{path}: instance labels must be integers, got {array.dtype}")
        if array.size and array.min() < 0:
            raise AnnotationError(f"{path}: instance labels must be non-negative")
        return relabel_consecutive(array.astype(np.int64))


class FolderDataModule(NucleiDataModule):
    """:class:`NucleiDataModule` over a :class:`FolderSource`; the folder is checked at once.

    Args:
        root: the annotated image folder (module docstring).
        split_seed: seed of the split by fraction (the source's ``seed``) and of the
            ``num_val_images`` hold-out.
        **kwargs: the :class:`FolderSource` options of :data:`SOURCE_OPTIONS` (``annotation_kind``,
            ``splits``, ``test_fraction``, ``validation_fraction``, ``object_types``, ``classes``,
            ``mpp``; their defaults are the source's), and the other :class:`NucleiDataModule` options.
    """

    def __init__(self, root: str | os.PathLike[str], split_seed: int = 0, **kwargs: Any) -> None:
        options = {name: kwargs.pop(name) for name in SOURCE_OPTIONS if name in kwargs}
        splits = options.get("splits")
        if isinstance(splits, Mapping):  # a config mapping: plain names
            options["splits"] = {str(key): [str(name) for name in (value or [])] for key, value in splits.items()}
        source = FolderSource(root, seed=split_seed, **options)
        super().__init__(source=source, split_seed=split_seed, **kwargs)
