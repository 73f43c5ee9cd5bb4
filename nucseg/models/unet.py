"""The classic U-Net (Ronneberger, Fischer & Brox, MICCAI 2015).

Kept as in the paper: two 3×3 convolutions + ReLU per level, 2×2 max pooling down, 2×2 transposed
convolutions up, skip connections by concatenation, channels doubling per level from ``width``
(64 in the paper). Two deliberate departures, both standard today: convolutions are padded so the
output has the input's size (the paper's valid convolutions need overlap-tile cropping), and
batch normalisation after each convolution is on by default (``batch_norm=False`` is the paper).
"""

from __future__ import annotations

import torch
from torch import nn

from nucseg.models.registry import register_model


def _conv_block(in_channels: int, out_channels: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for channels_in in (in_channels, out_channels):
        layers.append(nn.Conv2d(channels_in, out_channels, kernel_size=3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """U-Net with ``depth`` poolings; H and W must be multiples of ``2**depth``.

    Args:
        in_channels: image channels (3 for RGB).
        classes: output channels (1 logit map for binary nuclei).
        width: channels of the first level (64 in the paper).
        depth: number of down-sampling steps (4 in the paper).
        batch_norm: batch normalisation after each convolution.
    """

    def __init__(
        self, in_channels: int = 3, classes: int = 1, width: int = 64, depth: int = 4, batch_norm: bool = True
    ) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"UNet needs depth >= 1 and width >= 1, got depth={depth}, width={width}")
        channels = [width * 2**level for level in range(depth + 1)]
        self.input_divisor = 2**depth
        self.encoder = nn.ModuleList()
        previous = in_channels
        for level_channels in channels:
            self.encoder.append(_conv_block(previous, level_channels, batch_norm))
            previous = level_channels
        self.pool = nn.MaxPool2d(2)
        self.upsamplers = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in reversed(range(depth)):
            self.upsamplers.append(nn.ConvTranspose2d(channels[level + 1], channels[level], 2, stride=2))
            self.decoder.append(_conv_block(2 * channels[level], channels[level], batch_norm))
        self.head = nn.Conv2d(channels[0], classes, kernel_size=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        features = images
        for index, block in enumerate(self.encoder):
            features = block(features)
            if index < len(self.encoder) - 1:
                skips.append(features)
                features = self.pool(features)
        for upsample, block in zip(self.upsamplers, self.decoder, strict=True):
            features = block(torch.cat([skips.pop(), upsample(features)], dim=1))
        return self.head(features)


@register_model("unet")
def build_unet(
    in_channels: int = 3, classes: int = 1, width: int = 64, depth: int = 4, batch_norm: bool = True
) -> UNet:
    """Classic U-Net; see :class:`UNet`."""
    return UNet(in_channels=in_channels, classes=classes, width=width, depth=depth, batch_norm=batch_norm)
