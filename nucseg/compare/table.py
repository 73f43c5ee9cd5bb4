"""The comparison table: its columns, best values and intervals, as Markdown, CSV and a rich table.

Rows come from :mod:`nucseg.compare.rows`. A metric's mean comes with a 95 % interval
(:mod:`nucseg.compare.uncertainty`): a t-interval over the seeds of a row of several runs, a
bootstrap over test images for a row of one run that recorded ``test.per_image``; costs (params,
time, rate) show mean ± sample standard deviation (ddof=1). A run that did not finish is a row
of its own that says why.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from nucseg.compare.collect import RunRecord
from nucseg.compare.rows import RunGroup, group_runs, test_block
from nucseg.compare.uncertainty import PairedRow, metric_interval, paired_rows, pooled_from_records
from nucseg.metrics.intervals import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, Interval
from nucseg.schema import PIXEL_TEST_KEYS
from nucseg.schema import RUN_COST_KEYS as RUN_KEYS

# Pixel metrics (PIXEL_TEST_KEYS) have fixed columns; any other numeric key of the "test" block
# except loss terms (``loss_<term>``) is an instance metric (AJI, PQ, object F1, ...) and gets its
# own column when present.
# Instance metrics shown in the table, in this order, when a run reports them (in its test block
# or through per-image counts); the other keys of nucseg.metrics.instance (AJI+, DQ, SQ, object
# precision/recall/F1/Dice, and every ``<metric>_per_image`` mean) go to the CSV only.
INSTANCE_TABLE_KEYS = ("aji", "pq")
INSTANCE_CSV_KEYS = frozenset(
    {"aji_plus", "dq", "sq", "object_precision", "object_recall", "object_f1", "object_dice"}
)

_CSV_RUN_COLUMNS = ("label", "model", "status", "error", "n_runs", "seeds", "runs", "interval")
_KNOWN_TITLES = {"aji": "AJI", "pq": "PQ", "dq": "DQ", "sq": "SQ", "f1": "F1", "object_f1": "Object F1"}
_LOWER_IS_BETTER_WORDS = ("loss", "error", "hausdorff", "hd95", "distance", "time")


@dataclass(frozen=True)
class Column:
    """One numeric column of the table.

    Attributes:
        key: dotted path into metrics.json (``test.dice``, ``params``).
        title: the header shown to the reader.
        kind: ``metric``, ``params``, ``time`` or ``rate``; picks the number format.
        higher_is_better: direction used to bold the best value.
    """

    key: str
    title: str
    kind: str
    higher_is_better: bool


@dataclass
class ComparisonTable:
    """Rows, columns, the best row per column, intervals and the paired comparison of the rows.

    Attributes:
        groups: the rows.
        columns: the numeric columns.
        best: per column key, the indices of the rows holding the best mean.
        intervals: per (row index, column key), the interval shown next to the mean.
        paired: the best row (by mean Dice) against each other row, image by image.
        confidence: nominal coverage of every interval.
        num_resamples: bootstrap resamples behind the intervals and the paired comparison.
    """

    groups: list[RunGroup]
    columns: list[Column]
    best: dict[str, set[int]] = field(default_factory=dict)
    intervals: dict[tuple[int, str], Interval] = field(default_factory=dict)
    paired: list[PairedRow] = field(default_factory=list)
    confidence: float = DEFAULT_CONFIDENCE
    num_resamples: int = DEFAULT_RESAMPLES

    @property
    def headers(self) -> list[str]:
        """Header row shared by the Markdown and rich renderings."""
        return ["Model", "Runs", *(column.title for column in self.columns), "Status"]

    def cells(self, index: int) -> list[tuple[str, bool]]:
        """The row's cell texts, each with whether it is the column's best."""
        group = self.groups[index]
        row = [(group.label, False), (_runs_text(group), False)]
        for column in self.columns:
            text = format_value(group, column, self.intervals.get((index, column.key))) if group.finished else "—"
            row.append((text, index in self.best.get(column.key, set())))
        row.append((_status_text(group), False))
        return row

    def to_markdown(self) -> str:
        """A GitHub Markdown table, best value per column in bold."""
        lines = [_md_row(self.headers), _md_row(["---"] * 2 + ["---:"] * len(self.columns) + ["---"])]
        for index in range(len(self.groups)):
            lines.append(_md_row([f"**{text}**" if best else text for text, best in self.cells(index)]))
        return "\n".join(lines) + "\n"

    def interval_note(self) -> str:
        """One sentence saying which interval each kind of row shows."""
        percent = f"{self.confidence * 100:g} %"
        return (
            f"[low, high]: {percent} interval of the mean; a row of several seeds shows the Student-t "
            "interval over its seeds, a row of one run the percentile bootstrap over its test images "
            "(pooled metrics recomputed from the resampled images' counts); a value without brackets "
            "is a run without per-image records."
        )

    def summary(self) -> pd.DataFrame:
        """One line per row: label, status, runs, and every numeric key as ``<key>_mean``, ``_std``, ``_low``, ``_high``.

        ``_low``/``_high`` are the interval of the table (empty where it shows none); the
        ``interval`` column names its method per row.
        """
        keys, lines = _all_numeric_keys(self.groups), []
        for index, group in enumerate(self.groups):
            line: dict[str, Any] = {
                "label": group.label,
                "model": group.model,
                "status": group.status,
                "error": group.error or "",
                "n_runs": len(group.runs),
                "seeds": ";".join(str(seed) for seed in group.seeds),
                "runs": ";".join(str(run.path) for run in group.runs),
                "interval": self._interval_method(index),
            }
            for key in keys:
                interval = self.intervals.get((index, key))
                bounds = (interval.low, interval.high) if interval is not None and interval.has_bounds else (None, None)
                line.update(dict(zip((f"{key}_{stat}" for stat in ("mean", "std", "low", "high")),
                                     (group.mean(key), group.std(key), *bounds), strict=True)))
            lines.append(line)
        stats = [f"{key}_{stat}" for key in keys for stat in ("mean", "std", "low", "high")]
        return pd.DataFrame(lines, columns=[*_CSV_RUN_COLUMNS, *stats])

    def to_csv(self) -> str:
        """:meth:`summary` as CSV, numbers at full precision."""
        return self.summary().to_csv(index=False, lineterminator="\n")

    def _interval_method(self, index: int) -> str:
        """The row's interval method with its n (``t over seeds (3)``), empty without intervals."""
        methods = {
            f"{interval.method} ({interval.n})"
            for (row, _), interval in self.intervals.items()
            if row == index and interval.has_bounds
        }
        return "; ".join(sorted(methods))

    def paired_to_rich(self, title: str | None = None) -> Any:
        """The paired comparison as a ``rich.table.Table`` (None when there is none)."""
        if not self.paired:
            return None
        from rich.table import Table

        table = Table(title=title)
        percent = f"{self.confidence * 100:g} %"
        for header in ("Metric", "Best row", "Other row"):
            table.add_column(header)
        for header in ("Images", "Best − other", f"{percent} interval", "Wilcoxon p"):
            table.add_column(header, justify="right")
        table.add_column("Verdict")
        for row in self.paired:
            comparison = row.comparison
            table.add_row(
                row.title,
                row.best,
                row.other,
                str(comparison.n),
                f"{comparison.mean_difference:+.4f}",
                f"[{comparison.interval.low:+.4f}, {comparison.interval.high:+.4f}]",
                f"{comparison.p_value:.2g}",
                row.verdict_text,
                style="bold" if comparison.excludes_zero else "",
            )
        return table

    def to_rich(self, title: str | None = None) -> Any:
        """A ``rich.table.Table`` with the Markdown's cells; best in bold, failures in red."""
        from rich.table import Table
        from rich.text import Text

        table = Table(title=title, show_lines=False, caption=Text(self.interval_note()))
        for index, header in enumerate(self.headers):
            numeric = 2 <= index < 2 + len(self.columns)
            wraps = index == len(self.headers) - 1  # only the status, which may hold an error message
            justify = "right" if numeric else "left"
            table.add_column(header, justify=justify, no_wrap=not wraps, overflow="fold")
        for index, group in enumerate(self.groups):
            row_style = "" if group.finished else "yellow" if group.status == "running or crashed" else "red"
            # The interval goes under the mean, so that a column stays as narrow as its numbers.
            cells = self.cells(index)
            texts = [text.replace(" [", "\n[") if 2 <= i < 2 + len(self.columns) else text for i, (text, _) in enumerate(cells)]
            table.add_row(*(Text(text, style="bold" if best else row_style) for text, (_, best) in zip(texts, cells, strict=True)))
        return table


