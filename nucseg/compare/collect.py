"""Find run directories and read what each one says about itself.

A comparison must show every run a user started, including the ones that crashed or are still
going, so this module never raises for a broken run: it records the problem in the run's
``status``/``error`` and lets the table show it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nucseg.schema import FAILED, FINISHED, METRICS_FILE, STATUS_FILE

log = logging.getLogger(__name__)

# What a comparison calls runs that did not finish (status.json says FINISHED/FAILED/RUNNING).
RUNNING_OR_CRASHED = "running or crashed"
INVALID = "invalid"

DEFAULT_SWEEPS = Path("logs") / "multiruns"
CONFIG_FILE = Path(".hydra") / "config.yaml"

# Folders inside a run or sweep that never contain runs; skipping them keeps the walk cheap
# on sweeps with large checkpoint and TensorBoard folders.
_NOT_RUNS = {".hydra", "checkpoints", "tensorboard", "csv", "comparison", "__pycache__", ".git"}


@dataclass(frozen=True)
class RunRecord:
    """One run directory as the comparison sees it.

    Attributes:
        path: the run directory.
        name: the directory name (Hydra's ``<job_num>_<overrides>`` in a multirun).
        status: ``finished``, ``failed``, ``running or crashed`` or ``invalid``.
        model: ``model.name`` from metrics.json or the config, else parsed from the name.
        seed: the run's seed when known.
        metrics: the parsed metrics.json (None unless it was readable).
        config: the run's config as plain containers, ``{}`` when unreadable.
        error: a one-line reason for a run that did not finish.
    """

    path: Path
    name: str
    status: str
    model: str
    seed: int | None = None
    metrics: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def finished(self) -> bool:
        """Whether the run has usable test metrics."""
        return self.status == FINISHED and self.metrics is not None


def is_run_dir(path: Path) -> bool:
    """A run directory has the composed Hydra config or the final metrics file."""
    return (path / CONFIG_FILE).is_file() or (path / METRICS_FILE).is_file()


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Return every run directory at or below ``paths``, each once, in a stable order.

    Args:
        paths: run directories or sweep directories (searched recursively).

    Raises:
        FileNotFoundError: a given path does not exist.
    """
    found: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such directory")
        for run_dir in _walk_runs(path):
            found.setdefault(run_dir.resolve(), None)
    return list(found)


def _walk_runs(path: Path) -> Iterator[Path]:
    """Yield run directories under ``path`` without descending into a run."""
    if is_run_dir(path):
        yield path
        return
    children = sorted(
        (child for child in path.iterdir() if child.is_dir() and child.name not in _NOT_RUNS),
        key=_natural_key,
    )
    for child in children:
        yield from _walk_runs(child)


def _natural_key(path: Path) -> list[Any]:
    """Sort ``10_model=x`` after ``2_model=y`` as Hydra's job numbers intend."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def newest_sweep(root: str | Path = DEFAULT_SWEEPS) -> Path | None:
    """The newest sweep folder under ``root``; names are timestamps, so the last name is newest."""
    root = Path(root)
    if not root.is_dir():
        return None
    sweeps = sorted(child for child in root.iterdir() if child.is_dir())
    return sweeps[-1] if sweeps else None


def load_run(path: str | Path) -> RunRecord:
    """Read one run directory into a :class:`RunRecord`; never raises for a broken run."""
    path = Path(path)
    config, config_error = _read_config(path)
    status_info = _read_json(path / STATUS_FILE)
    metrics_path = path / METRICS_FILE

    metrics: dict[str, Any] | None = None
    error: str | None = None
    if metrics_path.is_file():
        parsed = _read_json(metrics_path)
        if isinstance(parsed, dict) and isinstance(parsed.get("test"), dict):
            metrics = parsed
            status = str(parsed.get("status", FINISHED))
            if status != FINISHED:
                error = _one_line(parsed.get("error")) or f"metrics.json says {status!r}"
        else:
            status, error = INVALID, f"{metrics_path}: unreadable or without a 'test' block"
    else:
        status, error = _status_without_metrics(path, status_info)

    if metrics is not None and not config and isinstance(metrics.get("config"), dict):
        config = metrics["config"]
    if config_error and status == FINISHED and not config:
        log.warning(config_error)

    return RunRecord(
        path=path,
        name=(metrics or {}).get("run_name") or path.name,
        status=status,
        model=_model_name(path, metrics, config),
        seed=_seed(metrics, config),
        metrics=metrics,
        config=config,
        error=error,
    )


def collect_runs(paths: Iterable[str | Path]) -> list[RunRecord]:
    """Find and read every run at or below ``paths`` (see :func:`find_run_dirs`)."""
    return [load_run(run_dir) for run_dir in find_run_dirs(paths)]


def _status_without_metrics(path: Path, status_info: Any) -> tuple[str, str | None]:
    """Classify a run that wrote no metrics.json from its status.json."""
    if not isinstance(status_info, dict):
        return RUNNING_OR_CRASHED, "no metrics.json and no readable status.json"
    declared = status_info.get("status")
    if declared == FAILED:
        return FAILED, _one_line(status_info.get("error")) or "failed (no error recorded)"
    if declared == FINISHED:
        return INVALID, f"{path / METRICS_FILE}: missing although status.json says finished"
    # "running" cannot be told apart from a process that was killed without a chance to
    # record it (SIGKILL, node loss), so the table says both.
    return RUNNING_OR_CRASHED, None


def _read_config(path: Path) -> tuple[dict[str, Any], str | None]:
    """Return the run's composed config as plain containers, unresolved.

    Unresolved, because interpolations such as ``${hydra:runtime.output_dir}`` cannot be
    resolved outside the Hydra app, and because the unresolved text is identical for runs of
    one sweep, which is what grouping needs.
    """
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        return {}, None
    try:
        from omegaconf import OmegaConf

        loaded = OmegaConf.to_container(OmegaConf.load(config_path), resolve=False)
    except Exception as exc:  # any YAML or OmegaConf error makes the config unusable
        return {}, f"{config_path}: unreadable config ({_one_line(exc)})"
    if not isinstance(loaded, dict):
        return {}, f"{config_path}: not a mapping"
    return loaded, None


def _read_json(path: Path) -> Any:
    """Parse a JSON file, or return None when it is missing or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _model_name(path: Path, metrics: dict[str, Any] | None, config: dict[str, Any]) -> str:
    """The model name from metrics.json, then the config, then a ``model=`` override in the name."""
    if metrics and metrics.get("model"):
        return str(metrics["model"])
    model_cfg = config.get("model")
    if isinstance(model_cfg, dict) and model_cfg.get("name"):
        return str(model_cfg["name"])
    if isinstance(model_cfg, str):
        return model_cfg
    match = re.search(r"model=([^,/]+)", path.name)
    return match.group(1) if match else "?"


def _seed(metrics: dict[str, Any] | None, config: dict[str, Any]) -> int | None:
    """The seed from metrics.json or the config, when it is an integer."""
    for source in (metrics or {}, config):
        value = source.get("seed")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _one_line(value: Any, limit: int = 160) -> str | None:
    """First line of an error, shortened so that it fits a table cell."""
    if value is None:
        return None
    text = str(value).strip().splitlines()
    if not text:
        return None
    line = text[-1] if text[0].startswith("Traceback") else text[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"
