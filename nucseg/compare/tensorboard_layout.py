"""A Lightning callback that gives TensorBoard a Custom Scalars layout for comparing models.

TensorBoard merges the layouts of all runs under ``--logdir`` (same category titles become one
category), and each chart's tags are regular expressions matched in every run, so one chart
shows the same metric of every model of a sweep side by side.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback

METRICS: tuple[tuple[str, str], ...] = (
    ("Loss", "loss"),
    ("Dice", "dice"),
    ("IoU", "iou"),
    ("Accuracy", "accuracy"),
)


def custom_scalars_layout(metrics: tuple[tuple[str, str], ...] = METRICS) -> dict[str, dict[str, list[Any]]]:
    """The layout for ``SummaryWriter.add_custom_scalars``.

    One category per metric with three multiline charts: train, validation, and both. Regexes
    accept Lightning's ``_epoch`` suffix so the charts fill whichever form the module logs.
    """
    layout: dict[str, dict[str, list[Any]]] = {}
    for title, metric in metrics:
        layout[title] = {
            f"train/{metric}": ["Multiline", [rf"^train/{metric}(_epoch)?$"]],
            f"val/{metric}": ["Multiline", [rf"^val/{metric}(_epoch)?$"]],
            f"train and val {metric}": ["Multiline", [rf"^(train|val)/{metric}(_epoch)?$"]],
        }
    return layout


class TensorBoardLayout(Callback):
    """Write :func:`custom_scalars_layout` into every attached TensorBoard logger at fit start.

    Does nothing without a TensorBoard logger, and writes each logger's layout once even when
    ``fit`` is called again (``add_custom_scalars`` may be called once per writer).
    """

    def __init__(self, metrics: tuple[tuple[str, str], ...] = METRICS) -> None:
        super().__init__()
        self.layout = custom_scalars_layout(metrics)
        self._written: set[int] = set()

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Add the layout to each TensorBoard logger's SummaryWriter (global rank 0 only)."""
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            writer = _summary_writer(logger)
            if writer is None or id(writer) in self._written:
                continue
            writer.add_custom_scalars(self.layout)
            writer.flush()
            self._written.add(id(writer))


def _summary_writer(logger: Any) -> Any:
    """The logger's ``torch.utils.tensorboard.SummaryWriter``, or None for other loggers."""
    from lightning.pytorch.loggers import TensorBoardLogger

    if not isinstance(logger, TensorBoardLogger):
        return None
    experiment = logger.experiment
    return experiment if hasattr(experiment, "add_custom_scalars") else None
