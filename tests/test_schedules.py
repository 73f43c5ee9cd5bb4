"""Progress schedules: a run that stops on its time budget stops annealed and validated."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from nucseg.callbacks import TrainingProgress
from nucseg.schedules import CosineToBudget, training_progress

BASE_LR, ETA_MIN = 0.1, 1e-4


def test_progress_is_the_larger_fraction_clipped():
    assert training_progress(30.0, 60.0, 10, 100) == 0.5
    assert training_progress(6.0, 60.0, 50, 100) == 0.5
    assert training_progress(90.0, 60.0, 0, math.inf) == 1.0
    assert training_progress(0.0, None, 25, 100) == 0.25
    with pytest.raises(ValueError, match="needs trainer.max_time or a finite"):
        training_progress(1.0, None, 3, math.inf)


def test_cosine_to_budget_goes_from_the_base_rate_to_eta_min():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE_LR)
    schedule = CosineToBudget(optimizer, eta_min=ETA_MIN)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(BASE_LR)
    schedule.set_progress(0.5)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(ETA_MIN + (BASE_LR - ETA_MIN) / 2)
    optimizer.step()
    schedule.step()  # Lightning's per-epoch call: the same progress, the same rate
    assert schedule.get_last_lr()[0] == pytest.approx(ETA_MIN + (BASE_LR - ETA_MIN) / 2)
    schedule.set_progress(1.7)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(ETA_MIN)


def test_warmup_rises_linearly_then_decays():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE_LR)
    schedule = CosineToBudget(optimizer, eta_min=0.0, warmup=0.2)
    schedule.set_progress(0.1)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(BASE_LR / 2)
    schedule.set_progress(0.6)  # half-way through the decay
    assert optimizer.param_groups[0]["lr"] == pytest.approx(BASE_LR / 2)
    with pytest.raises(ValueError, match="warmup must be in"):
        CosineToBudget(optimizer, warmup=1.0)


def test_a_progress_schedule_without_its_callback_fails_loudly():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE_LR)
    schedule = CosineToBudget(optimizer)
    optimizer.step()
    with pytest.raises(RuntimeError, match="TrainingProgress"):
        schedule.step()


class _FakeClock:
    """Lightning's Timer reads ``time.monotonic``; here time moves only when a training step says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class _Regression(L.LightningModule):
    def __init__(self, clock: _FakeClock, seconds_per_step: float, schedule) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.clock, self.seconds_per_step, self.schedule = clock, seconds_per_step, schedule
        self.learning_rates: list[float] = []
        self.validated_at_step: list[int] = []

    def training_step(self, batch, batch_idx):
        self.learning_rates.append(self.optimizers().param_groups[0]["lr"])
        self.clock.now += self.seconds_per_step
        inputs, targets = batch
        return torch.nn.functional.mse_loss(self.layer(inputs), targets)

    def validation_step(self, batch, batch_idx):
        inputs, targets = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.layer(inputs), targets))
        if batch_idx == 0:
            self.validated_at_step.append(self.global_step)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=BASE_LR)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.schedule(optimizer), "interval": "epoch"}}


def _loader() -> DataLoader:
    inputs = torch.randn(56, 4, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(inputs, inputs.sum(dim=1, keepdim=True)), batch_size=8)  # 7 steps an epoch


def _fit(tmp_path, monkeypatch, schedule, max_time, max_epochs=-1, check_val_every_n_epoch=3):
    clock = _FakeClock()
    monkeypatch.setattr("lightning.pytorch.callbacks.timer.time", SimpleNamespace(monotonic=clock.monotonic))
    module = _Regression(clock, seconds_per_step=0.01, schedule=schedule)
    progress = TrainingProgress()
    trainer = L.Trainer(
        max_epochs=max_epochs,
        max_time=max_time,
        check_val_every_n_epoch=check_val_every_n_epoch,
        callbacks=[progress, ModelCheckpoint(dirpath=tmp_path, monitor="val/loss")],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=_loader(), val_dataloaders=_loader())
    return module, progress, trainer


def test_a_run_stopped_by_its_budget_ends_annealed_and_validated(tmp_path, monkeypatch):
    """100 steps of 0.01 s in a 1 s budget: stopped mid-epoch (the 15th, 7 steps an epoch), off
    the every-4-epochs validation grid."""
    schedule = lambda optimizer: CosineToBudget(optimizer, eta_min=ETA_MIN)  # noqa: E731
    module, progress, trainer = _fit(tmp_path, monkeypatch, schedule, max_time={"seconds": 1}, check_val_every_n_epoch=4)
    assert trainer.global_step % 7 != 0 and trainer.global_step % 28 != 0  # neither an epoch end nor the grid
    assert progress.stopped_by == "max_time" and progress.max_time_s == pytest.approx(1.0)
    assert 95 <= trainer.global_step <= 101
    assert module.learning_rates[0] == pytest.approx(BASE_LR)
    assert module.learning_rates[-1] == pytest.approx(ETA_MIN, abs=1e-3 * BASE_LR)  # progress ≥ 0.99
    assert all(a >= b for a, b in zip(module.learning_rates, module.learning_rates[1:], strict=False))
    assert module.validated_at_step[-1] == trainer.global_step, "the annealed end must be validated"
    summary = progress.summary(trainer)
    assert summary["stopped_by"] == "max_time" and summary["progress"] >= 0.99 and summary["time_used"] >= 1.0
    assert summary["epochs_trained"] == pytest.approx(trainer.global_step / 7, abs=0.01)
    json.dumps(summary)


def test_without_a_budget_the_schedule_follows_the_steps_and_validates_the_last_epoch(tmp_path, monkeypatch):
    schedule = lambda optimizer: CosineToBudget(optimizer, eta_min=ETA_MIN)  # noqa: E731
    module, progress, trainer = _fit(tmp_path, monkeypatch, schedule, max_time=None, max_epochs=4)
    assert trainer.global_step == 28 and progress.stopped_by == "max_epochs"
    expected = [ETA_MIN + (BASE_LR - ETA_MIN) * 0.5 * (1 + math.cos(math.pi * step / 28)) for step in range(28)]
    assert module.learning_rates == pytest.approx(expected)
    assert module.validated_at_step == [21, 28], "epoch 3 by the grid, epoch 4 because it is the last"


def test_an_epoch_schedule_cut_by_the_budget_is_left_alone_with_a_warning(tmp_path, monkeypatch, caplog):
    schedule = lambda optimizer: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=30, eta_min=ETA_MIN)  # noqa: E731
    with caplog.at_level("WARNING", logger="nucseg.callbacks"):
        module, progress, _ = _fit(tmp_path, monkeypatch, schedule, max_time={"seconds": 1})
    assert "follows epochs" in caplog.text
    assert module.learning_rates[-1] > 0.5 * BASE_LR, "14 of 30 cosine epochs: far from annealed"
    assert progress.stopped_by == "max_time"


@pytest.mark.slow
def test_a_budgeted_pipeline_run_records_precision_and_progress(compose_train):
    from nucseg.pipeline import train

    cfg = compose_train(["scheduler=cosine_budget", "trainer.max_time=00:00:00:03", "trainer.max_epochs=50"])
    metrics = train(cfg)
    written = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert written["precision"]["requested"] == "auto" and written["precision"]["used"] in {"bf16-mixed", "32-true"}
    assert written["precision"]["reason"]
    assert written["steps"] == written["progress"]["steps"] > 0 and metrics["progress"]["max_time_s"] == 3.0
    assert written["progress"]["stopped_by"] in {"max_time", "max_epochs"}