def build_table(
    runs: Sequence[RunRecord],
    num_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
) -> ComparisonTable:
    """Group ``runs`` into rows, choose the columns, mark the best rows, add intervals and the paired comparison.

    Args:
        runs: the runs, finished or not.
        num_resamples: bootstrap resamples of the test images (intervals and paired comparison).
        confidence: nominal coverage of every interval.
    """
    groups = group_runs(runs)
    columns = _columns(groups)
    table = ComparisonTable(groups=groups, columns=columns, confidence=confidence, num_resamples=num_resamples)
    for column in columns:
        table.best[column.key] = _best_rows(groups, column)
    for index, group in enumerate(groups):
        if not group.finished:
            continue
        for key in _all_numeric_keys([group]):
            if key in RUN_KEYS or key == "test.num_images":
                continue
            interval = metric_interval(group.runs, key, group.values(key), num_resamples, confidence)
            if interval is not None and interval.has_bounds:
                table.intervals[(index, key)] = interval
    finished = [group for group in groups if group.finished]
    table.paired = paired_rows(
        {group.label: group.runs for group in finished},
        {group.label: group.mean("test.dice") for group in finished},
        num_resamples,
        confidence,
    )
    return table


def format_value(group: RunGroup, column: Column, interval: Interval | None = None) -> str:
    """Format the row's mean of ``column`` for a reader; ``—`` when absent.

    A metric shows ``mean [low, high]`` when ``interval`` has bounds, else the plain mean; costs
    show mean ± sample std over the row's runs.
    """
    mean, std = group.mean(column.key), group.std(column.key)
    if mean is None:
        return "—"
    if column.kind == "metric":
        if interval is not None and interval.has_bounds:
            return f"{mean:.4f} [{interval.low:.4f}, {interval.high:.4f}]"
        return f"{mean:.4f}"
    if column.kind == "params":
        return f"{mean / 1e6:.2f} M"
    if column.kind == "time":
        scale, unit = (3600.0, "h") if mean >= 3600 else (60.0, "min") if mean >= 60 else (1.0, "s")
        digits = 0 if unit == "s" else 1
        text = f"{mean / scale:.{digits}f}"
        return f"{text} ± {std / scale:.{digits}f} {unit}" if std is not None else f"{text} {unit}"
    digits = 1 if column.kind == "rate" else 4
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def _columns(groups: Iterable[RunGroup]) -> list[Column]:
    """The reference's four metrics, run costs, then instance metrics that any run reports."""
    columns = [
        Column("test.loss", "Loss", "metric", higher_is_better=False),
        Column("test.dice", "Dice", "metric", higher_is_better=True),
        Column("test.accuracy", "Accuracy", "metric", higher_is_better=True),
        Column("test.iou", "IoU", "metric", higher_is_better=True),
    ]
    groups = list(groups)
    shown: set[str] = set()
    extra_keys: list[str] = []
    for group in groups:
        for run in group.runs:
            for key in INSTANCE_TABLE_KEYS:
                if key in test_block(run) or pooled_from_records(run, key) is not None:
                    shown.add(key)
            for key, value in test_block(run).items():
                numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
                loss_term = key.startswith("loss_")  # terms of a composite loss: CSV only
                csv_only = key in INSTANCE_CSV_KEYS or key.endswith("_per_image") or key in INSTANCE_TABLE_KEYS
                if numeric and not loss_term and not csv_only and key not in PIXEL_TEST_KEYS and key not in extra_keys:
                    extra_keys.append(key)
    instance_keys = [key for key in INSTANCE_TABLE_KEYS if key in shown] + extra_keys
    for key in instance_keys:
        lower = any(word in key.lower() for word in _LOWER_IS_BETTER_WORDS)
        title = _KNOWN_TITLES.get(key, key)
        columns.append(Column(f"test.{key}", title, "metric", higher_is_better=not lower))
    columns += [
        Column("params", "Params", "params", higher_is_better=False),
        Column("train_time_s", "Train time", "time", higher_is_better=False),
        Column("train_patches_per_s", "Patches/s", "rate", higher_is_better=True),
    ]
    if any((run.metrics or {}).get("progress") for group in groups for run in group.runs):  # newer runs record it
        columns.append(Column("progress.epochs_trained", "Epochs", "rate", higher_is_better=True))
    return columns


