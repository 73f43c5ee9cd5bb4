"""Named binary segmentation loss terms, all taking (logits, target) of shape (B, 1, H, W)."""

from __future__ import annotations

from collections.abc import Callable

import segmentation_models_pytorch as smp
import torch
from torch import nn

LossFactory = Callable[..., nn.Module]
_LOSS_FACTORIES: dict[str, LossFactory] = {}


def register_loss(name: str, factory: LossFactory) -> None:
    """Make ``factory(**kwargs)`` available as the loss term ``name``."""
    if name in _LOSS_FACTORIES:
        raise ValueError(f"loss '{name}' is already registered")
    _LOSS_FACTORIES[name] = factory


def available_losses() -> list[str]:
    """Names accepted by :func:`build_loss_term`."""
    return sorted(_LOSS_FACTORIES)


def build_loss_term(name: str, **kwargs: object) -> nn.Module:
    """Build the loss term ``name`` with its keyword arguments.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    try:
        factory = _LOSS_FACTORIES[name]
    except KeyError:
        raise KeyError(f"unknown loss term '{name}'; available: {', '.join(available_losses())}") from None
    return factory(**kwargs)


def _bce(pos_weight: float | None = None, **kwargs: object) -> nn.Module:
    weight = None if pos_weight is None else torch.tensor([float(pos_weight)])
    return nn.BCEWithLogitsLoss(pos_weight=weight, **kwargs)


def _binary(loss_class: type[nn.Module]) -> LossFactory:
    def factory(**kwargs: object) -> nn.Module:
        return loss_class(mode=smp.losses.BINARY_MODE, **kwargs)

    return factory


register_loss("bce", _bce)
register_loss("soft_bce", smp.losses.SoftBCEWithLogitsLoss)
register_loss("focal", _binary(smp.losses.FocalLoss))
register_loss("dice", _binary(smp.losses.DiceLoss))
register_loss("jaccard", _binary(smp.losses.JaccardLoss))
register_loss("lovasz", _binary(smp.losses.LovaszLoss))
register_loss("tversky", _binary(smp.losses.TverskyLoss))
register_loss("mcc", smp.losses.MCCLoss)
