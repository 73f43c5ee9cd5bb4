"""Named loss terms from torch and smp, all taking the network's raw logits and a target.

Three kinds, by what the target is (see :mod:`nucseg.data.targets`):

- binary (``bce``, ``soft_bce``, ``focal``, ``dice``, ``jaccard``, ``lovasz``, ``tversky``,
  ``mcc``): logits (B, 1, H, W) against a {0, 1} float target of the same shape; smp's losses in
  binary mode. ``mcc`` gets ``sigmoid(logits)`` (smp's MCCLoss expects probabilities).
- multiclass (``ce``, ``multiclass_dice``, ``multiclass_focal``, ``multiclass_jaccard``,
  ``multiclass_lovasz``, ``multiclass_tversky``): logits (B, C, H, W) against class indices
  (B, 1, H, W) (any dtype, e.g. the contour target's floats); torch's cross-entropy and smp's
  losses in multiclass mode (softmax inside).
- regression (``mse``): the raw output against a float target of the same shape.

Every term takes an optional ``channels`` option, a list of channel indices selected from both
logits and target before the loss, so one multi-channel target can feed several terms: the
distance target is ``bce`` on channel 0 and ``mse`` on channel 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import segmentation_models_pytorch as smp
import torch
from torch import nn

LossFactory = Callable[..., nn.Module]
_LOSS_FACTORIES: dict[str, LossFactory] = {}
_LOSS_KINDS: dict[str, str] = {}
LOSS_KINDS = ("binary", "multiclass", "regression")


class LossTerm(nn.Module):
    """One library loss behind the (logits, target) contract of its kind.

    Args:
        loss: the library's loss module.
        kind: ``binary``, ``multiclass`` or ``regression`` (how logits and target are shaped).
        name: the registered name, for error messages.
        channels: channels selected from logits and target first (``None``: all).
        activation: applied to the logits before ``loss`` (e.g. ``torch.sigmoid`` for a loss
            that expects probabilities).
    """

    def __init__(
        self,
        loss: nn.Module,
        kind: str,
        name: str,
        channels: Sequence[int] | None = None,
        activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if kind not in LOSS_KINDS:
            raise ValueError(f"loss kind must be one of {LOSS_KINDS}, got {kind!r}")
        self.loss = loss
        self.kind = kind
        self.name = name
        self.channels = None if channels is None else [int(channel) for channel in channels]
        self.activation = activation

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.channels is not None:
            logits = logits[:, self.channels]
            if self.kind != "multiclass":
                target = target[:, self.channels]
        if self.kind == "binary" and logits.shape[1] != 1:
            raise ValueError(
                f"loss term '{self.name}' is binary (1 channel) but gets {logits.shape[1]} channels: pick the loss "
                "of the target (conf/target/*.yaml sets it) or select one channel with channels=[i]"
            )
        if self.kind == "multiclass":
            if target.ndim == 4:
                target = target[:, 0]
            target = target.long()
        elif logits.shape != target.shape:
            raise ValueError(
                f"loss term '{self.name}': logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape"
            )
        if self.activation is not None:
            logits = self.activation(logits)
        return self.loss(logits, target)


def register_loss(name: str, factory: LossFactory, kind: str = "binary") -> None:
    """Make ``factory(**kwargs)`` (a loss module) available as the ``kind`` loss term ``name``."""
    if name in _LOSS_FACTORIES:
        raise ValueError(f"loss '{name}' is already registered")
    if kind not in LOSS_KINDS:
        raise ValueError(f"loss kind must be one of {LOSS_KINDS}, got {kind!r}")
    _LOSS_FACTORIES[name] = factory
    _LOSS_KINDS[name] = kind


def available_losses() -> list[str]:
    """Names accepted by :func:`build_loss_term`."""
    return sorted(_LOSS_FACTORIES)


def loss_kind(name: str) -> str:
    """``binary``, ``multiclass`` or ``regression``: the logits/target contract of term ``name``."""
    _check_name(name)
    return _LOSS_KINDS[name]


def _check_name(name: str) -> None:
    if name not in _LOSS_FACTORIES:
        raise KeyError(f"unknown loss term '{name}'; available: {', '.join(available_losses())}")


def build_loss_term(name: str, channels: Sequence[int] | None = None, **kwargs: object) -> LossTerm:
    """Build the loss term ``name`` with its keyword arguments.

    Args:
        name: a registered term (:func:`available_losses`).
        channels: channels of logits and target the term sees (``None``: all).
        **kwargs: options of the library loss (e.g. ``gamma`` of focal).

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    _check_name(name)
    loss = _LOSS_FACTORIES[name](**kwargs)
    activation = torch.sigmoid if name == "mcc" else None
    return LossTerm(loss, _LOSS_KINDS[name], name, channels=channels, activation=activation)


def _bce(pos_weight: float | None = None, **kwargs: object) -> nn.Module:
    weight = None if pos_weight is None else torch.tensor([float(pos_weight)])
    return nn.BCEWithLogitsLoss(pos_weight=weight, **kwargs)


def _ce(weight: Sequence[float] | None = None, **kwargs: object) -> nn.Module:
    class_weights = None if weight is None else torch.tensor([float(value) for value in weight])
    return nn.CrossEntropyLoss(weight=class_weights, **kwargs)


def _with_mode(loss_class: type[nn.Module], mode: str) -> LossFactory:
    def factory(**kwargs: object) -> nn.Module:
        return loss_class(mode=mode, **kwargs)

    return factory


register_loss("bce", _bce)
register_loss("soft_bce", smp.losses.SoftBCEWithLogitsLoss)
register_loss("mcc", smp.losses.MCCLoss)
register_loss("ce", _ce, kind="multiclass")
register_loss("mse", nn.MSELoss, kind="regression")
for _name, _class in (
    ("focal", smp.losses.FocalLoss),
    ("dice", smp.losses.DiceLoss),
    ("jaccard", smp.losses.JaccardLoss),
    ("lovasz", smp.losses.LovaszLoss),
    ("tversky", smp.losses.TverskyLoss),
):
    register_loss(_name, _with_mode(_class, smp.losses.BINARY_MODE))
    register_loss(f"multiclass_{_name}", _with_mode(_class, smp.losses.MULTICLASS_MODE), kind="multiclass")
