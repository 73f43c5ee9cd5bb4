"""Compare runs: metrics.json and epoch metrics (csv/metrics.csv) of runs -> table, curves and example figures.

``python -m nucseg.compare [RUN_OR_SWEEP_DIR ...]`` writes ``comparison.md``,
``comparison.csv``, ``curves.png`` and ``examples.png``. What the files of a run hold is
defined in :mod:`nucseg.schema`.
"""

from __future__ import annotations

from nucseg.compare.collect import RunRecord, collect_runs, find_run_dirs, load_run
from nucseg.compare.curves import plot_curves, read_epoch_curves
from nucseg.compare.examples import ExampleCrop, crops_from_runs, plot_examples
from nucseg.compare.report import ComparisonOutputs, write_comparison
from nucseg.compare.rows import RunGroup, group_runs
from nucseg.compare.table import ComparisonTable, build_table

__all__ = [
    "ComparisonOutputs",
    "ComparisonTable",
    "ExampleCrop",
    "RunGroup",
    "RunRecord",
    "build_table",
    "collect_runs",
    "crops_from_runs",
    "find_run_dirs",
    "group_runs",
    "load_run",
    "plot_curves",
    "plot_examples",
    "read_epoch_curves",
    "write_comparison",
]

