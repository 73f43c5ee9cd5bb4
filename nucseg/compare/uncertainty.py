"""Intervals for the table's means and paired comparisons of its rows, from ``test.per_image``.

Runs record one entry per test image in ``metrics.json`` under ``test.per_image``: ``name``, the
pixel counts ``tp``/``fp``/``fn``/``tn``, per-image ``dice``/``iou``/``accuracy`` and, when
instances were scored, the record of :func:`nucseg.metrics.instance.instance_metrics`. From them:

- a row of **one run** gets, next to each pooled metric, a percentile bootstrap interval over its
  test images (the metric recomputed from the resampled images' summed counts:
  :data:`nucseg.metrics.intervals.POOLED_STATISTICS`); ``<m>_per_image`` columns get the
  bootstrap of the mean of the per-image values;
- a row of **several seeds** gets the Student-t interval over its runs' values, whatever the runs
  recorded (the spread between trainings is the larger uncertainty);
- the **paired comparison** puts the row with the best mean Dice against every other row on the
  test images both scored: per-image Dice and, when both rows have it, per-image AJI.

Runs without ``per_image`` (written before it existed) keep plain means.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nucseg.compare.collect import RunRecord
from nucseg.metrics.intervals import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    POOLED_STATISTICS,
    Interval,
    PairedComparison,
    bootstrap_mean,
    bootstrap_pooled,
    paired_comparison,
    seed_interval,
)

log = logging.getLogger(__name__)

PER_IMAGE_SUFFIX = "_per_image"
# Per-image metrics compared between rows, with their titles; each only when both rows have it.
PAIRED_METRICS = (("dice", "Dice"), ("aji", "AJI"))
MIN_PAIRED_IMAGES = 2


@dataclass(frozen=True)
class PairedRow:
    """One line of the paired comparison: the best row against another on shared images.

    Attributes:
        metric: per-image key compared (``dice``, ``aji``).
        title: its name for a reader.
        best: label of the row with the best mean Dice.
        other: label of the row compared with it.
        comparison: best - other over the shared images.
    """

    metric: str
    title: str
    best: str
    other: str
    comparison: PairedComparison

    @property
    def verdict_text(self) -> str:
        """``best higher``, ``best lower`` or ``no difference shown``."""
        return {"higher": "best higher", "lower": "best lower"}.get(self.comparison.verdict, self.comparison.verdict)


def per_image_records(run: RunRecord) -> list[dict[str, Any]] | None:
    """The run's ``test.per_image`` entries that name their image; None when it has none."""
    test = (run.metrics or {}).get("test")
    entries = test.get("per_image") if isinstance(test, dict) else None
    if not isinstance(entries, list) or not entries:
        return None
    records = [entry for entry in entries if isinstance(entry, dict) and isinstance(entry.get("name"), str)]
    if len(records) != len(entries):
        log.warning("%s: %d test.per_image entries without a name ignored", run.path, len(entries) - len(records))
    return records or None


def _number(value: Any) -> float | None:
    """A finite float, or None for anything else (missing, null, bool, NaN)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def per_image_values(run: RunRecord, key: str) -> dict[str, float] | None:
    """``{image name: value}`` of a per-image key; None when the run has no such records."""
    records = per_image_records(run)
    if records is None:
        return None
    values = {record["name"]: _number(record.get(key)) for record in records}
    found = {name: value for name, value in values.items() if value is not None}
    return found or None


def pooled_from_records(run: RunRecord, metric: str) -> float | None:
    """A pooled metric (``dice``, ``aji``, ...) recomputed from the run's per-image counts."""
    columns = _count_columns(run, metric)
    if columns is None:
        return None
    _, statistic = POOLED_STATISTICS[metric]
    return float(statistic({key: sum(values) for key, values in columns.items()}))


def _count_columns(run: RunRecord, metric: str) -> dict[str, list[float]] | None:
    """Per-image count columns of a pooled metric, when every record has all of them."""
    if metric not in POOLED_STATISTICS:
        return None
    records = per_image_records(run)
    if records is None:
        return None
    keys, _ = POOLED_STATISTICS[metric]
    columns: dict[str, list[float]] = {key: [] for key in keys}
    for record in records:
        for key in keys:
            value = _number(record.get(key))
            if value is None:
                return None
            columns[key].append(value)
    return columns


