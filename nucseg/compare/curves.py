"""Training curves per model from the epoch metrics of runs (``csv/version_*/metrics.csv``).

Lightning's CSVLogger (``conf/logger/csv.yaml``) writes every logged value with the epoch it
belongs to, in one row per logging call; a resumed run adds a version folder, read after the
earlier ones. Runs from before the CSV logger only have TensorBoard event files; their points
are mapped to epochs by :func:`read_tensorboard_curves`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from nucseg.compare.collect import RunRecord
from nucseg.schema import CURVE_SPLITS, METRIC_TITLES

log = logging.getLogger(__name__)

# (panel title, metric name) in the 2 x 2 grid; tags are "<split>/<metric>".
PANELS: tuple[tuple[str, str], ...] = tuple((METRIC_TITLES[name], name) for name in ("loss", "accuracy", "dice", "iou"))
SPLITS: tuple[str, ...] = CURVE_SPLITS
EPOCH_TAG = "epoch"
CSV_DIR = "csv"

# epoch -> value for one tag of one run
Curve = dict[int, float]


def _default_tags() -> list[str]:
    return [f"{split}/{metric}" for split in SPLITS for _, metric in PANELS]


def csv_files(run_dir: Path) -> list[Path]:
    """The run's ``csv/**/metrics.csv`` files, oldest logger version first."""
    root = Path(run_dir) / CSV_DIR
    if not root.is_dir():
        return []
    return sorted(root.rglob("metrics.csv"), key=lambda path: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(path))])


def read_epoch_curves(run_dir: Path, tags: Sequence[str] | None = None) -> dict[str, Curve]:
    """Read the epoch-level metrics of one run as ``{tag: {epoch: value}}``.

    Args:
        run_dir: a run directory with ``csv/`` (or, for runs before the CSV logger, ``tensorboard/``).
        tags: the tags to read; default every ``<split>/<metric>`` of :data:`PANELS`. A tag
            that is missing is simply absent from the result. ``<tag>_epoch`` is accepted for
            ``<tag>``, which Lightning writes when a metric is logged both per step and per epoch.

    Returns:
        Curves keyed by the requested tag; a later value for the same epoch (a resumed run)
        replaces an earlier one.
    """
    wanted = list(tags) if tags is not None else _default_tags()
    files = csv_files(run_dir)
    if not files:
        return read_tensorboard_curves(run_dir, wanted)
    import pandas as pd

    curves: dict[str, Curve] = {}
    for path in files:
        try:
            table = pd.read_csv(path)
        except (OSError, ValueError) as exc:  # an empty or cut file of a killed run must not stop the comparison
            log.warning("%s: cannot read the epoch metrics (%s)", path, exc)
            continue
        if EPOCH_TAG not in table:
            continue
        for tag in wanted:
            source = tag if tag in table else f"{tag}_epoch" if f"{tag}_epoch" in table else None
            if source is None:
                continue
            points = table[[EPOCH_TAG, source]].dropna()
            curves.setdefault(tag, {}).update(zip(points[EPOCH_TAG].astype(int), points[source].astype(float), strict=True))
    return {tag: curve for tag, curve in curves.items() if curve}


def event_dirs(run_dir: Path) -> list[Path]:
    """Folders under ``<run_dir>/tensorboard`` that hold event files (one per logger version)."""
    root = Path(run_dir) / "tensorboard"
    if not root.is_dir():
        return []
    return sorted({path.parent for path in root.rglob("events.out.tfevents.*")})


def read_tensorboard_curves(run_dir: Path, tags: Sequence[str]) -> dict[str, Curve]:
    """Curves of a run logged before the CSV logger, from its TensorBoard event files.

    Lightning logs epoch metrics at the global step, and several logging calls can share a step
    (a training epoch's end and the following validation), so each point takes the ``epoch``
    scalar written closest in time at its step.
    """
    from tensorboard.backend.event_processing import event_accumulator as ea

    curves: dict[str, Curve] = {}
    for folder in event_dirs(run_dir):
        accumulator = ea.EventAccumulator(
            str(folder),
            size_guidance={ea.SCALARS: 0, ea.IMAGES: 1, ea.HISTOGRAMS: 1, ea.TENSORS: 1, ea.AUDIO: 1},
        )
        try:
            accumulator.Reload()
        except Exception as exc:  # a truncated event file of a killed run must not stop the comparison
            log.warning("%s: cannot read TensorBoard events (%s)", folder, exc)
            continue
        available = set(accumulator.Tags().get("scalars", []))
        epochs = _epoch_lookup(accumulator.Scalars(EPOCH_TAG)) if EPOCH_TAG in available else None
        for tag in tags:
            source = tag if tag in available else f"{tag}_epoch" if f"{tag}_epoch" in available else None
            if source is None:
                continue
            events = sorted(accumulator.Scalars(source), key=lambda event: event.wall_time)
            curve = curves.setdefault(tag, {})
            for index, event in enumerate(events):
                epoch = epochs(event.step, event.wall_time) if epochs else None
                curve[index if epoch is None else epoch] = float(event.value)
    return curves


