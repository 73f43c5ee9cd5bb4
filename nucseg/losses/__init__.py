"""Loss composition: named terms from torch and smp, each with a weight, summed.

``CompositeLoss({"bce": {"weight": 1.0}, "focal": {"weight": 1.0, "gamma": 2.0}, "dice": {}})``
returns the weighted sum and every term on its own, so each can be logged. The terms are the
libraries' own losses, taking logits: binary, multiclass and regression terms, named in
:mod:`nucseg.losses.registry`; nothing here reimplements a loss.
"""

from nucseg.losses.composite import CompositeLoss, LossOutput
from nucseg.losses.registry import LossTerm, available_losses, build_loss_term, loss_kind, register_loss

__all__ = ["CompositeLoss", "LossOutput", "LossTerm", "available_losses", "build_loss_term", "loss_kind", "register_loss"]
