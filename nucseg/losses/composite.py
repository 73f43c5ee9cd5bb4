"""The weighted sum of named loss terms."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from nucseg.losses.registry import build_loss_term


class LossOutput(NamedTuple):
    """The total loss and each unweighted term by name."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]


class CompositeLoss(nn.Module):
    """Sum of ``weight × term(logits, target)`` over the configured terms.

    Args:
        terms: mapping term name → options; ``weight`` (default 1.0) is taken out, the other
            options go to :func:`~nucseg.losses.build_loss_term` (``channels``) and the term's
            constructor. A term whose name is not a registered loss
            needs a ``name`` option (so one loss can appear twice with different settings).

    Example:
        >>> loss = CompositeLoss({"bce": {}, "focal": {"gamma": 2.0}, "dice": {"weight": 1.0}})
    """

    def __init__(self, terms: Mapping[str, Mapping[str, Any] | None]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("CompositeLoss needs at least one term")
        self.terms = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        for label, options in terms.items():
            options = dict(options or {})
            self.weights[label] = float(options.pop("weight", 1.0))
            name = options.pop("name", label)
            self.terms[label] = build_loss_term(name, **options)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> LossOutput:
        """Weighted sum over the terms; each term checks the shapes its kind needs.

        Args:
            logits: (B, C, H, W) raw network outputs.
            target: the batch's ``target`` (see :mod:`nucseg.data.targets`).
        """
        if logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[2:]:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
        # Under mixed precision the network's logits are bf16/fp16; the loss (sums over a whole
        # batch of pixels) is computed in float32, as the AMP guides recommend.
        logits, target = logits.float(), target.float()
        values = {label: term(logits, target) for label, term in self.terms.items()}
        total = sum(self.weights[label] * value for label, value in values.items())
        return LossOutput(total=total, terms={label: value.detach() for label, value in values.items()})
