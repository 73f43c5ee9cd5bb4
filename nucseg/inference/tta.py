"""Test-time augmentation over the dihedral group D4 (flips x quarter turns).

Nuclei have no preferred orientation, so a network's prediction of a flipped or rotated tile,
turned back, is an equally valid prediction of the tile. Averaging those predictions removes
part of the network's orientation-specific error. Each transform is inverted exactly (flips and
``torch.rot90`` only move pixels), so the averaged map stays pixel-aligned with the input.

Logits are averaged, not probabilities: the caller gets logits back (the test loss is computed
from them) and averaging in logit space is the geometric-mean ensemble of the probabilities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

TTA_MODES = ("none", "flips", "d4")


@dataclass(frozen=True)
class D4Transform:
    """One element of D4: flip the width axis (optional), then ``quarter_turns`` rotations.

    Attributes:
        quarter_turns: Counter-clockwise quarter turns in the (H, W) plane, 0 to 3.
        flip: Whether the width axis is flipped before rotating.
    """

    quarter_turns: int
    flip: bool

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """Transform a (..., H, W) tensor."""
        if self.flip:
            images = images.flip(-1)
        if self.quarter_turns:
            images = torch.rot90(images, self.quarter_turns, dims=(-2, -1))
        return images

    def invert(self, images: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`apply` on a (..., H', W') tensor (rotate back, then flip back)."""
        if self.quarter_turns:
            images = torch.rot90(images, -self.quarter_turns, dims=(-2, -1))
        if self.flip:
            images = images.flip(-1)
        return images


IDENTITY = D4Transform(0, False)


def tta_transforms(mode: str) -> tuple[D4Transform, ...]:
    """The transforms averaged by a TTA mode.

    Args:
        mode: ``"none"`` (identity only), ``"flips"`` (identity, horizontal flip, vertical flip,
            both flips = half turn) or ``"d4"`` (all eight flips x quarter turns).

    Raises:
        ValueError: For an unknown mode.
    """
    if mode == "none":
        return (IDENTITY,)
    if mode == "flips":
        # flip W; flip W then half turn == flip H; half turn == flip H and W
        return (IDENTITY, D4Transform(0, True), D4Transform(2, True), D4Transform(2, False))
    if mode == "d4":
        return tuple(D4Transform(turns, flip) for flip in (False, True) for turns in range(4))
    raise ValueError(f"tta: unknown mode {mode!r}, expected one of {', '.join(TTA_MODES)}")


def tta_forward(
    predict_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, mode: str = "none"
) -> torch.Tensor:
    """Average ``predict_fn`` over the TTA transforms of ``images``, each prediction inverted.

    Args:
        predict_fn: Maps (b, c, h, w) to (b, C, h, w); must accept (b, c, w, h) too when ``mode``
            is ``"d4"`` and tiles are not square (any fully convolutional network does).
        images: A batch (b, c, h, w).
        mode: See :func:`tta_transforms`.

    Returns:
        The mean of the inverted predictions, in the dtype ``predict_fn`` returned.
    """
    transforms = tta_transforms(mode)
    total: torch.Tensor | None = None
    for transform in transforms:
        prediction = transform.invert(predict_fn(transform.apply(images)))
        total = prediction if total is None else total + prediction
    assert total is not None
    return total / len(transforms) if len(transforms) > 1 else total
