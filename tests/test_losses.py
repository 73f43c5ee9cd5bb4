"""Loss composition against direct torch / smp calls."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch

from nucseg.losses import CompositeLoss, available_losses, loss_kind


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


# -- every registered term against the library called directly ------------------------------------
def _binary_case(generator):
    logits = torch.randn(2, 1, 16, 16, generator=generator)
    return logits, (torch.rand(2, 1, 16, 16, generator=generator) > 0.6).float()


def _multiclass_case(generator):
    logits = torch.randn(2, 3, 16, 16, generator=generator)
    return logits, torch.randint(0, 3, (2, 1, 16, 16), generator=generator).float()


def _regression_case(generator):
    return torch.randn(2, 2, 16, 16, generator=generator), torch.rand(2, 2, 16, 16, generator=generator)


F = torch.nn.functional
# name → (case, expected(logits, target)): the library's own loss with the right transform.
CONTRACT = {
    "bce": (_binary_case, lambda x, y: F.binary_cross_entropy_with_logits(x, y)),
    "soft_bce": (_binary_case, lambda x, y: smp.losses.SoftBCEWithLogitsLoss()(x, y)),
    "focal": (_binary_case, lambda x, y: smp.losses.FocalLoss("binary")(x, y)),
    "dice": (_binary_case, lambda x, y: smp.losses.DiceLoss("binary")(x, y)),
    "jaccard": (_binary_case, lambda x, y: smp.losses.JaccardLoss("binary")(x, y)),
    "lovasz": (_binary_case, lambda x, y: smp.losses.LovaszLoss("binary")(x, y)),
    "tversky": (_binary_case, lambda x, y: smp.losses.TverskyLoss("binary")(x, y)),
    # smp's MCCLoss expects probabilities: the term applies the sigmoid.
    "mcc": (_binary_case, lambda x, y: smp.losses.MCCLoss()(torch.sigmoid(x), y)),
    "ce": (_multiclass_case, lambda x, y: F.cross_entropy(x, y[:, 0].long())),
    "multiclass_dice": (_multiclass_case, lambda x, y: smp.losses.DiceLoss("multiclass")(x, y[:, 0].long())),
    "multiclass_focal": (_multiclass_case, lambda x, y: smp.losses.FocalLoss("multiclass")(x, y[:, 0].long())),
    "multiclass_jaccard": (_multiclass_case, lambda x, y: smp.losses.JaccardLoss("multiclass")(x, y[:, 0].long())),
    "multiclass_lovasz": (_multiclass_case, lambda x, y: smp.losses.LovaszLoss("multiclass")(x, y[:, 0].long())),
    "multiclass_tversky": (_multiclass_case, lambda x, y: smp.losses.TverskyLoss("multiclass")(x, y[:, 0].long())),
    "mse": (_regression_case, lambda x, y: F.mse_loss(x, y)),
}


def test_the_contract_covers_every_registered_term():
    assert set(CONTRACT) == set(available_losses())


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_every_term_on_logits_equals_the_library_called_directly(name):
    case, expected = CONTRACT[name]
    logits, target = case(torch.Generator().manual_seed(1))
    output = CompositeLoss({name: {}})(logits, target)
    assert torch.allclose(output.total, expected(logits, target), atol=1e-6)
    assert torch.isfinite(output.total)


def test_channels_select_one_channel_of_a_multichannel_target():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 2, 8, 8, generator=generator)
    target = torch.cat([(torch.rand(2, 1, 8, 8, generator=generator) > 0.5).float(), torch.rand(2, 1, 8, 8)], dim=1)
    output = CompositeLoss({"bce": {"channels": [0]}, "mse": {"channels": [1]}})(logits, target)
    assert torch.allclose(output.terms["bce"], F.binary_cross_entropy_with_logits(logits[:, :1], target[:, :1]))
    assert torch.allclose(output.terms["mse"], F.mse_loss(logits[:, 1:], target[:, 1:]))


def test_a_binary_term_on_a_multichannel_output_names_the_fix():
    logits, target = _multiclass_case(torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match="'dice' is binary"):
        CompositeLoss({"dice": {}})(logits, target)


def test_loss_kinds():
    assert loss_kind("bce") == "binary" and loss_kind("ce") == "multiclass" and loss_kind("mse") == "regression"
