"""What a sweep optimises, and how sweeps and data parallelism are launched together.

A sweeper (Optuna, or any Hydra sweeper) maximises the number ``train.py`` returns. That number
must be a validation metric: choosing hyperparameters on the test split would report an
optimistic test score. The best validation value of a run is already recorded by its
:class:`~lightning.pytorch.callbacks.ModelCheckpoint` (the one that picks the tested
checkpoint), so :func:`best_validation_score` reads it from the run's checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_NAMES = ("last.ckpt", "best.ckpt")  # last.ckpt holds the final state of the callback


def best_validation_score(run_dir: str | Path, monitor: str = "val/dice") -> float:
    """The best value of ``monitor`` over a finished run, as its checkpoint callback recorded it.

    Args:
        run_dir: the run directory (holding ``checkpoints/``).
        monitor: the metric the checkpoint callback monitored (``optimized_metric``).

    Returns:
        The best score, or NaN when the run recorded none (e.g. it diverged), which Optuna
        records as a failed trial instead of stopping the sweep.

    Raises:
        FileNotFoundError: no checkpoint in ``run_dir/checkpoints``.
        ValueError: no checkpoint callback monitored ``monitor``.
    """
    folder = Path(run_dir) / "checkpoints"
    path = next((folder / name for name in CHECKPOINT_NAMES if (folder / name).is_file()), None)
    if path is None:
        raise FileNotFoundError(f"{folder}: no last.ckpt or best.ckpt to read the best {monitor} from")
    states = torch.load(path, map_location="cpu", weights_only=False).get("callbacks", {})
    monitored = [state for key, state in states.items() if key.startswith("ModelCheckpoint") and state.get("monitor") == monitor]
    if not monitored:
        found = sorted({state.get("monitor") for key, state in states.items() if key.startswith("ModelCheckpoint")} - {None})
        raise ValueError(
            f"optimized_metric={monitor!r} is not monitored by a checkpoint callback of {path} "
            f"(monitored: {found or 'none'}); set callbacks.model_checkpoint.monitor to it"
        )
    score = monitored[0].get("best_model_score")
    value = float(score) if score is not None else float("nan")
    return value if math.isfinite(value) else float("nan")


def check_multirun_strategy(trainer_cfg: Any, multirun: bool, launcher_target: str | None) -> None:
    """Refuse ``strategy: ddp`` with several devices inside a local multirun.

    Lightning's ``ddp`` starts each extra process by re-running the command line; under Hydra's
    ``-m`` with the basic (or joblib) launcher that command is the whole sweep, so every extra
    process would run the sweep again and write a second output folder. ``ddp_spawn`` starts
    its processes from inside the job instead; on SLURM the submitit launcher starts one task
    per GPU itself and ``ddp`` is right.

    Args:
        trainer_cfg: the ``trainer`` config node.
        multirun: whether Hydra runs in MULTIRUN mode.
        launcher_target: ``hydra.launcher._target_`` (``None`` outside Hydra).

    Raises:
        ValueError: the combination above, with the fix.
    """
    strategy = str(trainer_cfg.get("strategy", "auto"))
    devices = trainer_cfg.get("devices", 1)
    several = devices in (-1, "auto", "-1") or (isinstance(devices, int) and devices > 1) or isinstance(devices, list | tuple)
    on_cluster = launcher_target is not None and "submitit" in launcher_target and "Local" not in launcher_target
    if multirun and strategy == "ddp" and several and not on_cluster:
        raise ValueError(
            "trainer.strategy=ddp re-runs the command in each extra process, so under -m each would re-run the "
            "sweep; use trainer=ddp_spawn for a local sweep, or hydra/launcher=slurm on a cluster"
        )
