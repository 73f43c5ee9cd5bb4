"""The one in-memory form every data source produces."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class AnnotatedImage:
    """An H&E image with its nucleus instances.

    Attributes:
        name: a stable identifier (file stem for MoNuSeg), used for splits, caches and reports.
        image: (H, W, 3) uint8 RGB.
        instance_labels: (H, W) int32; 0 is background, each nucleus has its own positive id.
    """

    name: str
    image: np.ndarray
    instance_labels: np.ndarray

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[-1] != 3 or self.image.dtype != np.uint8:
            raise ValueError(f"{self.name}: image must be (H, W, 3) uint8, got {self.image.shape} {self.image.dtype}")
        if self.instance_labels.shape != self.image.shape[:2]:
            raise ValueError(
                f"{self.name}: labels {self.instance_labels.shape} do not match image {self.image.shape[:2]}"
            )

    @property
    def mask(self) -> np.ndarray:
        """Binary foreground mask (H, W) uint8 in {0, 1}."""
        return (self.instance_labels > 0).astype(np.uint8)
