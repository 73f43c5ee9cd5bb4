"""Rows of the comparison table: which runs share a row, and how a row is labelled.

Finished runs of one model and one config, apart from the seed and the paths that name the
run's own folder, are one row (:class:`RunGroup`); a run that did not finish stands alone, so
that nothing a user started disappears silently. Rows of one model are told apart by the config
keys in which they differ.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import pandas as pd

from nucseg.compare.collect import RunRecord
from nucseg.compare.uncertainty import pooled_from_records

# Config keys that differ between runs of one sweep without making them different
# experiments: the seed and everything that names the run's own folder.
IGNORED_CONFIG_KEYS = frozenset(
    {
        "seed",
        "run_name",
        "output_dir",
        "run_dir",
        "save_dir",
        "log_dir",
        "dirpath",
        "default_root_dir",
        "ckpt_path",
    }
)


@dataclass
class RunGroup:
    """A table row: finished runs of one configuration, or one unfinished run."""

    label: str
    model: str
    status: str
    runs: list[RunRecord]
    error: str | None = None
    config_key: str = ""

    @property
    def finished(self) -> bool:
        """Whether the row holds test metrics."""
        return all(run.finished for run in self.runs)

    @property
    def seeds(self) -> list[int]:
        """The known seeds of the runs in this row, sorted."""
        return sorted(run.seed for run in self.runs if run.seed is not None)

    @cached_property
    def frame(self) -> pd.DataFrame:
        """The row's metrics.json files flattened, one line per run, columns ``test.dice``, ``params``, ..."""
        return pd.json_normalize([run.metrics or {} for run in self.runs])

    def values(self, key: str) -> list[float]:
        """Finite numeric values of ``key`` (a dotted metrics.json path) over the row's runs.

        A pooled metric absent from a run's test block (``test.aji`` of a run that only recorded
        per-image counts) is recomputed from ``test.per_image``.
        """
        column = self.frame[key] if key in self.frame else pd.Series([None] * len(self.runs), dtype=object)
        found = []
        for run, value in zip(self.runs, column, strict=True):
            if key.startswith("test.") and key.removeprefix("test.") not in test_block(run):
                value = pooled_from_records(run, key.removeprefix("test."))
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                found.append(float(value))
        return found

    def mean(self, key: str) -> float | None:
        """Mean of ``key`` over the row's runs, None when no run has it."""
        values = self.values(key)
        return statistics.fmean(values) if values else None

    def std(self, key: str) -> float | None:
        """Sample standard deviation of ``key``, None for fewer than two runs."""
        values = self.values(key)
        return statistics.stdev(values) if len(values) >= 2 else None


def group_runs(runs: Sequence[RunRecord]) -> list[RunGroup]:
    """Finished runs of one model and one config (seed aside) share a row; others stand alone.

    Rows keep the order in which their first run appears (Hydra's job order).
    """
    groups: list[RunGroup] = []
    by_key: dict[tuple[str, str], RunGroup] = {}
    for run in runs:
        if not run.finished:
            groups.append(RunGroup(run.model, run.model, run.status, [run], error=run.error))
            continue
        key = (run.model, config_identity(run))
        if key in by_key:
            by_key[key].runs.append(run)
        else:
            by_key[key] = RunGroup(run.model, run.model, run.status, [run], config_key=key[1])
            groups.append(by_key[key])
    _disambiguate_labels([group for group in groups if group.finished])
    return groups


def config_identity(run: RunRecord) -> str:
    """A canonical string of the run's config without the seed and run-specific paths."""
    return json.dumps(_comparable_config(run), sort_keys=True, default=str)


def _disambiguate_labels(groups: list[RunGroup]) -> None:
    """Append ``key=value`` of differing config keys to labels of rows that share a model.

    Each row shows the keys in which it departs from the most common value among the rows of
    its model (ties: the first row's), so a sweep of one-change levers reads as its levers; the
    row that departs from none (the baseline) shows its own values of the keys that differ.
    """
    by_model: dict[str, list[RunGroup]] = {}
    for group in groups:
        by_model.setdefault(group.model, []).append(group)
    for same_model in by_model.values():
        if len(same_model) < 2:
            continue
        flats = [_flatten(_comparable_config(group.runs[0])) for group in same_model]
        keys = sorted(set().union(*flats))
        encoded = [{key: json.dumps(flat.get(key), default=str) for key in keys} for flat in flats]
        differing = [key for key in keys if len({values[key] for values in encoded}) > 1]
        modal = {key: Counter(values[key] for values in encoded).most_common(1)[0][0] for key in differing}
        for group, flat, values in zip(same_model, flats, encoded, strict=True):
            own = [key for key in differing if values[key] != modal[key]]
            shown = own or differing
            parts = [f"{key}={_short(flat.get(key))}" for key in shown[:3]]
            if len(shown) > 3:
                parts.append("…")
            group.label = f"{group.model} ({', '.join(parts)})" if parts else group.model
        _number_duplicates(same_model)


def _number_duplicates(groups: list[RunGroup]) -> None:
    """Make labels unique when configs differ only in keys too long to show."""
    seen: dict[str, int] = {}
    for group in groups:
        count = seen.get(group.label, 0)
        seen[group.label] = count + 1
        if count:
            group.label = f"{group.label} #{count + 1}"


def _comparable_config(run: RunRecord) -> dict[str, Any]:
    """The run's config without ignored keys and without values that name the run's folder."""
    run_markers = {str(run.path), run.path.name, run.name}

    def keep(key: str, value: Any) -> bool:
        if key in IGNORED_CONFIG_KEYS or key == "hydra":
            return False
        return not (isinstance(value, str) and any(marker and marker in value for marker in run_markers))

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: strip(value) for key, value in node.items() if keep(str(key), value)}
        if isinstance(node, list):
            return [strip(value) for value in node]
        return node

    return strip(run.config or (run.metrics or {}).get("config") or {})


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b": value}``; lists stay whole values."""
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def test_block(run: RunRecord) -> dict[str, Any]:
    """The run's ``test`` block of metrics.json, ``{}`` when it has none."""
    test = (run.metrics or {}).get("test")
    return test if isinstance(test, dict) else {}


def _short(value: Any, limit: int = 24) -> str:
    """A config value short enough for a row label."""
    text = json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
