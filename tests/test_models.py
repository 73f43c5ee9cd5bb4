"""The model registry: shapes, divisors, errors, and offline behaviour of pretrained weights."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch

from nucseg.models import PretrainedWeightsError, available_models, build_model, count_parameters
from nucseg.models.resunet import ResUNet
from nucseg.models.unet import UNet


@pytest.mark.parametrize(
    ("name", "kwargs", "divisor"),
    [
        ("unet", {"width": 4, "depth": 3}, 8),
        ("resunet", {"width": 4, "depth": 3}, 8),
        ("linknet34", {}, 32),
        ("smp", {"arch": "FPN", "encoder_name": "resnet18"}, 32),
    ],
)
def test_every_model_maps_images_to_one_logit_map_of_the_same_size(name, kwargs, divisor):
    net = build_model(name, **kwargs)
    assert net.input_divisor == divisor
    images = torch.rand(2, 3, 64, 96)
    assert net(images).shape == (2, 1, 64, 96)


def test_registry_lists_the_built_in_models():
    assert {"unet", "resunet", "linknet34", "smp"} <= set(available_models())


def test_unknown_model_names_the_choices():
    with pytest.raises(KeyError, match="unte.*available: .*linknet34.*unet"):
        build_model("unte")


def test_unet_width_and_depth_set_channels_like_the_paper():
    net = UNet(width=64, depth=4)
    assert [block[0].out_channels for block in net.encoder] == [64, 128, 256, 512, 1024]
    assert count_parameters(UNet(width=64, depth=4, batch_norm=False)) == 31_031_745


def test_resunet_has_residual_units_with_projection_shortcuts():
    net = ResUNet(width=64, depth=3)
    assert [unit.shortcut[0].out_channels for unit in net.encoder] == [64, 128, 256, 512]
    assert [unit.shortcut[0].stride for unit in net.encoder] == [(1, 1), (2, 2), (2, 2), (2, 2)]


def test_missing_pretrained_weights_are_a_clear_error_not_a_silent_fallback(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(smp, "create_model", offline)
    with pytest.raises(PretrainedWeightsError, match="encoder_weights=null"):
        build_model("linknet34", encoder_weights="imagenet")


def test_smp_with_an_unknown_encoder_is_a_value_error():
    with pytest.raises((ValueError, KeyError), match="no_such_encoder"):
        build_model("smp", arch="Unet", encoder_name="no_such_encoder")


@pytest.mark.parametrize("target", ["binary", "contour", "distance", "hv"])
def test_output_channels_follow_the_target_config(compose_train, target):
    from hydra.utils import instantiate

    for model in ("unet", "resunet", "linknet34", "smp"):
        assert compose_train([f"model={model}", f"target={target}"]).model.net.classes == {"binary": 1, "contour": 3, "distance": 2, "hv": 3}[target]
    net = instantiate(compose_train([f"target={target}"]).model.net).eval()  # a tiny U-Net
    with torch.no_grad():
        assert net(torch.rand(1, 3, 32, 32)).shape[1] == {"binary": 1, "contour": 3, "distance": 2, "hv": 3}[target]
