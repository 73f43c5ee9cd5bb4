"""Example segmentations: input | ground truth | each model's prediction on fixed test crops.

The figure part works on plain arrays so it can be tested and reused without models. The part
that makes the crops loads each run's checkpoint with :func:`nucseg.checkpoint.load_model` and
its test images with the stain reference stored in that checkpoint; a run whose model or data
cannot be loaded loses its column with a warning instead of stopping the comparison.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nucseg.compare.collect import RunRecord

log = logging.getLogger(__name__)

# Outline colours (RGB): green for the annotation, yellow for predictions, both visible on
# haematoxylin-purple and eosin-pink tissue.
TRUTH_COLOUR = (0, 200, 0)
PREDICTION_COLOUR = (255, 230, 0)


@dataclass
class ExampleCrop:
    """One row of the examples figure.

    Attributes:
        name: the test image the crop comes from, with its position.
        image: (H, W, 3) uint8 RGB, as the models saw it (stain normalised).
        truth: (H, W) instance labels or binary mask; outlines follow instance borders.
        predictions: column title -> (H, W) predicted mask (binary or instance labels).
        source: name of the whole test image the crop was cut from ("" for synthetic arrays).
        origin: (y, x) of the crop's top-left corner in the source image.
    """

    name: str
    image: np.ndarray
    truth: np.ndarray
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""
    origin: tuple[int, int] = (0, 0)


def outline(labels: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Boolean (H, W) border of every labelled region: pixels whose 4-neighbour differs.

    Works for instance labels (touching nuclei keep a border between them) and for binary masks.
    """
    labels = np.asarray(labels)
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge &= labels > 0
    for _ in range(max(thickness, 1) - 1):
        grown = edge.copy()
        grown[1:, :] |= edge[:-1, :]
        grown[:-1, :] |= edge[1:, :]
        grown[:, 1:] |= edge[:, :-1]
        grown[:, :-1] |= edge[:, 1:]
        edge = grown
    return edge


