"""Summaries of a test's per-image records, for ``metrics.json``: pooled and per-image values with
95 % bootstrap intervals over the images, for the whole test set and for each named subset.

The records are the module's ``test_records`` (one per image: pixel counts ``tp``/``fp``/``fn``/
``tn``, per-image ``dice``/``iou``/``accuracy`` and, when instances were scored, the record of
:func:`nucseg.metrics.instance.instance_metrics`). Pooled values are recomputed from the summed
counts, so they equal what torchmetrics pooled during the test; intervals come from
:func:`nucseg.metrics.intervals.bootstrap_pooled` (images resampled with replacement).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nucseg.metrics.intervals import POOLED_STATISTICS, bootstrap_mean, bootstrap_pooled

#: Pooled metrics reported with an interval, when their counts are in the records.
SUMMARY_METRICS = ("dice", "iou", "accuracy", "aji", "aji_plus", "pq")
#: Per-image metrics whose mean over images is reported with an interval, when present.
PER_IMAGE_METRICS = ("dice", "aji", "pq", "dq", "sq")


def summarise_records(
    records: Sequence[Mapping[str, Any]], num_resamples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Pooled and per-image-mean values of ``records`` with 95 % bootstrap intervals.

    Returns:
        ``{"num_images": n, "<metric>": {"value", "low", "high"}, "<metric>_per_image": {...}}``
        for each metric of :data:`SUMMARY_METRICS` / :data:`PER_IMAGE_METRICS` present in every
        record; ``{"num_images": 0}`` for no records.
    """
    records = list(records)
    summary: dict[str, Any] = {"num_images": len(records)}
    if not records:
        return summary
    for name in SUMMARY_METRICS:
        keys, statistic = POOLED_STATISTICS[name]
        if all(key in record for record in records for key in keys):
            counts = {key: np.asarray([float(record[key]) for record in records]) for key in keys}
            interval = bootstrap_pooled(counts, statistic, num_resamples=num_resamples, seed=seed)
            summary[name] = _as_dict(interval)
    for name in PER_IMAGE_METRICS:
        if all(name in record for record in records):
            interval = bootstrap_mean([float(record[name]) for record in records], num_resamples=num_resamples, seed=seed)
            summary[f"{name}_per_image"] = _as_dict(interval)
    return summary


def summarise_subsets(
    records: Sequence[Mapping[str, Any]], subsets: Mapping[str, Sequence[str]], **options: Any
) -> dict[str, Any]:
    """:func:`summarise_records` for the whole set (``"all"``) and for each named subset of image names."""
    summaries = {"all": summarise_records(records, **options)}
    for subset, names in subsets.items():
        wanted = set(names)
        summaries[subset] = summarise_records([r for r in records if r.get("name") in wanted], **options)
    return summaries


def _as_dict(interval: Any) -> dict[str, float | None]:
    def number(value: float) -> float | None:
        return round(float(value), 6) if np.isfinite(value) else None

    return {"value": number(interval.estimate), "low": number(interval.low), "high": number(interval.high)}


def json_safe_records(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Records with numpy scalars turned into Python numbers and non-finite values into None."""
    safe: list[dict[str, Any]] = []
    for record in records:
        row: dict[str, Any] = {}
        for key, value in record.items():
            if isinstance(value, np.generic):
                value = value.item()
            if isinstance(value, float) and not np.isfinite(value):
                value = None
            row[key] = value
        safe.append(row)
    return safe