def _epoch_lookup(epoch_events: Sequence[object]):
    """Return ``(step, wall_time) -> epoch`` from Lightning's ``epoch`` scalar."""
    by_step: dict[int, list[tuple[float, int]]] = {}
    for event in epoch_events:
        by_step.setdefault(int(event.step), []).append((float(event.wall_time), int(round(event.value))))

    def lookup(step: int, wall_time: float) -> int | None:
        candidates = by_step.get(int(step))
        if not candidates:
            return None
        return min(candidates, key=lambda candidate: abs(candidate[0] - wall_time))[1]

    return lookup


def mean_curve(curves: Sequence[Curve]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, mean and standard deviation over runs (seeds), over the epochs any run has."""
    epochs = sorted(set().union(*(curve.keys() for curve in curves)))
    means, stds = [], []
    for epoch in epochs:
        values = [curve[epoch] for curve in curves if epoch in curve]
        means.append(float(np.mean(values)))
        stds.append(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)
    return np.asarray(epochs), np.asarray(means), np.asarray(stds)


def plot_curves(
    curves_by_label: Mapping[str, Sequence[Mapping[str, Curve]]], path: str | Path
) -> Path | None:
    """Draw Loss, Accuracy, Dice and IoU per epoch: one colour per model, train solid, val dashed.

    Args:
        curves_by_label: row label -> one ``{tag: curve}`` per run of that row; several runs
            (seeds) are drawn as their mean with a ± std band.
        path: the PNG to write (atomically).

    Returns:
        The written path, or None when no curve has a point (nothing worth a figure).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    from nucseg.utils.atomic import atomic_path

    if not any(curve for runs in curves_by_label.values() for run in runs for curve in run.values()):
        return None
    colours = plt.get_cmap("tab10")
    figure, axes = plt.subplots(2, 2, figsize=(11, 7.5), constrained_layout=True)
    for axis, (title, metric) in zip(axes.flat, PANELS, strict=True):
        for index, runs in enumerate(curves_by_label.values()):
            colour = colours(index % 10)
            for split, style in zip(SPLITS, ("-", "--"), strict=True):
                found = [run[f"{split}/{metric}"] for run in runs if run.get(f"{split}/{metric}")]
                if not found:
                    continue
                epochs, mean, std = mean_curve(found)
                # Lightning counts epochs from 0; readers count from 1.
                marker = "o" if len(epochs) < 12 else None
                axis.plot(epochs + 1, mean, style, color=colour, marker=marker, markersize=3)
                if len(found) > 1:
                    band = (mean - std, mean + std)
                    axis.fill_between(epochs + 1, *band, color=colour, alpha=0.15, linewidth=0)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(True, alpha=0.3)
        if not axis.lines:
            axis.text(0.5, 0.5, f"no {metric} logged", ha="center", va="center", transform=axis.transAxes)
    handles = [Line2D([], [], color=colours(i % 10), label=label) for i, label in enumerate(curves_by_label)]
    for split, style in zip(SPLITS, ("-", "--"), strict=True):
        handles.append(Line2D([], [], color="grey", linestyle=style, label=split))
    # Long labels (rows told apart by config keys) get one column, so none runs off the figure.
    longest = max(len(handle.get_label()) for handle in handles)
    columns = min(len(handles), 6) if longest <= 30 else 2 if longest <= 60 else 1
    figure.legend(handles=handles, loc="outside lower center", ncol=columns, frameon=False)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120, format="png")
    plt.close(figure)
    return Path(path)


def curves_for_runs(runs_by_label: Mapping[str, Sequence[RunRecord]]) -> dict[str, list[dict[str, Curve]]]:
    """Read the curves of every run, keyed by row label; runs without epoch metrics are left out."""
    result: dict[str, list[dict[str, Curve]]] = {}
    for label, runs in runs_by_label.items():
        for run in runs:
            curves = read_epoch_curves(run.path)
            if curves:
                result.setdefault(label, []).append(curves)
            else:
                log.warning("%s: no epoch metrics in csv/ (or tensorboard/), left out of curves.png", run.path)
    return result
