"""What train.py hands a sweeper is a validation number, never a test one."""

from types import SimpleNamespace

import pytest
import torch

from nucseg.pipeline import optimized_metric, validation_summary


def test_optimized_metric_reads_the_validation_block_not_the_test_block() -> None:
    metrics = {"validation": {"metric": "val/dice", "best": 0.71}, "test": {"dice": 0.93}}
    assert optimized_metric(metrics) == pytest.approx(0.71)
    assert optimized_metric({"validation": {"metric": "val/dice", "best": None}, "test": {"dice": 0.9}}) != 0.9


def test_validation_summary_takes_the_checkpoint_callbacks_best_score() -> None:
    checkpoint = SimpleNamespace(monitor="val/dice", best_model_score=torch.tensor(0.625))
    trainer = SimpleNamespace(callback_metrics={"val/dice": torch.tensor(0.5)})
    assert validation_summary("val/dice", checkpoint, trainer) == {"metric": "val/dice", "best": 0.625}


def test_validation_summary_refuses_a_test_metric() -> None:
    with pytest.raises(ValueError, match="must be a validation metric"):
        validation_summary("test/dice", None, SimpleNamespace(callback_metrics={}))
