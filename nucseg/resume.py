"""What makes a killed run continue as if it had never stopped.

- :class:`AtomicCheckpointIO` writes every checkpoint to a temporary file in its own folder,
  syncs it and renames it over the old one, so ``last.ckpt`` is always complete. (Lightning 2.6
  writes to a temporary file in the system's temp folder and moves it: a copy, not a rename,
  whenever that folder is on another file system.)
- :class:`RandomStateCheckpoint` stores the Python, NumPy and torch random states in each
  checkpoint and restores them on resume: the crops and augmentations after the checkpoint are
  those an uninterrupted run draws, so the final metrics are the same.
- :func:`resume_checkpoint` finds the checkpoint to resume from (``ckpt_path=last``: this run
  directory's ``checkpoints/last.ckpt``) and refuses one written under another config.
- :func:`finished_metrics` tells a relaunched sweep which runs are already complete.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from nucseg.checkpoint import CheckpointError, load_checkpoint_dict, run_config_of
from nucseg.utils.atomic import atomic_path

log = logging.getLogger(__name__)

# Config groups that decide a run's numbers: a checkpoint or a finished run is only continued
# or skipped under the same values. Where data lives and how it is loaded may change.
RESULT_GROUPS = ("seed", "model", "loss", "optimizer", "scheduler", "module", "data")
IGNORED_KEYS = frozenset({"data.root", "data.cache_dir", "data.num_workers"})
LAST_CHECKPOINT = "last"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing local files atomically (remote URLs: Lightning's own)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class RandomStateCheckpoint(L.Callback):
    """Save the random generators' states with each checkpoint; restore them when training resumes."""

    def state_dict(self) -> dict[str, Any]:
        kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
        return {
            "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(np.asarray(keys).astype(np.int64)), position, has_gauss, cached_gauss],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(_as_tuples(state_dict["python"]))
        kind, keys, position, has_gauss, cached_gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gauss))
        torch.set_rng_state(state_dict["torch"])
        if state_dict.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


def _as_tuples(value: Any) -> Any:
    """Python's random state as tuples again (a checkpoint round trip may turn them into lists)."""
    return tuple(_as_tuples(item) for item in value) if isinstance(value, list | tuple) else value


def _flatten(node: Any, prefix: str, flat: dict[str, Any]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), flat)
    else:
        flat[prefix] = node


def config_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The result-deciding settings (``RESULT_GROUPS``) that differ, as ``key: stored -> current``."""
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    for group in RESULT_GROUPS:
        _flatten(stored.get(group), group, before)
        _flatten(current.get(group), group, after)
    keys = sorted((set(before) | set(after)) - IGNORED_KEYS)
    return [f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in keys if before.get(key) != after.get(key)]


def _refuse_other_config(source: Path, stored: dict[str, Any], current: dict[str, Any], what: str) -> None:
    differences = config_differences(stored, current)
    if differences:
        shown = "; ".join(differences[:4]) + (f"; and {len(differences) - 4} more" if len(differences) > 4 else "")
        raise CheckpointError(
            f"{source}: {what} under another config ({shown}); repeat the run's own overrides "
            "(its config is in metrics.json or provenance.json) or use a new run directory"
        )


def finished_metrics(run_dir: Path, run_config: dict[str, Any]) -> dict[str, Any] | None:
    """The run's ``metrics.json`` when it is complete (status finished, test Dice present), else None.

    Raises:
        CheckpointError: the run finished under a different config (the relaunch is not the same run).
    """
    path = Path(run_dir) / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(metrics, dict) or metrics.get("status") != "finished" or "dice" not in (metrics.get("test") or {}):
        return None
    _refuse_other_config(path, metrics.get("config") or {}, run_config, "the run finished")
    return metrics


def resume_checkpoint(
    ckpt_path: str | None, resume: bool, run_dir: Path, run_config: dict[str, Any]
) -> str | None:
    """The checkpoint ``trainer.fit`` should resume from, or None to start from scratch.

    Args:
        ckpt_path: a ``.ckpt`` path, ``"last"`` (this run's ``checkpoints/last.ckpt``) or None.
        resume: continue the run directory (as ``ckpt_path="last"`` when ``ckpt_path`` is None).
        run_dir: the run directory.
        run_config: this run's resolved config, compared with the one stored in the checkpoint.

    Returns:
        The checkpoint path; None when nothing is to be resumed (``last`` without a last
        checkpoint: a run killed before its first checkpoint starts again).

    Raises:
        CheckpointError: the named checkpoint does not exist, cannot be read, or was written
            under another config.
    """
    wanted = ckpt_path or (LAST_CHECKPOINT if resume else None)
    if wanted is None:
        return None
    path = Path(run_dir) / "checkpoints" / "last.ckpt" if str(wanted) == LAST_CHECKPOINT else Path(wanted)
    if not path.is_file():
        if str(wanted) == LAST_CHECKPOINT:
            log.warning("%s: no last checkpoint yet; training from the start", path)
            return None
        raise CheckpointError(f"{path}: checkpoint not found (ckpt_path=PATH.ckpt, or ckpt_path=last in its run directory)")
    checkpoint = load_checkpoint_dict(path)
    _refuse_other_config(path, run_config_of(checkpoint, str(path)), run_config, "the checkpoint was written")
    log.info("resuming from %s (epoch %s, step %s)", path, checkpoint.get("epoch"), checkpoint.get("global_step"))
    return str(path)
