"""LDNet's dynamic kernel head: a per-image segmentation kernel, refined stage by stage.

Instead of one fixed 1x1 classifier shared by every image, LDNet *generates*
the classifier's weights for each image from its global context, and after
every decoder stage a head updater rewrites those weights using the features
inside the lesion predicted by the previous (coarser) stage. Prediction and kernel improve each
other from coarse to fine.

Shapes: features (B, C, H, W), kernel (B, C, k, k) (one output class),
logits (B, 1, H, W).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .ppm import mask_average_pool
from ..validation import check_choice, check_feature_map, check_kernel_size, check_positive_int


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
        self.kernel_size = check_kernel_size(kernel_size)
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


Pooling = Literal["sum", "mean"]
POOLINGS: tuple[str, ...] = get_args(Pooling)


def lesion_feature(features: torch.Tensor, prev_logits: torch.Tensor, pooling: Pooling = "sum") -> torch.Tensor:
    """Pool the features under the previous stage's prediction: (B, C, H, W), (B, 1, H/2, W/2) -> (B, C).

    The coarser prediction is upsampled x2 (bilinear, ``align_corners=False``)
    and passed through a sigmoid, giving weights ``m_p`` in (0, 1).

    ``"sum"`` (LDNet's code, ``models/LDNet.py``, the ``einsum`` of
    ``HeadUpdator.forward``): ``f = sum_p m_p F_p``. The lesion feature grows
    with the predicted area and with the image size.
    ``"mean"``: ``f = sum_p m_p F_p / (sum_p m_p + 5e-4)``, the area-free
    average that :func:`~esa_tutorial.nn.ppm.mask_average_pool` computes.
    """
    check_choice("pooling", pooling, POOLINGS)
    check_feature_map(features, None, "lesion_feature")
    b, _, h, w = features.shape
    expected = (b, 1, h // 2, w // 2)
    if not isinstance(prev_logits, torch.Tensor) or tuple(prev_logits.shape) != expected or h % 2 or w % 2:
        got = tuple(prev_logits.shape) if isinstance(prev_logits, torch.Tensor) else type(prev_logits).__name__
        raise ValueError(
            f"the head updater expects the previous (coarser) prediction at half the feature size, "
            f"{expected} for features {tuple(features.shape)}, got {got}"
        )
    logits = F.interpolate(prev_logits, scale_factor=2, mode="bilinear", align_corners=False)
    if pooling == "mean":
        return mask_average_pool(features, logits).squeeze(-1)
    return torch.einsum("bhw,bchw->bc", torch.sigmoid(logits[:, 0]), features)


class HeadUpdater(nn.Module):
    """Refine the kernel with the lesion features of the previous prediction.

    ``forward(features, kernel, prev_logits)``: (B, C, H, W), (B, C, k, k),
    (B, 1, H/2, W/2) -> (B, C, k, k). ``prev_logits`` is the coarser stage's
    prediction; :func:`lesion_feature` upsamples it x2 and pools the features
    under it into one lesion feature ``f`` (a plain sum by default, as LDNet's
    code does; ``pooling="mean"`` divides by the predicted area).

    Both ``f`` and each kernel position ``t`` are projected to an "in" and an
    "out" part; their product gates how much of the new evidence (``f_out``)
    and of the old kernel (``t_out``) the new kernel keeps:

    ``new = ReLU(LN(W [sigmoid(LN(W_f g)) * LN(f_out) + sigmoid(LN(W_t g)) * LN(t_out)]))``,
    ``g = t_in * f_in``.

    Parameter names and LDNet's (``HeadUpdator`` in ``models/LDNet.py``):
    ``lesion_proj`` = ``pred_transform_layer``, ``kernel_proj`` =
    ``head_transform_layer``, ``lesion_gate.0/.1`` = ``pred_gate`` /
    ``pred_norm_in``, ``kernel_gate.0/.1`` = ``head_gate`` / ``head_norm_in``,
    ``lesion_norm`` = ``pred_norm_out``, ``kernel_norm`` = ``head_norm_out``,
    ``out.0/.1`` = ``fc_layer`` / ``fc_norm``.
    """

    def __init__(self, dim: int, pooling: Pooling = "sum") -> None:
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        check_choice("pooling", pooling, POOLINGS)
        self.pooling = pooling
        self.lesion_proj = nn.Linear(dim, 2 * dim)
        self.kernel_proj = nn.Linear(dim, 2 * dim)
        self.lesion_gate = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.Sigmoid())
        self.kernel_gate = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.Sigmoid())
        self.lesion_norm = nn.LayerNorm(dim)
        self.kernel_norm = nn.LayerNorm(dim)
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.ReLU(inplace=True))

    def forward(self, features: torch.Tensor, kernel: torch.Tensor, prev_logits: torch.Tensor) -> torch.Tensor:
        check_feature_map(features, self.dim, "HeadUpdater")
        b = features.shape[0]
        if kernel.dim() != 4 or kernel.shape[:2] != (b, self.dim) or kernel.shape[-1] != kernel.shape[-2]:
            raise ValueError(
                f"HeadUpdater expects a kernel of shape ({b}, {self.dim}, k, k), got {tuple(kernel.shape)}"
            )
        k = kernel.shape[-1]
        lesion = rearrange(lesion_feature(features, prev_logits, self.pooling), "b c -> b 1 c")
        tokens = rearrange(kernel, "b c kh kw -> b (kh kw) c")
        f_in, f_out = self.lesion_proj(lesion).chunk(2, dim=-1)  # (B, 1, C) each
        t_in, t_out = self.kernel_proj(tokens).chunk(2, dim=-1)  # (B, k*k, C) each
        gate = t_in * f_in
        new = self.lesion_gate(gate) * self.lesion_norm(f_out) + self.kernel_gate(gate) * self.kernel_norm(t_out)
        return rearrange(self.out(new), "b (kh kw) c -> b c kh kw", kh=k)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, pooling={self.pooling!r}"
