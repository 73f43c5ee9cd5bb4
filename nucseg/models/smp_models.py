"""segmentation-models-pytorch networks: LinkNet-34 and any smp architecture × encoder by name."""

from __future__ import annotations

import segmentation_models_pytorch as smp
from torch import nn

from nucseg.models.registry import register_model

SMP_INPUT_DIVISOR = 32


class PretrainedWeightsError(RuntimeError):
    """Pretrained encoder weights were asked for but could not be loaded (offline, say)."""


@register_model("smp")
def build_smp(
    arch: str = "Unet",
    encoder_name: str = "resnet34",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    classes: int = 1,
    **kwargs: object,
) -> nn.Module:
    """Any smp architecture (``Unet``, ``Linknet``, ``FPN``, ``UnetPlusPlus``, ...) with any encoder.

    ``encoder_weights=None`` trains from scratch and never touches the network. Asking for
    weights that cannot be loaded raises :class:`PretrainedWeightsError`: a model silently
    trained from scratch would be a different experiment than the one configured.
    """
    try:
        net = smp.create_model(
            arch, encoder_name=encoder_name, encoder_weights=encoder_weights, in_channels=in_channels,
            classes=classes, **kwargs,
        )
    except (KeyError, ValueError) as error:
        raise ValueError(f"smp cannot build arch={arch!r} encoder={encoder_name!r}: {error}") from error
    except Exception as error:  # noqa: BLE001 - download failures come in many types
        if encoder_weights is None:
            raise
        raise PretrainedWeightsError(
            f"could not load encoder weights {encoder_weights!r} for {encoder_name!r} "
            f"({type(error).__name__}: {error}); set model.net.encoder_weights=null to train from scratch"
        ) from error
    net.input_divisor = SMP_INPUT_DIVISOR
    return net


@register_model("linknet34")
def build_linknet34(encoder_weights: str | None = None, in_channels: int = 3, classes: int = 1) -> nn.Module:
    """LinkNet (Chaurasia & Culurciello 2017) with a ResNet-34 encoder, from smp."""
    return build_smp("Linknet", "resnet34", encoder_weights=encoder_weights, in_channels=in_channels, classes=classes)
