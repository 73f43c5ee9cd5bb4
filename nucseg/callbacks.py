"""Lightning callbacks of our own (the others come from Lightning through config)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging, Timer
from lightning.pytorch.trainer.states import TrainerFn

from nucseg.schedules import ProgressSchedule, training_progress
from nucseg.schema import METRIC_TITLES

log = logging.getLogger(__name__)


class TrainingSpeed(L.Callback):
    """Training throughput: patches per second spent in training steps (validation excluded).

    ``fit_seconds`` is the wall time of the whole ``fit`` (validation included), which is what a
    time budget is about; ``patches_per_second`` is about the network and the data path.
    """

    def __init__(self) -> None:
        self.patches = 0
        self.step_seconds = 0.0
        self.fit_seconds = 0.0
        self._fit_started = 0.0
        self._batch_started = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_started = time.perf_counter()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_seconds = time.perf_counter() - self._fit_started

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch_started = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.step_seconds += time.perf_counter() - self._batch_started
        self.patches += int(batch["image"].shape[0])
        if self.step_seconds > 0:
            pl_module.log("train/patches_per_s", self.patches / self.step_seconds, on_step=True, on_epoch=False)

    @property
    def patches_per_second(self) -> float:
        return self.patches / self.step_seconds if self.step_seconds > 0 else 0.0


class TrainingProgress(L.Callback):
    """Drives progress schedules (:mod:`nucseg.schedules`) and ends a budgeted run on time, validated.

    Progress is the larger of the fraction of ``trainer.max_time`` used (Lightning's ``Timer``
    clock: training and its validations) and the fraction of the optimiser steps done. Before
    each optimiser step it is handed to every :class:`~nucseg.schedules.ProgressSchedule`, so a
    run stopped by its budget has annealed to the schedule's final learning rate. When the
    budget is spent it stops the run after that batch.

    Validation on the last epoch: the best checkpoint must be chosen over the annealed end too,
    but ``check_val_every_n_epoch > 1`` skips validation on an epoch that the budget (or an odd
    ``max_epochs``) makes the last. So when the run is about to end (the budget spent, or the
    last epoch begun) this callback sets ``check_val_every_n_epoch`` to 1: Lightning then
    validates once more, on the weights the run ends with. That validation runs after the
    budget, so a run takes ``max_time`` plus one validation (plus the test).

    Attributes:
        progress: progress at the last optimiser step (what the schedule was given).
        time_used: fraction of the budget used when training ended (before the test).
        epochs_trained: optimiser steps over steps per epoch (a stop mid-epoch counts its part).
        stopped_by: ``max_time``, ``max_epochs``/``max_steps`` or ``None`` while running.
        max_time_s: the budget Lightning's ``Timer`` holds (``None``: no budget).
    """

    def __init__(self) -> None:
        self.progress = 0.0
        self.stopped_by: str | None = None
        self.max_time_s: float | None = None
        self.time_used = 0.0
        self.epochs_trained = 0.0
        self._timer: Timer | None = None
        self._schedules: list[ProgressSchedule] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._timer = next((c for c in trainer.callbacks if isinstance(c, Timer) and c.time_remaining() is not None), None)
        self.max_time_s = self._timer.time_remaining() + self._timer.time_elapsed() if self._timer else None
        self._schedules = [c.scheduler for c in trainer.lr_scheduler_configs if isinstance(c.scheduler, ProgressSchedule)]
        others = [type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs if not isinstance(c.scheduler, ProgressSchedule)]
        if self._timer is not None and others:
            log.warning(
                "trainer.max_time is set but %s follows epochs: a run stopped by its budget stops before its "
                "schedule ends; scheduler=cosine_budget follows the budget instead",
                ", ".join(others),
            )

    def _max_steps(self, trainer: L.Trainer) -> float:
        steps = trainer.estimated_stepping_batches
        return float(steps) if steps is not None else math.inf

    def _time_spent(self) -> float:
        return self._timer.time_elapsed() / self.max_time_s if self._timer and self.max_time_s else 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if not self._schedules:
            return
        elapsed = self._timer.time_elapsed() if self._timer else 0.0
        progress = training_progress(elapsed, self.max_time_s, trainer.global_step, self._max_steps(trainer))
        self.progress = float(trainer.strategy.broadcast(progress))  # every DDP rank takes the same step
        for schedule in self._schedules:
            schedule.set_progress(self.progress)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.max_epochs is not None and trainer.max_epochs > 0 and trainer.current_epoch + 1 >= trainer.max_epochs:
            self._validate_at_the_end(trainer)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        spent = bool(trainer.strategy.broadcast(self._time_spent() >= 1.0))
        if spent:
            trainer.should_stop = True
        if trainer.should_stop:  # the budget, or another callback (early stopping, Lightning's Timer)
            self.stopped_by = self.stopped_by or ("max_time" if spent else "callback")
            self._validate_at_the_end(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.time_used = self._time_spent()
        batches = trainer.num_training_batches
        self.epochs_trained = trainer.global_step / batches if batches and math.isfinite(batches) else float(trainer.current_epoch)
        if self.stopped_by is None:
            self.stopped_by = "max_steps" if 0 < trainer.max_steps <= trainer.global_step else "max_epochs"

    @staticmethod
    def _validate_at_the_end(trainer: L.Trainer) -> None:
        if trainer.check_val_every_n_epoch is not None and trainer.check_val_every_n_epoch > 1:
            trainer.check_val_every_n_epoch = 1

    def summary(self, trainer: L.Trainer) -> dict[str, Any]:
        """What ``metrics.json`` records: how far the run got and what ended it."""
        return {
            "max_time_s": self.max_time_s,
            "progress": round(self.progress, 4),
            "time_used": round(self.time_used, 4),
            "stopped_by": self.stopped_by,
            "steps": int(trainer.global_step),
            "epochs_trained": round(self.epochs_trained, 2),
        }


class ExponentialMovingAverage(EMAWeightAveraging):
    """EMA of the weights: validated, checkpointed as ``state_dict`` and tested in place of the raw ones.

    Lightning's callback swaps the averaged weights in for validation and writes them as the
    checkpoint's ``state_dict`` (raw weights under ``current_model_state``, for resuming). On
    loading it always restores the raw weights into the module, so ``trainer.test(ckpt_path=best)``
    would score weights that validation never chose. Outside ``fit`` this subclass leaves the
    averaged ``state_dict`` in place: test, ``evaluate.py`` and ``predict.py`` all see the same
    network that won validation.

    Args:
        decay: weight of the running average per update; ``1 / (1 - decay)`` steps is its horizon.
        update_starting_at_step: first optimiser step that updates the average (``None``: the first).
    """

    def __init__(self, decay: float = 0.999, update_starting_at_step: int | None = None) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ExponentialMovingAverage: decay must be in (0, 1), got {decay}")
        super().__init__(decay=decay, update_starting_at_step=update_starting_at_step)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: the run diverged and was stopped."""


