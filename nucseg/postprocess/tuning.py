"""Choose post-processing parameters by mean AJI on validation images (never the test set).

``tune_postprocess`` scores every combination of a small grid on probabilities computed once;
``tune_on_validation`` computes those probabilities with a module's own sliding-window
prediction over a data module's validation images and tunes on them. The training pipeline runs
it between fit and test and hands the chosen parameters to the module before testing.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from nucseg.postprocess.watershed import postprocess

log = logging.getLogger(__name__)

# A few values each: 3 x 3 x 2 x 2 = 36 post-processings per image for the contour target. The
# minimum size matters for counts and AJI alike: fragments a watershed leaves count as nuclei.
DEFAULT_GRIDS: dict[str, dict[str, list[Any]]] = {
    "binary": {"threshold": [0.4, 0.5, 0.6], "min_size": [0, 10, 30]},
    "contour": {
        "threshold": [0.4, 0.5, 0.6],
        "marker_threshold": [0.4, 0.5, 0.7],
        "marker_erosion_px": [0, 2],
        "min_size": [10, 30],
    },
    "distance": {"threshold": [0.4, 0.5, 0.6], "h": [0.1, 0.2, 0.4], "min_size": [10, 30]},
    "hv": {"threshold": [0.4, 0.5, 0.6], "edge_threshold": [0.05, 0.1, 0.2]},
}


def instance_scores(true_labels: np.ndarray, pred_labels: np.ndarray) -> dict[str, float]:
    """Instance metrics of one image (AJI, AJI+, PQ, DQ, SQ, ...), from :mod:`nucseg.metrics.instance`."""
    from nucseg.metrics.instance import instance_metrics

    return instance_metrics(true_labels, pred_labels)


def aggregate_scores(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Data-set values (pooled, and ``*_per_image`` means) of per-image :func:`instance_scores`."""
    from nucseg.metrics.instance import aggregate_instance_metrics

    return aggregate_instance_metrics(list(records))


def _grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    names = list(grid)
    for name in names:
        if isinstance(grid[name], str | bytes) or not isinstance(grid[name], Sequence) or not grid[name]:
            raise ValueError(f"tune_postprocess: grid['{name}'] must be a non-empty list of values, got {grid[name]!r}")
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(grid[name] for name in names))]


def tune_postprocess(
    probabilities_per_image: Sequence[np.ndarray],
    labels_per_image: Sequence[np.ndarray],
    grid: Mapping[str, Sequence[Any]] | None = None,
    target: str = "binary",
    base_params: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The grid point of highest mean AJI over the images, and the whole table.

    Args:
        probabilities_per_image: (C, H, W) probabilities of each validation image.
        labels_per_image: (H, W) ground-truth instance labels of each image, in the same order.
        grid: parameter name → values to try (``None``: :data:`DEFAULT_GRIDS` of the target).
        target: ``binary``, ``contour``, ``distance`` or ``hv``.
        base_params: parameters fixed for every grid point (the grid's values replace them).

    Returns:
        ``(best_params, table)``: ``best_params`` is ``base_params`` updated with the best grid
        point (ties: the first in grid order); ``table`` has one row per grid point, its
        parameters plus ``aji`` (mean over images) and ``pq`` (mean over images).

    Raises:
        ValueError: no images, lists of different lengths, or an empty grid entry.
    """
    if not probabilities_per_image or len(probabilities_per_image) != len(labels_per_image):
        raise ValueError(
            f"tune_postprocess: needs as many label maps as probability maps (>0), got "
            f"{len(probabilities_per_image)} and {len(labels_per_image)}"
        )
    points = _grid_points(grid if grid is not None else DEFAULT_GRIDS[target])
    base = dict(base_params or {})
    table: list[dict[str, Any]] = []
    for point in points:
        params = {**base, **point}
        scores = [
            instance_scores(labels, postprocess(probabilities, target, **params))
            for probabilities, labels in zip(probabilities_per_image, labels_per_image, strict=True)
        ]
        table.append(
            {
                **point,
                "aji": float(np.mean([score["aji"] for score in scores])),
                "pq": float(np.mean([score["pq"] for score in scores])),
            }
        )
    best = max(range(len(table)), key=lambda index: (table[index]["aji"], -index))
    best_params = {**base, **points[best]}
    log.info("post-processing tuned on %d images: %s (mean AJI %.4f)", len(labels_per_image), best_params, table[best]["aji"])
    return best_params, table


@torch.no_grad()
def validation_probabilities(module: Any, datamodule: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Sliding-window probabilities and instance labels of the data module's validation images.

    Uses ``module.predict_logits`` (the module's inference settings) and
    ``module.probabilities``; images go through the data module's prepared (stain-normalised)
    validation set, so what is tuned is what the test will see.
    """
    if not datamodule.val_images:
        datamodule.setup("fit")
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    probabilities_per_image, labels_per_image = [], []
    try:
        for image in datamodule.val_images:
            pixels = torch.from_numpy(np.ascontiguousarray(image.image.transpose(2, 0, 1)))[None].to(device)
            logits = module.predict_logits(pixels.float().div_(255.0))
            probabilities_per_image.append(module.probabilities(logits)[0].float().cpu().numpy())
            labels_per_image.append(np.asarray(image.instance_labels))
    finally:
        module.train(was_training)
    return probabilities_per_image, labels_per_image


def tune_on_validation(
    module: Any, datamodule: Any, grid: Mapping[str, Sequence[Any]] | None = None, apply: bool = True
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Tune the module's post-processing on the validation images; set it on the module if ``apply``.

    Args:
        module: a :class:`~nucseg.module.SegmentationModule` (its ``target`` and
            ``postprocess_params`` are the starting point).
        datamodule: a :class:`~nucseg.data.datamodule.NucleiDataModule` (its validation split).
        grid: values to try (``None``: :data:`DEFAULT_GRIDS` of the module's target).
        apply: store the best parameters in ``module.postprocess_params``.

    Returns:
        ``(best_params, table)`` as :func:`tune_postprocess`.
    """
    probabilities_per_image, labels_per_image = validation_probabilities(module, datamodule)
    best, table = tune_postprocess(
        probabilities_per_image, labels_per_image, grid, target=module.target, base_params=module.postprocess_params
    )
    if apply:
        module.postprocess_params = best
    return best, table
