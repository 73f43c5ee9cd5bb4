"""Pixel metrics from torchmetrics, pooled the way the field reports them.

``build_pixel_metrics`` returns one :class:`~torchmetrics.MetricCollection` (Dice = binary F1,
IoU = binary Jaccard, accuracy, precision, recall) that accumulates true/false positive counts
over every pixel it sees: computed at epoch end it is the *pooled* value over all pixels of all
images, not a mean of per-batch values. :class:`PerImageMetrics` gives the other convention,
the mean over images of each image's own value. :mod:`nucseg.metrics.instance` scores nuclei
(AJI, AJI+, PQ, object F1 and Dice); :mod:`nucseg.metrics.intervals` gives bootstrap and seed
intervals and paired comparisons.
"""

from __future__ import annotations

import torch
from torchmetrics import MeanMetric, MetricCollection, SumMetric
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryF1Score,
    BinaryJaccardIndex,
    BinaryPrecision,
    BinaryRecall,
)
from torchmetrics.functional.classification import binary_accuracy, binary_f1_score, binary_jaccard_index

from nucseg.metrics.instance import InstanceMetrics, aggregate_instance_metrics, instance_metrics

__all__ = [
    "InstanceMetrics",
    "PerImageMetrics",
    "aggregate_instance_metrics",
    "build_pixel_metrics",
    "instance_metrics",
]


def build_pixel_metrics(threshold: float = 0.5) -> MetricCollection:
    """Pooled pixel metrics; update with probabilities (not logits) and {0, 1} targets."""
    return MetricCollection(
        {
            "dice": BinaryF1Score(threshold=threshold),
            "iou": BinaryJaccardIndex(threshold=threshold),
            "accuracy": BinaryAccuracy(threshold=threshold),
            "precision": BinaryPrecision(threshold=threshold),
            "recall": BinaryRecall(threshold=threshold),
        }
    )


class PerImageMetrics(torch.nn.Module):
    """Mean over images of per-image Dice, IoU and accuracy (each image weighs the same)."""

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = threshold
        self.means = torch.nn.ModuleDict({name: MeanMetric() for name in ("dice", "iou", "accuracy")})
        # Images actually scored: fewer than the split when a run limits its test batches.
        self.num_images = SumMetric()

    def update(self, probabilities: torch.Tensor, target: torch.Tensor) -> None:
        """Add each image of the batch (B, 1, H, W) on its own."""
        for image_probabilities, image_target in zip(probabilities, target, strict=True):
            target_int = image_target.int()
            values = {
                "dice": binary_f1_score(image_probabilities, target_int, threshold=self.threshold),
                "iou": binary_jaccard_index(image_probabilities, target_int, threshold=self.threshold),
                "accuracy": binary_accuracy(image_probabilities, target_int, threshold=self.threshold),
            }
            for name, value in values.items():
                self.means[name].update(value)
            self.num_images.update(1.0)

    def compute(self) -> dict[str, torch.Tensor]:
        results = {f"{name}_per_image": metric.compute() for name, metric in self.means.items()}
        return {**results, "num_images": self.num_images.compute()}

    def reset(self) -> None:
        for metric in self.means.values():
            metric.reset()
        self.num_images.reset()
