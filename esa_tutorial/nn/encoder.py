"""A compact CNN encoder standing in for LDNet's Res2Net-50.

LDNet reads five feature maps from an ImageNet-pretrained Res2Net-50 (strides
2, 4, 8, 16, 32) and reduces them with 1x1 convolutions to 64, 64, 128, 256
and 512 channels. Those weights cannot be downloaded here, and a 25 M-parameter
backbone would not train on a laptop CPU in a chapter's time budget, so this
encoder keeps the *interface* (same strides, channels ``w, w, 2w, 4w, 8w``;
``width=64`` gives LDNet's channel counts) with one residual block per stage.
"""

from __future__ import annotations

import torch
from torch import nn

from ..validation import check_feature_map, check_positive_int


class ConvBNReLU(nn.Sequential):
    """3x3 (or ``kernel_size``) convolution, batch norm, ReLU: (B, C_in, H, W) -> (B, C_out, H/s, W/s)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, bias: bool = False
    ) -> None:
        super().__init__(
            # No bias by default: in training the batch norm right after cancels it (LDNet's
            # decoder keeps one, see esa_tutorial.nn.ldnet.DecoderBlock).
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=bias),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    """ResNet basic block that halves the resolution: (B, C_in, H, W) -> (B, C_out, H/2, W/2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(in_channels, out_channels, stride=2)
        self.conv2 = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        # The shortcut must change resolution and channels the same way as the main path.
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class Encoder(nn.Module):
    """Stem plus four residual stages.

    (B, 3, H, W) -> five maps at strides 2, 4, 8, 16, 32 with
    ``width * (1, 1, 2, 4, 8)`` channels, ordered from fine to coarse.
    """

    def __init__(self, width: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        check_positive_int("width", width)
        self.channels = tuple(width * m for m in (1, 1, 2, 4, 8))
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.stem = ConvBNReLU(in_channels, width, kernel_size=7, stride=2)
        pairs = zip(self.channels[:-1], self.channels[1:])
        self.stages = nn.ModuleList(ResidualBlock(c_in, c_out) for c_in, c_out in pairs)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_feature_map(x, self.in_channels, "Encoder")
        features = [self.stem(x)]
        for stage in self.stages:
            features.append(stage(features[-1]))
        return features