def _best_rows(groups: Sequence[RunGroup], column: Column) -> set[int]:
    """Indices of the rows holding the column's best mean; none when fewer than two rows compete."""
    means = pd.Series({i: group.mean(column.key) for i, group in enumerate(groups) if group.finished}, dtype=float).dropna()
    if len(means) < 2:
        return set()
    best = means.max() if column.higher_is_better else means.min()
    return {int(i) for i in means.index[(means - best).abs() <= 1e-12]}


def _all_numeric_keys(groups: Iterable[RunGroup]) -> list[str]:
    """Every numeric ``test.*`` key and run key any row reports, in schema order.

    Pooled instance metrics that a run only records through per-image counts count as reported.
    """
    keys = [f"test.{key}" for key in PIXEL_TEST_KEYS]
    for group in groups:
        for run in group.runs:
            for key, value in test_block(run).items():
                if isinstance(value, (int, float)) and f"test.{key}" not in keys:
                    keys.append(f"test.{key}")
            for key in INSTANCE_TABLE_KEYS:
                if f"test.{key}" not in keys and pooled_from_records(run, key) is not None:
                    keys.append(f"test.{key}")
    return keys + list(RUN_KEYS)


def _runs_text(group: RunGroup) -> str:
    """``2 (seeds 0, 1)``: how many runs a row averages, and which seeds."""
    seeds = group.seeds
    if not seeds:
        return str(len(group.runs))
    word = "seed" if len(seeds) == 1 else "seeds"
    return f"{len(group.runs)} ({word} {', '.join(map(str, seeds))})"


def _status_text(group: RunGroup) -> str:
    """``finished``, or the status with its reason."""
    return f"{group.status}: {group.error}" if group.error else group.status


def _md_row(cells: Iterable[str]) -> str:
    """One Markdown table row, with pipes inside cells escaped."""
    return "| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in cells) + " |"
