"""Lightning callbacks of our own (the others come from Lightning through config)."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn


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
