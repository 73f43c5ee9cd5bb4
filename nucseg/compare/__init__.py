"""Compare runs: metrics.json and TensorBoard events of runs -> table, curves and example figures.

``python -m nucseg.compare [RUN_OR_SWEEP_DIR ...]`` writes ``comparison.md``,
``comparison.csv``, ``curves.png`` and ``examples.png``. :class:`TensorBoardLayout` (a Lightning
callback) is imported lazily so that comparing runs does not import Lightning.
"""

from __future__ import annotations

from typing import Any

from nucseg.compare.collect import RunRecord, collect_runs, find_run_dirs, load_run
from nucseg.compare.curves import plot_curves, read_epoch_curves
from nucseg.compare.examples import ExampleCrop, crops_from_runs, plot_examples
from nucseg.compare.report import ComparisonOutputs, write_comparison
from nucseg.compare.table import ComparisonTable, RunGroup, build_table, group_runs

__all__ = [
    "ComparisonOutputs",
    "ComparisonTable",
    "ExampleCrop",
    "RunGroup",
    "RunRecord",
    "TensorBoardLayout",
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


def __getattr__(name: str) -> Any:
    """Import :class:`TensorBoardLayout` on first use (it needs Lightning)."""
    if name == "TensorBoardLayout":
        from nucseg.compare.tensorboard_layout import TensorBoardLayout

        return TensorBoardLayout
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
