"""LDNet's dynamic kernel head: a per-image segmentation kernel, refined stage by stage.

Instead of one fixed 1x1 classifier shared by every image, LDNet *generates*
the classifier's weights for each image from its global context, and after
every decoder stage a head updater rewrites those weights using the features
inside the lesion as currently predicted. Prediction and kernel improve each
other from coarse to fine.

Shapes: features (B, C, H, W), kernel (B, C, k, k) (one output class),
logits (B, 1, H, W).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .blocks import mask_average_pool
from .validation import check_feature_map, check_positive_int


def dynamic_conv(features: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve each image with its own kernel: (B, C, H, W), (B, C, k, k) -> (B, 1, H, W).

    One grouped convolution does the whole batch: the batch is folded into
    channels and each group (one image) meets its own filter, with no Python
    loop over images.
    """
    check_feature_map(features, None, "dynamic_conv")
    b, c, h, _ = features.shape
    if kernel.dim() != 4 or kernel.shape[:2] != (b, c) or kernel.shape[-1] != kernel.shape[-2]:
        raise ValueError(
            f"dynamic_conv expects a kernel of shape ({b}, {c}, k, k) for features "
            f"{tuple(features.shape)}, got {tuple(kernel.shape)}"
        )
    k = kernel.shape[-1]
    if k % 2 == 0:
        raise ValueError(f"dynamic_conv needs an odd kernel size to keep H and W, got {k}")
    out = F.conv2d(rearrange(features, "b c h w -> 1 (b c) h w"), kernel, padding=k // 2, groups=b)
    return rearrange(out, "1 b h w -> b 1 h w")


class KernelGenerator(nn.Module):
    """Global context of the top feature map -> initial kernel: (B, C_top, h, w) -> (B, C, k, k)."""

    def __init__(self, top_channels: int, dim: int, kernel_size: int = 1) -> None:
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        self.kernel_size = check_positive_int("kernel_size", kernel_size)
        # LDNet uses 16 groups at 512 channels; gcd keeps narrow widths valid.
        self.context = nn.Sequential(
            nn.GroupNorm(math.gcd(16, top_channels), top_channels),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.generate = nn.Linear(top_channels, dim * kernel_size**2)

    def forward(self, top: torch.Tensor) -> torch.Tensor:
        kernel = self.generate(self.context(top))  # (B, C*k*k)
        return rearrange(kernel, "b (c kh kw) -> b c kh kw", c=self.dim, kh=self.kernel_size)


class HeadUpdater(nn.Module):
    """Refine the kernel with the lesion features of the current prediction.

    ``forward(features, kernel, prev_logits)``: (B, C, H, W), (B, C, k, k),
    (B, 1, h, w) -> (B, C, k, k). ``prev_logits`` come from the coarser stage
    and are resized to (H, W) first.

    Both the pooled lesion feature ``f`` and each kernel position ``t`` are
    projected to an "in" and an "out" part; their product gates how much of
    the new evidence (``f_out``) and of the old kernel (``t_out``) the new
    kernel keeps:

    ``new = ReLU(LN(W [sigmoid(LN(W_f g)) * LN(f_out) + sigmoid(LN(W_t g)) * LN(t_out)]))``,
    ``g = t_in * f_in``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        self.lesion_proj = nn.Linear(dim, 2 * dim)
        self.kernel_proj = nn.Linear(dim, 2 * dim)
        self.lesion_gate = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.Sigmoid())
        self.kernel_gate = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.Sigmoid())
        self.lesion_norm = nn.LayerNorm(dim)
        self.kernel_norm = nn.LayerNorm(dim)
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.ReLU(inplace=True))

    def forward(self, features: torch.Tensor, kernel: torch.Tensor, prev_logits: torch.Tensor) -> torch.Tensor:
        check_feature_map(features, self.dim, "HeadUpdater")
        k = kernel.shape[-1]
        logits = F.interpolate(prev_logits, size=features.shape[-2:], mode="bilinear", align_corners=False)
        # LDNet sums features under the mask; we average (mask_average_pool) so that
        # the lesion token does not grow with image size. The LayerNorms after make
        # the two nearly equivalent.
        lesion = rearrange(mask_average_pool(features, logits), "b c 1 -> b 1 c")
        tokens = rearrange(kernel, "b c kh kw -> b (kh kw) c")
        f_in, f_out = self.lesion_proj(lesion).chunk(2, dim=-1)  # (B, 1, C) each
        t_in, t_out = self.kernel_proj(tokens).chunk(2, dim=-1)  # (B, k*k, C) each
        gate = t_in * f_in
        new = self.lesion_gate(gate) * self.lesion_norm(f_out) + self.kernel_gate(gate) * self.kernel_norm(t_out)
        return rearrange(self.out(new), "b (kh kw) c -> b c kh kw", kh=k)
