"""Lightning callbacks of our own (the others come from Lightning through config)."""

from __future__ import annotations

import time
from typing import Any

import lightning as L


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
