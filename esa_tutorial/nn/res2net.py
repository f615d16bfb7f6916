"""Res2Net-50 v1b (26w x 4s), the encoder of LDNet's paper, written from the Res2Net paper.

Res2Net (Gao et al., "Res2Net: A New Multi-scale Backbone Architecture",
TPAMI 2021) replaces the 3x3 convolution of a ResNet bottleneck by ``scale``
groups of ``width`` channels: the first group goes through unchanged (or is
pooled in the first block of a stage), every other group gets a 3x3
convolution of its own input *plus the previous group's output*, so each
group sees a larger receptive field than the one before. The ``v1b`` variant
(the one LDNet loads, ``res2net50_v1b_26w_4s``) also changes the stem and the
shortcuts, as ResNet-D does:

* deep stem: three 3x3 convolutions, 3 -> 32 (stride 2) -> 32 -> 64, then
  batch norm, ReLU and a 3x3 max pool of stride 2;
* a shortcut that changes resolution first averages 2x2 patches
  (``ceil_mode=True``, ``count_include_pad=False``), then applies a 1x1
  convolution and batch norm, instead of a strided 1x1 convolution.

The module names are the Res2Net authors' (``conv1.0 ... conv1.6``, ``bn1``,
``layerN.i.{conv1,bn1,convs.j,bns.j,conv3,bn3,downsample.1,downsample.2}``),
which are also timm's ``res2net50d``: a state dict of either loads here
strictly, apart from the ImageNet classifier ``fc.*``, which LDNet does not
use (:func:`esa_tutorial.nn.ldnet_weights.load_res2net_weights`).

``Res2Net.forward`` returns five feature maps, fine to coarse::

    e1 (B,   64, H/2,  W/2)    the stem after bn1 + ReLU, before the max pool
    e2 (B,  256, H/4,  W/4)    layer1
    e3 (B,  512, H/8,  W/8)    layer2
    e4 (B, 1024, H/16, W/16)   layer3
    e5 (B, 2048, H/32, W/32)   layer4

Initial weights are torch's defaults (in :class:`~esa_tutorial.LDNet`, drawn
part by part from its ``seed``); the authors initialise convolutions
kaiming-normal (fan out). Either is replaced when ImageNet weights are loaded.

:class:`Res2NetEncoder` is LDNet's encoder: these five maps with 1x1
convolutions (with bias) reducing e2..e5 to 64, 128, 256 and 512 channels; e1
stays at 64. It has 23,669,352 + 1,393,600 parameters.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..validation import check_feature_map, check_positive_int

# Blocks per stage of each depth (Res2Net paper, Table 1; the same as ResNet's).
DEPTHS: dict[int, tuple[int, int, int, int]] = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
EXPANSION = 4  # a bottleneck's output has 4x its ``planes`` channels
STAGE_PLANES = (64, 128, 256, 512)
LDNET_REDUCED = (64, 128, 256, 512)  # LDNet's 1x1 reductions of e2..e5


class Bottle2neck(nn.Module):
    """Res2Net bottleneck: (B, C_in, H, W) -> (B, 4 * planes, H/stride, W/stride).

    1x1 conv to ``width * scale`` channels, split into ``scale`` groups of
    ``width = floor(planes * base_width / 64)``; groups 1..scale-1 get a 3x3
    conv (in the first block of a stage, ``first=True``, each group on its own
    input, with ``stride``; otherwise on its input plus the previous group's
    output); the last group is passed on (average-pooled 3x3 in a first
    block, so that it matches the others' resolution); 1x1 conv back to
    ``4 * planes``; residual; ReLU.
    """

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        base_width: int = 26,
        scale: int = 4,
        first: bool = False,
    ) -> None:
        super().__init__()
        if scale < 2:
            raise ValueError(f"scale must be at least 2 (groups of channels), got {scale}")
        width = int(math.floor(planes * base_width / 64.0))
        self.width, self.scale, self.first = width, scale, first
        self.conv1 = nn.Conv2d(in_channels, width * scale, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.convs = nn.ModuleList(
            nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False) for _ in range(scale - 1)
        )
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(scale - 1))
        # The untouched last group must shrink like the convolved ones in a strided block.
        self.pool = nn.AvgPool2d(3, stride=stride, padding=1) if first else None
        self.conv3 = nn.Conv2d(width * scale, planes * EXPANSION, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        groups = torch.split(out, self.width, dim=1)
        outs = []
        sp = groups[0]
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            # The hierarchical connection: each group also sees the previous group's output.
            sp = groups[i] if i == 0 or self.first else sp + groups[i]
            sp = self.relu(bn(conv(sp)))
            outs.append(sp)
        outs.append(self.pool(groups[-1]) if self.pool is not None else groups[-1])
        out = self.bn3(self.conv3(torch.cat(outs, dim=1)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """v1b shortcut: 2x2 average pool (identity at stride 1), 1x1 conv, BN; keys ``.1`` and ``.2``."""
    pool: nn.Module = (
        nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
    )
    return nn.Sequential(pool, nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))


class Res2Net(nn.Module):
    """Res2Net v1b without its classifier: (B, 3, H, W) -> [e1, ..., e5] (see the module docstring).

    Args:
        layers: blocks per stage, e.g. ``DEPTHS[50] == (3, 4, 6, 3)``.
        base_width: channels per group at ``planes = 64`` (26 in ``26w``).
        scale: groups per bottleneck (4 in ``4s``).
    """

    def __init__(self, layers: Sequence[int] = DEPTHS[50], base_width: int = 26, scale: int = 4) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"layers must give the blocks of 4 stages, got {tuple(layers)}")
        for n in layers:
            check_positive_int("blocks per stage", n)
        self.layers = tuple(layers)
        self.base_width = check_positive_int("base_width", base_width)
        self.scale = check_positive_int("scale", scale)
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
        )
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        for i, (planes, blocks) in enumerate(zip(STAGE_PLANES, self.layers)):
            stride = 1 if i == 0 else 2
            out_channels = planes * EXPANSION
            stage = [Bottle2neck(in_channels, planes, stride, _shortcut(in_channels, out_channels, stride),
                                 base_width, scale, first=True)]
            stage += [Bottle2neck(out_channels, planes, base_width=base_width, scale=scale)
                      for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            in_channels = out_channels
        self.channels = (64,) + tuple(p * EXPANSION for p in STAGE_PLANES)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> [e1 (B, 64, H/2, W/2), e2 (B, 256, H/4, W/4), ..., e5 (B, 2048, H/32, W/32)]."""
        check_feature_map(x, 3, "Res2Net")
        e1 = self.relu(self.bn1(self.conv1(x)))
        features = [e1]
        x = self.maxpool(e1)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features


def res2net50_v1b(**kwargs: object) -> Res2Net:
    """Res2Net-50 v1b 26w x 4s (``res2net50_v1b_26w_4s``, timm's ``res2net50d``), no classifier."""
    return Res2Net(DEPTHS[50], **kwargs)  # type: ignore[arg-type]


class Res2NetEncoder(nn.Module):
    """LDNet's encoder: Res2Net-50 v1b and 1x1 reductions. (B, 3, H, W) -> five maps, fine to coarse.

    Channels ``(64, 64, 128, 256, 512)`` at strides 2, 4, 8, 16, 32: e1 is the
    stem's output as it is, e2..e5 go through ``reduce[0..3]``
    (``Conv2d(256, 64, 1)`` ... ``Conv2d(2048, 512, 1)``, with bias, as in
    LDNet's ``reduce2..5``). ``backbone`` holds the Res2Net in the authors'
    key layout, so ImageNet weights load into it directly.
    """

    def __init__(self) -> None:
        super().__init__()
        self.backbone = res2net50_v1b()
        self.reduce = nn.ModuleList(
            nn.Conv2d(c_in, c_out, 1) for c_in, c_out in zip(self.backbone.channels[1:], LDNET_REDUCED)
        )
        self.channels = (self.backbone.channels[0],) + LDNET_REDUCED
        self.in_channels = 3

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> [(B, 64, H/2, W/2), (B, 64, H/4, W/4), (B, 128, H/8, W/8), (B, 256, ...), (B, 512, ...)]."""
        e1, *rest = self.backbone(x)
        return [e1] + [reduce(e) for reduce, e in zip(self.reduce, rest)]

    def load_pretrained(self, path: object) -> None:
        """Load ImageNet Res2Net-50 v1b weights (authors' or timm ``res2net50d`` file) into ``backbone``."""
        from .ldnet_weights import load_res2net_weights  # ldnet_weights imports this module

        load_res2net_weights(self.backbone, path)