def overlay_outline(
    image: np.ndarray, labels: np.ndarray, colour: tuple[int, int, int], thickness: int = 1
) -> np.ndarray:
    """A copy of ``image`` with the outlines of ``labels`` painted in ``colour``."""
    painted = np.array(image, dtype=np.uint8, copy=True)
    painted[outline(labels, thickness)] = colour
    return painted


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Pixel Dice of two masks (any positive value is foreground); 1.0 when both are empty."""
    pred, true = np.asarray(prediction) > 0, np.asarray(truth) > 0
    total = int(pred.sum() + true.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & true).sum()) / total


def plot_examples(
    crops: Sequence[ExampleCrop], path: str | Path, columns: Sequence[str] | None = None
) -> Path:
    """Draw one row per crop: input | ground truth | one column per model, outlines on the image.

    Args:
        crops: the rows; every crop should have a prediction for each column.
        path: the PNG to write (atomically).
        columns: prediction columns in order; default the keys of the first crop. A crop
            without a column gets an empty panel saying so.

    Raises:
        ValueError: ``crops`` is empty.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nucseg.utils.atomic import atomic_path

    if not crops:
        raise ValueError(f"{path}: no crops to draw")
    names = list(columns) if columns is not None else list(crops[0].predictions)
    # About 2 px on a 256 px crop: visible at print size without hiding small nuclei.
    thickness = max(1, round(max(crops[0].image.shape[:2]) / 128))
    n_cols = 2 + len(names)
    figure, axes = plt.subplots(len(crops), n_cols, figsize=(2.8 * n_cols, 2.9 * len(crops)), squeeze=False)
    for row, crop in enumerate(crops):
        truth = overlay_outline(crop.image, crop.truth, TRUTH_COLOUR, thickness)
        panels = [(crop.image, "input"), (truth, "ground truth")]
        for name in names:
            prediction = crop.predictions.get(name)
            wrapped = textwrap.fill(name, width=34)  # a row label with config keys fits its column
            if prediction is None:
                panels.append((None, f"{wrapped}\n(no prediction)"))
            else:
                title = f"{wrapped}\nDice {dice(prediction, crop.truth):.3f}"
                panels.append((overlay_outline(crop.image, prediction, PREDICTION_COLOUR, thickness), title))
        for col, (picture, title) in enumerate(panels):
            axis = axes[row, col]
            if picture is not None:
                axis.imshow(picture, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(title, fontsize=9)
        axes[row, 0].set_ylabel(crop.name, fontsize=8)
    figure.suptitle("green: annotated nuclei, yellow: predicted nuclei", fontsize=10)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    plt.close(figure)
    return Path(path)


def choose_crop(labels: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` window, on a fixed 3×3 grid, that holds the most nuclei.

    Deterministic (depends only on the annotation), and it avoids showing empty background.
    """
    height, width = labels.shape
    ys = np.linspace(0, max(height - size, 0), 3).round().astype(int)
    xs = np.linspace(0, max(width - size, 0), 3).round().astype(int)
    best, best_count = (int(ys[1]), int(xs[1])), -1
    for y in ys:
        for x in xs:
            window = labels[y : y + size, x : x + size]
            count = len(np.unique(window[window > 0]))
            if count > best_count:
                best, best_count = (int(y), int(x)), count
    return best


# Hooks for the project APIs; tests replace them with fakes.
ModelLoader = Callable[[Path], Any]
ImageLoader = Callable[[RunRecord, Any], Sequence[Any]]
Predictor = Callable[[Any, np.ndarray], np.ndarray]


def crops_from_runs(
    runs_by_label: Mapping[str, RunRecord],
    crop_size: int = 256,
    num_images: int = 3,
    load_model: ModelLoader | None = None,
    load_test_images: ImageLoader | None = None,
    predict: Predictor | None = None,
) -> list[ExampleCrop]:
    """Predict fixed test crops with one run per column.

    Each run's model predicts the whole test image (the context it was evaluated with) and the
    crop is cut afterwards. Test images are loaded with each run's own data config and stain
    reference, once per distinct pair, and the crops are the same image names and positions for
    every column.

    Args:
        runs_by_label: column title -> a finished run.
        crop_size: side of the square crops in pixels.
        num_images: how many test images (first by name) give a crop each.
        load_model: run dir -> loaded model; default :func:`nucseg.checkpoint.load_model`
            (a :class:`~nucseg.checkpoint.TrainedModel`, moved to the GPU when there is one).
        load_test_images: (run, its model) -> list of ``AnnotatedImage``; default the run's data
            config with the model's fitted stain normaliser (the training split is not read).
        predict: (model, HxWx3 uint8 image) -> HxW mask; default sliding-window inference.

    Returns:
        The crops with a prediction per column that worked; empty when no run could be used.
    """
    load_model = load_model or _default_load_model
    load_test_images = load_test_images or _default_test_images
    predict = predict or _default_predict

    crops: list[ExampleCrop] | None = None
    # Test images per distinct (data config, stain reference); a pair that failed once is not loaded again.
    images_cache: dict[str, dict[str, Any] | Exception] = {}
    for label, run in runs_by_label.items():
        try:
            model = load_model(run.path)
            cache_key = _data_key(run, model)
            if cache_key not in images_cache:
                try:
                    images_cache[cache_key] = {image.name: image for image in load_test_images(run, model)}
                except Exception as exc:
                    images_cache[cache_key] = exc
            images = images_cache[cache_key]
            if isinstance(images, Exception):
                raise images
            if crops is None:
                crops = _make_crops(images, crop_size, num_images)
            for crop in crops:
                if crop.source not in images:
                    raise KeyError(f"test image {crop.source!r} not in this run's test set")
                y, x = crop.origin
                mask = np.asarray(predict(model, images[crop.source].image))
                crop.predictions[label] = mask[y : y + crop.image.shape[0], x : x + crop.image.shape[1]]
        except Exception as exc:  # one broken run must not cost the other columns
            reason = (str(exc).strip().splitlines() or [""])[0]
            log.warning("%s: left out of examples.png (%s: %s)", run.path, type(exc).__name__, reason)
            for crop in crops or []:
                crop.predictions.pop(label, None)
    return [crop for crop in crops or [] if crop.predictions]


def _make_crops(images: Mapping[str, Any], size: int, num_images: int) -> list[ExampleCrop]:
    """The fixed crops: the first ``num_images`` test images by name, each at :func:`choose_crop`."""
    crops = []
    for name in sorted(images)[:num_images]:
        image = images[name]
        y, x = choose_crop(image.instance_labels, size)
        crops.append(
            ExampleCrop(
                name=f"{name} @ {y},{x}",
                image=image.image[y : y + size, x : x + size],
                truth=image.instance_labels[y : y + size, x : x + size],
                source=name,
                origin=(y, x),
            )
        )
    if not crops:
        raise ValueError("the test set is empty")
    return crops


def _data_key(run: RunRecord, model: Any) -> str:
    """Identifies the run's data config and stain reference, so runs of one sweep load the data once."""
    import json

    normalizer = model.stain_normalizer
    stain = normalizer.fingerprint() if normalizer is not None and hasattr(normalizer, "fingerprint") else None
    return json.dumps([_data_config(run, model), stain], sort_keys=True, default=str)


def _data_config(run: RunRecord, model: Any) -> Any:
    """The run's resolved data config: the checkpoint's, else metrics.json's, else the Hydra config.

    Resolved copies come first because ``.hydra/config.yaml`` may contain interpolations that
    only resolve inside the Hydra app (the last one keeps its root for ``${paths...}``).
    """
    for resolved in (model.run_config, (run.metrics or {}).get("config")):
        if isinstance(resolved, Mapping) and resolved.get("data"):
            return resolved["data"]
    if "data" in run.config:
        return run.config["data"]
    raise ValueError("no data config in the checkpoint, metrics.json or .hydra/config.yaml")


def _default_test_images(run: RunRecord, model: Any) -> Sequence[Any]:
    """The run's test images, normalised with the stain reference stored in its checkpoint."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    data = _data_config(run, model)
    data_cfg = OmegaConf.create(run.config).data if data is run.config.get("data") else OmegaConf.create(data)
    if "_target_" not in data_cfg:
        raise ValueError("the data config has no _target_ to instantiate")
    datamodule = instantiate(data_cfg)
    if model.stain_normalizer is not None:
        datamodule.stain_normalizer = model.stain_normalizer  # fitted: setup does not read the training split
    datamodule.setup("test")
    return list(datamodule.test_images)


def _default_load_model(run_dir: Path) -> Any:
    """Load the run's best checkpoint with :func:`nucseg.checkpoint.load_model`, on the GPU if any."""
    import torch

    from nucseg.checkpoint import load_model

    return load_model(run_dir, map_location="cuda" if torch.cuda.is_available() else "cpu")


def _default_predict(model: Any, image: np.ndarray) -> np.ndarray:
    """Sliding-window logits of the whole image with the run's inference settings, > 0."""
    import torch

    from nucseg.inference import sliding_window_predict

    device = next(model.module.parameters()).device
    batch = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().div(255.0).to(device)
    with torch.inference_mode():
        logits = sliding_window_predict(batch, model.module, **model.inference.kwargs())
    return (logits[0, 0] > 0).cpu().numpy().astype(np.uint8)