class NonFiniteLossGuard(L.Callback):
    """Stop training at the first NaN or infinite loss, naming the step and the last finite loss.

    Later steps would only train on NaN weights, and the checkpoint chosen on validation would
    hide it; stopping at once keeps the last good checkpoint and says where the run went wrong.
    """

    def __init__(self) -> None:
        self.last_finite_loss: float | None = None
        self.last_finite_step: int | None = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        import math  # here, so that this guard stays one block at the end of the module

        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = float(loss.detach().float()) if hasattr(loss, "detach") else float(loss)
        step = trainer.global_step
        if math.isfinite(value):
            self.last_finite_loss, self.last_finite_step = value, step
            return
        last = (
            f"the last finite loss was {self.last_finite_loss:.6g} at step {self.last_finite_step}"
            if self.last_finite_loss is not None
            else "no step had a finite loss"
        )
        raise NonFiniteLossError(
            f"training loss is {value} at step {step} (epoch {trainer.current_epoch}, batch {batch_idx}); {last}. "
            "Lower optimizer.lr, train in trainer.precision=32-true, or check the data"
        )


def custom_scalars_layout(metrics: Mapping[str, str] = METRIC_TITLES) -> dict[str, dict[str, list[Any]]]:
    """The layout for ``SummaryWriter.add_custom_scalars``: one category per metric (name -> title).

    Each category has three multiline charts: train, validation, and both. Regexes accept
    Lightning's ``_epoch`` suffix so the charts fill whichever form the module logs.
    """
    layout: dict[str, dict[str, list[Any]]] = {}
    for metric, title in metrics.items():
        layout[title] = {
            f"train/{metric}": ["Multiline", [rf"^train/{metric}(_epoch)?$"]],
            f"val/{metric}": ["Multiline", [rf"^val/{metric}(_epoch)?$"]],
            f"train and val {metric}": ["Multiline", [rf"^(train|val)/{metric}(_epoch)?$"]],
        }
    return layout


class TensorBoardLayout(L.Callback):
    """Give TensorBoard a Custom Scalars layout that shows one metric of every run in one chart.

    TensorBoard merges the layouts of all runs under ``--logdir`` (same category titles become one
    category) and matches each chart's tag regexes in every run, so a chart shows the same metric
    of every model of a sweep side by side. Does nothing without a TensorBoard logger, and writes
    each logger's layout once even when ``fit`` is called again (once per writer is allowed).

    Args:
        metrics: metric name -> category title; default the pixel metrics of :mod:`nucseg.schema`.
    """

    def __init__(self, metrics: Mapping[str, str] = METRIC_TITLES) -> None:
        super().__init__()
        self.layout = custom_scalars_layout(metrics)
        self._written: set[int] = set()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Add the layout to each TensorBoard logger's SummaryWriter (global rank 0 only)."""
        from lightning.pytorch.loggers import TensorBoardLogger

        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            writer = logger.experiment if isinstance(logger, TensorBoardLogger) else None
            if writer is None or not hasattr(writer, "add_custom_scalars") or id(writer) in self._written:
                continue
            writer.add_custom_scalars(self.layout)
            writer.flush()
            self._written.add(id(writer))