def metric_interval(
    runs: Sequence[RunRecord],
    key: str,
    run_values: Sequence[float],
    num_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
) -> Interval | None:
    """The interval shown next to a row's mean of ``key`` (``test.<metric>``); None for a plain mean.

    Args:
        runs: the row's runs.
        key: dotted metrics.json key of the column.
        run_values: the runs' values of ``key`` (what the row's mean is taken over).
        num_resamples: bootstrap resamples.
        confidence: nominal coverage.
    """
    if len(run_values) >= 2:
        return seed_interval(run_values, confidence)
    if len(runs) != 1 or not key.startswith("test."):
        return None
    metric = key.removeprefix("test.")
    columns = _count_columns(runs[0], metric)
    if columns is not None:
        _, statistic = POOLED_STATISTICS[metric]
        return bootstrap_pooled(columns, statistic, num_resamples=num_resamples, confidence=confidence)
    if metric.endswith(PER_IMAGE_SUFFIX):
        values = per_image_values(runs[0], metric.removesuffix(PER_IMAGE_SUFFIX))
        if values is not None:
            return bootstrap_mean(list(values.values()), num_resamples=num_resamples, confidence=confidence)
    return None


def row_per_image(runs: Sequence[RunRecord], key: str) -> dict[str, float] | None:
    """Each image's value of ``key`` averaged over the row's runs (images every run scored)."""
    per_run = [per_image_values(run, key) for run in runs]
    if not per_run or any(values is None for values in per_run):
        return None
    shared = set.intersection(*(set(values) for values in per_run))  # type: ignore[arg-type]
    return {name: statistics.fmean(values[name] for values in per_run) for name in sorted(shared)} or None  # type: ignore[index]


def paired_rows(
    rows: Mapping[str, Sequence[RunRecord]],
    means: Mapping[str, float | None],
    num_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
) -> list[PairedRow]:
    """Compare the row of best mean Dice with every other row, image by image.

    Args:
        rows: finished rows by label, in table order.
        means: each row's mean test Dice (chooses the best; ties: the first row).
        num_resamples: bootstrap resamples.
        confidence: nominal coverage of the intervals.

    Returns:
        One :class:`PairedRow` per other row and metric of :data:`PAIRED_METRICS` that both rows
        have on at least :data:`MIN_PAIRED_IMAGES` shared images; empty when fewer than two rows
        have per-image Dice.
    """
    candidates = {label: runs for label, runs in rows.items() if row_per_image(runs, "dice") and means.get(label) is not None}
    if len(candidates) < 2:
        return []
    best = max(candidates, key=lambda label: means[label])  # max keeps the first of equal values
    found = []
    for metric, title in PAIRED_METRICS:
        best_values = row_per_image(candidates[best], metric)
        if best_values is None:
            continue
        for label, runs in candidates.items():
            other_values = row_per_image(runs, metric) if label != best else None
            if other_values is None:
                continue
            shared = sorted(set(best_values) & set(other_values))
            if len(shared) < MIN_PAIRED_IMAGES:
                continue
            comparison = paired_comparison(
                [best_values[name] for name in shared],
                [other_values[name] for name in shared],
                num_resamples=num_resamples,
                confidence=confidence,
            )
            found.append(PairedRow(metric, title, best, label, comparison))
    return found


def paired_markdown(paired: Sequence[PairedRow], confidence: float = DEFAULT_CONFIDENCE) -> str:
    """The paired comparison as a Markdown table (empty string when there is none)."""
    if not paired:
        return ""
    percent = f"{confidence * 100:g} %"
    lines = [
        f"| Metric (per image) | Best row | Other row | Images | Best − other | {percent} interval | Wilcoxon p | Verdict |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in paired:
        comparison = row.comparison
        interval = comparison.interval
        cells = [
            row.title,
            row.best,
            row.other,
            str(comparison.n),
            f"{comparison.mean_difference:+.4f}",
            f"[{interval.low:+.4f}, {interval.high:+.4f}]",
            f"{comparison.p_value:.2g}",
            row.verdict_text,
        ]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"
