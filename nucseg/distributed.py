"""Per-process metric states for ``ddp_spawn`` on CPU.

``torch.multiprocessing`` moves every CPU tensor handed to a spawned process into shared memory.
Lightning copies the parameters and buffers of the module afterwards, but torchmetrics states are
neither, so on CPU the spawned processes would all add into the same state tensors and the
synchronised metric would count every image ``world_size`` times. On a GPU each process moves the
module to its own device, which copies the states, so nothing is shared there.
"""

from __future__ import annotations

import lightning as L
import torch
from torchmetrics import Metric


@torch.no_grad()
def unshare_metric_states(module: torch.nn.Module) -> int:
    """Give every torchmetrics state tensor in ``module`` storage of its own; returns how many were copied."""
    copied = 0
    for metric in module.modules():
        if not isinstance(metric, Metric):
            continue
        for name in metric._defaults:
            value = getattr(metric, name)
            if isinstance(value, torch.Tensor):
                setattr(metric, name, value.clone())
                copied += 1
            elif isinstance(value, list):
                setattr(metric, name, [item.clone() for item in value])
                copied += len(value)
    return copied


class UnshareMetricStates(L.Callback):
    """Copy the module's metric states in each process at setup (needed for ``ddp_spawn`` on CPU; harmless elsewhere)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        unshare_metric_states(pl_module)
