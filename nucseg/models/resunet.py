"""The deep residual U-Net (Zhang, Liu & Wang, IEEE GRSL 2018, "Road Extraction by Deep Residual U-Net").

As in the paper: pre-activation residual units (BN → ReLU → 3×3 conv, twice) with a 1×1
projection shortcut; the first unit starts with a plain convolution; down-sampling is a stride-2
first convolution (no pooling); a bridge unit at the bottom; the decoder up-samples ×2,
concatenates the encoder feature and applies a residual unit; a 1×1 convolution gives the logits.
The paper uses 3 encoder levels + bridge with 64, 128, 256, 512 channels: ``width=64, depth=3``.
"""

from __future__ import annotations

import torch
from torch import nn

from nucseg.models.registry import register_model


class ResidualUnit(nn.Module):
    """Pre-activation residual unit; ``first=True`` omits the leading BN-ReLU (network input)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, first: bool = False) -> None:
        super().__init__()
        pre: list[nn.Module] = [] if first else [nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(
            *pre,
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        )
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.body(features) + self.shortcut(features)


class ResUNet(nn.Module):
    """Residual U-Net; H and W must be multiples of ``2**depth``.

    Args:
        in_channels: image channels.
        classes: output channels.
        width: channels of the first level (64 in the paper), doubling per level.
        depth: stride-2 steps, the bridge included (3 in the paper).
    """

    def __init__(self, in_channels: int = 3, classes: int = 1, width: int = 64, depth: int = 3) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"ResUNet needs depth >= 1 and width >= 1, got depth={depth}, width={width}")
        channels = [width * 2**level for level in range(depth + 1)]
        self.input_divisor = 2**depth
        self.encoder = nn.ModuleList([ResidualUnit(in_channels, channels[0], first=True)])
        for level in range(1, depth + 1):  # the last one is the bridge
            self.encoder.append(ResidualUnit(channels[level - 1], channels[level], stride=2))
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.decoder = nn.ModuleList(
            ResidualUnit(channels[level + 1] + channels[level], channels[level]) for level in reversed(range(depth))
        )
        self.head = nn.Conv2d(channels[0], classes, kernel_size=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        features = images
        for unit in self.encoder:
            features = unit(features)
            skips.append(features)
        skips.pop()  # the bridge output is not a skip
        for unit in self.decoder:
            features = unit(torch.cat([self.upsample(features), skips.pop()], dim=1))
        return self.head(features)


@register_model("resunet")
def build_resunet(in_channels: int = 3, classes: int = 1, width: int = 64, depth: int = 3) -> ResUNet:
    """Residual U-Net; see :class:`ResUNet`."""
    return ResUNet(in_channels=in_channels, classes=classes, width=width, depth=depth)
