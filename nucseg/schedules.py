"""Learning-rate schedules over the run's progress, so that a run that stops on its time budget
stops annealed, on a fast machine or a slow one.

Progress is a number in [0, 1]: the larger of the fraction of the wall-clock budget used
(``trainer.max_time``) and the fraction of the optimiser steps done (``max_epochs`` /
``max_steps``). :class:`nucseg.callbacks.TrainingProgress` measures it, hands it to the
schedule before every optimiser step, and stops the run when the budget is spent. An
epoch-based schedule (``scheduler=cosine``) would instead be cut short wherever the machine is
slower than the one its epochs were counted on.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def training_progress(elapsed_s: float, max_time_s: float | None, step: int, max_steps: float | None) -> float:
    """Fraction of the run done: the larger of time used and steps done, clipped to [0, 1].

    Args:
        elapsed_s: seconds of training so far (validation within the fit included).
        max_time_s: the wall-clock budget, or ``None`` for none.
        step: optimiser steps done.
        max_steps: optimiser steps the run is given (``inf`` or ``None`` for no limit).

    Raises:
        ValueError: if neither a finite budget nor a finite step count is given.
    """
    fractions = []
    if max_time_s is not None and math.isfinite(max_time_s):
        fractions.append(elapsed_s / max_time_s if max_time_s > 0 else 1.0)
    if max_steps is not None and math.isfinite(max_steps):
        fractions.append(step / max_steps if max_steps > 0 else 1.0)
    if not fractions:
        raise ValueError("a progress schedule needs trainer.max_time or a finite trainer.max_epochs/max_steps")
    return min(1.0, max(0.0, max(fractions)))


class ProgressSchedule(LambdaLR):
    """A schedule whose factor depends on the run's progress, not on the count of ``step()`` calls.

    :class:`~nucseg.callbacks.TrainingProgress` calls :meth:`set_progress` before every optimiser
    step; ``step()`` (which Lightning calls once an epoch) only sets the learning rates again for
    the progress last given, so it may be called any number of times.
    """

    def __init__(self, optimizer: Optimizer) -> None:
        self.progress = 0.0
        self.driven = False  # set by TrainingProgress; checked so that a run without it fails loudly
        super().__init__(optimizer, lr_lambda=[self._lambda_for(group["lr"]) for group in optimizer.param_groups])

    def _lambda_for(self, base_lr: float):
        return lambda _: self.factor(self.progress, base_lr)

    def factor(self, progress: float, base_lr: float) -> float:
        """Multiplier of ``base_lr`` at ``progress``."""
        raise NotImplementedError

    def set_progress(self, progress: float) -> None:
        """Move to ``progress`` (clipped to [0, 1]) and set the optimiser's learning rates."""
        self.driven = True
        self.progress = min(1.0, max(0.0, float(progress)))
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base_lr * self.factor(self.progress, base_lr)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def step(self, epoch: int | None = None) -> None:  # noqa: D102 (LambdaLR's)
        if self.last_epoch >= 0 and not self.driven:
            raise RuntimeError(
                f"{type(self).__name__} follows the run's progress: add nucseg.callbacks.TrainingProgress to the "
                "callbacks (it is in conf/callbacks/default.yaml) or use an epoch schedule such as scheduler=cosine"
            )
        super().step()


class CosineToBudget(ProgressSchedule):
    """Cosine decay from each group's learning rate to ``eta_min`` over the run's progress,
    after an optional linear warm-up.

    Args:
        optimizer: the optimiser whose learning rates it sets.
        eta_min: the final learning rate, reached when the budget (time or steps) is spent.
        warmup: fraction of the progress spent rising linearly from ``eta_min`` (0: none).
    """

    def __init__(self, optimizer: Optimizer, eta_min: float = 1e-6, warmup: float = 0.0) -> None:
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"scheduler.warmup must be in [0, 1), got {warmup}")
        self.eta_min = eta_min
        self.warmup = warmup
        super().__init__(optimizer)

    def factor(self, progress: float, base_lr: float) -> float:
        floor = min(1.0, self.eta_min / base_lr) if base_lr > 0 else 0.0
        if progress < self.warmup:
            shape = progress / self.warmup
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * (progress - self.warmup) / (1.0 - self.warmup)))
        return floor + (1.0 - floor) * shape
