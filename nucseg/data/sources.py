"""Where annotated images come from: the MoNuSeg folder, or the built-in synthetic H&E set.

A source has one job: ``load_split("train" | "test") -> list[AnnotatedImage]``. Validation is cut
from the training split by the DataModule, by whole images.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from nucseg.data.annotations import ANNOTATION_RULES
from nucseg.data.monuseg import load_monuseg_split, resolve_monuseg_root
from nucseg.data.synthetic import make_synthetic_set
from nucseg.data.types import AnnotatedImage

SPLITS = ("train", "test")


class ImageSource(Protocol):
    """Anything that yields the annotated images of a split."""

    def load_split(self, split: str) -> list[AnnotatedImage]: ...


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; expected one of {SPLITS}")


class MonusegSource:
    """MoNuSeg 2018 in its official layout (see :mod:`nucseg.data.monuseg`).

    Args:
        root: the folder holding ``train/`` and ``test/``; ``None`` reads ``$MONUSEG_ROOT``.
            Checked here, so a wrong root fails before any training starts.
        annotation_rule: how XML outlines become pixels: ``"organisers"`` (the official ground
            truth, MATLAB ``poly2mask``, first region wins) or ``"centre"`` (the earlier
            scikit-image fill, later region wins; for side-by-side scoring only). See
            :func:`nucseg.data.annotations.rasterize_polygons`.

    Raises:
        ValueError: unknown ``annotation_rule``.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, annotation_rule: str = "organisers") -> None:
        if annotation_rule not in ANNOTATION_RULES:
            raise ValueError(
                f"unknown data.annotation_rule '{annotation_rule}'; expected one of {', '.join(ANNOTATION_RULES)}"
            )
        self.root: Path = resolve_monuseg_root(root)
        self.annotation_rule = annotation_rule

    def load_split(self, split: str) -> list[AnnotatedImage]:
        _check_split(split)
        return load_monuseg_split(self.root, split, self.annotation_rule)


class SyntheticSource:
    """Synthetic H&E tiles (Beer–Lambert stains, touching elliptical nuclei), made on the fly.

    Train and test images come from disjoint seeds, so the test set is never seen in training.
    """

    def __init__(
        self, num_train_images: int = 12, num_test_images: int = 4, image_size: int = 256, seed: int = 0
    ) -> None:
        if num_train_images < 1 or num_test_images < 1:
            raise ValueError("SyntheticSource needs at least one training and one test image")
        self.num_images = {"train": num_train_images, "test": num_test_images}
        self.image_size = image_size
        self.seed = seed

    def load_split(self, split: str) -> list[AnnotatedImage]:
        _check_split(split)
        split_seed = self.seed * 2 + SPLITS.index(split)
        return make_synthetic_set(
            self.num_images[split], seed=split_seed, size=self.image_size, prefix=f"synthetic_{split}"
        )
