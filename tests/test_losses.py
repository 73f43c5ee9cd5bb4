"""Loss composition against direct torch / smp calls."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch

from nucseg.losses import CompositeLoss, available_losses


@pytest.fixture
def logits_and_target():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 16, 16, generator=generator)
    target = (torch.rand(2, 1, 16, 16, generator=generator) > 0.6).float()
    return logits, target


def test_default_composition_is_bce_plus_focal_plus_dice(logits_and_target):
    logits, target = logits_and_target
    output = CompositeLoss({"bce": {}, "focal": {"gamma": 2.0}, "dice": {}})(logits, target)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    focal = smp.losses.FocalLoss("binary", gamma=2.0)(logits, target)
    dice = smp.losses.DiceLoss("binary", from_logits=True)(logits, target)
    assert torch.allclose(output.total, bce + focal + dice)
    assert torch.allclose(output.terms["bce"], bce)
    assert torch.allclose(output.terms["focal"], focal)
    assert torch.allclose(output.terms["dice"], dice)


def test_weights_scale_terms_and_terms_are_reported_unweighted(logits_and_target):
    logits, target = logits_and_target
    output = CompositeLoss({"dice": {"weight": 0.5}, "lovasz": {"weight": 2.0}})(logits, target)
    dice = smp.losses.DiceLoss("binary")(logits, target)
    lovasz = smp.losses.LovaszLoss("binary")(logits, target)
    assert torch.allclose(output.total, 0.5 * dice + 2.0 * lovasz)
    assert torch.allclose(output.terms["lovasz"], lovasz)


def test_a_loss_can_appear_twice_under_two_labels(logits_and_target):
    logits, target = logits_and_target
    loss = CompositeLoss({"tv_recall": {"name": "tversky", "alpha": 0.3, "beta": 0.7}, "tversky": {}})
    output = loss(logits, target)
    expected = smp.losses.TverskyLoss("binary", alpha=0.3, beta=0.7)(logits, target)
    assert torch.allclose(output.terms["tv_recall"], expected)
    assert set(output.terms) == {"tv_recall", "tversky"}


def test_registry_offers_smp_terms():
    assert {"bce", "focal", "dice", "jaccard", "lovasz", "tversky"} <= set(available_losses())


def test_unknown_term_and_shape_mismatch_are_errors(logits_and_target):
    with pytest.raises(KeyError, match="unknown loss term 'dcie'"):
        CompositeLoss({"dcie": {}})
    logits, target = logits_and_target
    with pytest.raises(ValueError, match="differ in shape"):
        CompositeLoss({"bce": {}})(logits, target[:, :, :8])


def test_loss_is_differentiable(logits_and_target):
    logits, target = logits_and_target
    logits.requires_grad_(True)
    CompositeLoss({"bce": {}, "focal": {}, "dice": {}})(logits, target).total.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
