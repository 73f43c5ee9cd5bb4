"""What a run directory's ``metrics.json`` and ``status.json`` hold, in one place.

Writers (:mod:`nucseg.pipeline`, :mod:`nucseg.evaluation`) and readers (:mod:`nucseg.compare`,
the TensorBoard layout, a Hydra sweeper through :func:`optimized_metric`) take the file names,
the keys, the metric names and the hyperparameter flattening from here, so that a key renamed
on one side cannot silently go missing on the other.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypedDict

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
STATUS_FILE = "status.json"

RUNNING = "running"
FINISHED = "finished"
FAILED = "failed"

#: Pixel metrics logged per epoch as ``<split>/<name>`` (``train``, ``val``, ``test``), with titles.
METRIC_TITLES: dict[str, str] = {"loss": "Loss", "dice": "Dice", "iou": "IoU", "accuracy": "Accuracy"}
#: Splits whose epoch metrics make training curves.
CURVE_SPLITS: tuple[str, ...] = ("train", "val")

#: Keys of the ``test`` block that are pixel metrics; any other numeric key there except loss
#: terms (``loss_<term>``) is an instance metric (AJI, PQ, object F1, ...).
PIXEL_TEST_KEYS: tuple[str, ...] = (
    "loss",
    "dice",
    "iou",
    "accuracy",
    "precision",
    "recall",
    "dice_per_image",
    "iou_per_image",
    "accuracy_per_image",
    "num_images",
)
#: Top-level costs of a training run that a comparison reports.
RUN_COST_KEYS: tuple[str, ...] = ("params", "train_time_s", "train_patches_per_s", "epochs")

#: Config groups that become TensorBoard hyperparameters.
HPARAM_GROUPS: tuple[str, ...] = ("model", "loss", "optimizer", "scheduler", "data", "module", "trainer", "seed")


class RunStatus(TypedDict):
    """``status.json``: the run's state, rewritten atomically at each change."""

    status: str  # RUNNING, FINISHED or FAILED
    error: str | None  # "<ExceptionType>: <message>" of a failed run
    updated: str  # ISO 8601 time, UTC


class ValidationSummary(TypedDict):
    """``metrics.json["validation"]``: the metric that chose the checkpoint and its best value."""

    metric: str  # a ``val/...`` tag
    best: float | None  # None when no finite value was recorded


class RunMetrics(TypedDict, total=False):
    """``metrics.json`` of a training run (:data:`TRAINING_KEYS`) or an evaluation (:data:`EVALUATION_KEYS`)."""

    model: str
    run_name: str
    status: str
    seed: int | None
    split: str  # evaluation only: "test" or "val"
    protocol: Any
    validation: ValidationSummary  # training only
    postprocess: dict[str, Any] | None
    test: dict[str, Any]  # Lightning's test results without "test/", num_images as int, per_image records
    test_summary: dict[str, Any]  # nucseg.results.summarise_subsets of the per-image records
    params: int
    train_time_s: float
    train_patches_per_s: float
    train_patches: int
    epochs: int
    steps: int
    precision: dict[str, Any]
    channels_last: dict[str, Any]
    progress: dict[str, Any] | None
    best_ckpt: str | None
    stain: dict[str, Any]
    data_preparation_s: dict[str, float]
    data_check: dict[str, Any] | None
    evaluated_checkpoint: str  # evaluation only
    evaluation_overrides: list[str]  # evaluation only
    config: dict[str, Any]  # the resolved run config


#: Keys of a training run's metrics.json, in the order they are written.
TRAINING_KEYS: tuple[str, ...] = (
    "model", "run_name", "status", "seed", "protocol", "validation", "postprocess", "test", "test_summary",
    "params", "train_time_s", "train_patches_per_s", "train_patches", "epochs", "steps", "precision",
    "channels_last", "progress", "best_ckpt", "stain", "data_preparation_s", "data_check", "config",
)  # fmt: skip
#: Keys of an evaluation's metrics.json, in the order they are written.
EVALUATION_KEYS: tuple[str, ...] = (
    "model", "run_name", "status", "seed", "split", "protocol", "postprocess", "test", "test_summary",
    "params", "evaluated_checkpoint", "evaluation_overrides", "config",
)  # fmt: skip


def status_record(status: str, error: str | None = None) -> RunStatus:
    """The ``status.json`` content for ``status`` now."""
    return {"status": status, "error": error, "updated": datetime.now(timezone.utc).isoformat()}


def write_status(run_dir: Path, status: str, error: str | None = None) -> None:
    """Record the run's state atomically (``running`` / ``finished`` / ``failed``)."""
    from nucseg.utils.atomic import atomic_write_json

    atomic_write_json(Path(run_dir) / STATUS_FILE, status_record(status, error))


def collect_test_results(results: Iterable[Mapping[str, float]]) -> dict[str, float | None]:
    """Merge Lightning's test results; a non-finite value (a diverged run) becomes ``None``,
    so that ``metrics.json`` stays valid JSON and the run is still recorded."""
    merged: dict[str, float | None] = {}
    for result in results:
        for key, value in result.items():
            number = float(value)
            merged[key.removeprefix("test/")] = number if math.isfinite(number) else None
    if any(value is None for value in merged.values()):
        log.warning("non-finite test metrics recorded as null: %s", [k for k, v in merged.items() if v is None])
    return merged


def with_image_count(results: Mapping[str, float | None]) -> dict[str, Any]:
    """Test results with ``num_images`` (logged by the module as a float) as an int.

    The count is what the test actually scored, so no split size stands in for it."""
    scored = results.get("num_images")
    return {**results, "num_images": int(scored)} if scored is not None else dict(results)


def make_test_block(results: Mapping[str, float | None], per_image: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``metrics.json["test"]``: the merged test results and the per-image records."""
    return {**with_image_count(results), "per_image": list(per_image)}


def hparams(resolved_config: Mapping[str, Any]) -> dict[str, Any]:
    """Flat, scalar-only hyperparameters of :data:`HPARAM_GROUPS` (the HParams tab cannot show lists or None).

    Keys are ``/``-joined paths (``optimizer/lr``); keys starting with ``_`` (``_target_``) are left out.
    """
    flat: dict[str, Any] = {}
    _flatten({group: resolved_config[group] for group in HPARAM_GROUPS if group in resolved_config}, "", flat)
    return flat


def _flatten(node: Any, prefix: str, flat: dict[str, Any]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if not str(key).startswith("_"):
                _flatten(value, f"{prefix}/{key}" if prefix else str(key), flat)
    elif isinstance(node, bool | int | float | str):
        flat[prefix] = node


def hparams_metrics(test_results: Mapping[str, float | None]) -> dict[str, float]:
    """The test results as the HParams tab's metrics (``test/<name>``), finite values only."""
    return {f"test/{key}": value for key, value in test_results.items() if value is not None}


def optimized_metric(metrics: Mapping[str, Any]) -> float:
    """The best validation value of ``optimized_metric``: what a Hydra sweeper maximises.

    Never a test metric: a sweep that chose hyperparameters on the test split would report an
    optimistic test score. NaN when the run recorded no finite validation value (a diverged run).
    """
    value = (metrics.get("validation") or {}).get("best")
    return float("nan") if value is None else float(value)
