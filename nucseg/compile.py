"""``torch.compile`` of the network as a training switch (``callbacks=compile``).

The network is compiled in place (:meth:`torch.nn.Module.compile`), so its parameter names and
the checkpoints stay exactly those of the eager network: a checkpoint trained compiled loads and
predicts without compiling. Compilation pays off on GPUs over long runs (fused kernels); its
first steps take seconds to minutes, and each new input shape (whole-image validation) compiles
once more, so short CPU runs are faster without it (docs/performance.md).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torch import nn


def compile_network(net: nn.Module, **options: Any) -> nn.Module:
    """Compile ``net`` in place with :meth:`torch.nn.Module.compile` and return it.

    Args:
        net: the network; its ``state_dict`` keys do not change.
        **options: ``torch.compile`` options (``mode``, ``dynamic``, ``fullgraph``, ``backend``).
    """
    net.compile(**options)
    return net


class CompileNetwork(L.Callback):
    """Compile the module's ``net`` when fitting starts.

    Args:
        mode: ``torch.compile`` mode (``default``, ``reduce-overhead``, ``max-autotune``).
        dynamic: compile for dynamic shapes (``None``: after the first shape change).
        fullgraph: fail instead of falling back to eager around unsupported code.
    """

    def __init__(self, mode: str = "default", dynamic: bool | None = None, fullgraph: bool = False) -> None:
        self.options = {"mode": mode, "dynamic": dynamic, "fullgraph": fullgraph}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            compile_network(pl_module.net, **self.options)
