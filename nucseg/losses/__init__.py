"""Loss composition: named terms from torch and smp, each with a weight, summed.

``CompositeLoss({"bce": {"weight": 1.0}, "focal": {"weight": 1.0, "gamma": 2.0}, "dice": {}})``
returns the weighted sum and every term on its own, so each can be logged. The terms are the
libraries' own losses (binary mode, from logits); nothing here reimplements a loss.
"""

from nucseg.losses.composite import CompositeLoss, LossOutput
from nucseg.losses.registry import available_losses, build_loss_term, register_loss

__all__ = ["CompositeLoss", "LossOutput", "available_losses", "build_loss_term", "register_loss"]
