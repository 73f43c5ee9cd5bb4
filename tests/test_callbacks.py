"""The EMA callback: the weights validation chose are the weights the test scores."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from nucseg.callbacks import ExponentialMovingAverage


class _Regression(L.LightningModule):
    """A one-layer model whose test step records the weights it is scored with."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.tested_weight: torch.Tensor | None = None

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        return torch.nn.functional.mse_loss(self.layer(inputs), targets)

    def validation_step(self, batch, batch_idx):
        inputs, targets = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.layer(inputs), targets))

    def test_step(self, batch, batch_idx):
        self.tested_weight = self.layer.weight.detach().clone()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def _loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 4, generator=generator)
    return DataLoader(TensorDataset(inputs, inputs.sum(dim=1, keepdim=True)), batch_size=8)


def test_the_test_scores_the_averaged_weights_the_checkpoint_holds(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="val/loss", mode="min")
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[ExponentialMovingAverage(decay=0.9), checkpoint],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    module = _Regression()
    trainer.fit(module, train_dataloaders=_loader(), val_dataloaders=_loader())
    saved = torch.load(checkpoint.best_model_path, weights_only=False)
    averaged, raw = saved["state_dict"]["layer.weight"], saved["current_model_state"]["layer.weight"]
    assert not torch.allclose(averaged, raw), "after 16 SGD steps the average must differ from the last weights"

    trainer.test(module, dataloaders=_loader(), ckpt_path=checkpoint.best_model_path, weights_only=False)
    assert torch.equal(module.tested_weight, averaged)


def test_decay_outside_the_open_unit_interval_is_refused():
    with pytest.raises(ValueError, match="decay must be in"):
        ExponentialMovingAverage(decay=1.0)
