"""Write the comparison folder: comparison.md, comparison.csv, curves.png, examples.png.

Each output is produced independently: a figure that cannot be made (no epoch metrics, no
loadable checkpoint) is skipped with a warning and the table is still written, because the
table is what a user asked for first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nucseg.compare.collect import RunRecord
from nucseg.compare.curves import curves_for_runs, plot_curves
from nucseg.compare.examples import crops_from_runs, plot_examples
from nucseg.compare.table import ComparisonTable, build_table
from nucseg.compare.uncertainty import paired_markdown
from nucseg.metrics.intervals import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES
from nucseg.utils.atomic import atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class ComparisonOutputs:
    """Paths written by :func:`write_comparison` (None for a figure that was skipped)."""

    table: ComparisonTable
    markdown: Path
    csv: Path
    curves: Path | None
    examples: Path | None


def write_comparison(
    runs: Sequence[RunRecord],
    out_dir: str | Path,
    sources: Sequence[str | Path] = (),
    examples: bool = True,
    crop_size: int = 256,
    num_images: int = 3,
    num_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
) -> ComparisonOutputs:
    """Build the table from ``runs`` and write every output into ``out_dir``.

    Args:
        runs: the runs to compare, finished or not.
        out_dir: the folder to write into (created).
        sources: the directories the runs were collected from, quoted in comparison.md.
        examples: whether to load checkpoints and draw examples.png (slow on CPU).
        crop_size: side of the example crops.
        num_images: number of test images that give one example crop each.
        num_resamples: bootstrap resamples of the test images (intervals, paired comparison).
        confidence: nominal coverage of the intervals.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = build_table(runs, num_resamples=num_resamples, confidence=confidence)
    finished = {group.label: group.runs for group in table.groups if group.finished}

    curves_path = plot_curves(curves_for_runs(finished), out_dir / "curves.png") if finished else None
    if finished and curves_path is None:
        log.warning("no epoch metrics (csv/ or tensorboard/) in any finished run: curves.png not written")

    examples_path = None
    if examples and finished:
        crops = crops_from_runs(
            {label: group_runs[0] for label, group_runs in finished.items()},
            crop_size=crop_size,
            num_images=num_images,
        )
        if crops:
            examples_path = plot_examples(crops, out_dir / "examples.png", columns=list(finished))
        else:
            log.warning("no run could predict the example crops: examples.png not written")

    csv_path = atomic_write_text(out_dir / "comparison.csv", table.to_csv())
    markdown_path = atomic_write_text(
        out_dir / "comparison.md", render_markdown(table, runs, sources, out_dir, curves_path, examples_path)
    )
    return ComparisonOutputs(table, markdown_path, csv_path, curves_path, examples_path)


def render_markdown(
    table: ComparisonTable,
    runs: Sequence[RunRecord],
    sources: Sequence[str | Path],
    out_dir: Path,
    curves: Path | None,
    examples: Path | None,
) -> str:
    """The comparison.md document: table, run folders per row, and the figures."""
    finished = sum(run.finished for run in runs)
    shown = [column.title for column in table.columns if column.key in ("test.aji", "test.pq")]
    instances = f", {' and '.join(shown)} over all test nuclei (sums over images)" if shown else ""
    where = ", ".join(f"`{source}`" for source in sources) or "the given folders"
    lines = [
        "# Model comparison",
        "",
        f"Test-set results of {len(runs)} runs ({finished} finished) from {where}. Loss, Dice, Accuracy "
        f"and IoU are pooled over all test pixels{instances}; a row of several "
        "runs (seeds) shows their mean; the best mean of each column is in bold. "
        f"{table.interval_note()} Params, train time and patches/s show mean ± sample standard deviation.",
        "",
        table.to_markdown().rstrip("\n"),
        "",
    ]
    if table.paired:
        best = table.paired[0].best
        resamples = f"{table.num_resamples:,}".replace(",", " ")
        lines += [
            "## Paired comparison",
            "",
            f"The row of best mean Dice, {best}, against each other row on the test images both scored "
            "(a row of several seeds contributes each image's mean over its seeds): mean of the per-image "
            f"differences, its {table.confidence * 100:g} % paired percentile bootstrap interval over images "
            f"({resamples} resamples), and the two-sided Wilcoxon signed-rank p-value. A difference is "
            "claimed only where the interval excludes 0.",
            "",
            paired_markdown(table.paired, table.confidence).rstrip("\n"),
            "",
        ]
    lines += ["Run folders per row:", ""]
    for group in table.groups:
        folders = ", ".join(f"`{_relative(run.path, out_dir)}`" for run in group.runs)
        lines.append(f"- {group.label} ({group.status}): {folders}")
    for title, figure in (("Training curves", curves), ("Example segmentations", examples)):
        if figure is not None:
            lines += ["", f"## {title}", "", f"![{title}]({_relative(figure, out_dir)})"]
    return "\n".join(lines) + "\n"


def _relative(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` when both are on one drive, so the document can move with its sweep."""
    try:
        return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()
    except ValueError:
        return str(path)
