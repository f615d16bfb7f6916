"""The blocks around the attention layers in LDNet: ESA block, mask pooling, LCA.

Submodule names follow LDNet's code (``ESAlayer``, ``LCAlayer``,
``ff.norm``, ``ff.fn.net``) so that its block checkpoints load with
``strict=True``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from einops import rearrange
from torch import nn

from .attention import PixelAttention
from .esa import ESA
from .validation import (
    autocast_enabled,
    check_dropout,
    check_feature_map,
    check_positive_int,
    check_same_dtype,
)

MASK_EPS = 5e-4  # LDNet's epsilon: keeps an all-background mask from dividing by zero


class PreNorm(nn.Module):
    """LayerNorm, then ``fn``: (B, N, C) -> fn's output."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class FeedForward(nn.Module):
    """Linear(dim, hidden) -> GELU -> Dropout -> Linear(hidden, dim) -> Dropout, per token."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def check_mask_logits(mask_logits: object, x: torch.Tensor, who: str) -> torch.Tensor:
    """Check that ``mask_logits`` is a floating (B, 1, H, W) tensor matching ``x`` (B, C, H, W).

    Rule for masks that are not logits: bool and integer tensors are refused,
    because a sigmoid of 0/1 gives 0.5/0.73, not a mask. Pass logits instead,
    e.g. ``torch.where(mask, 10.0, -10.0)``. A float dtype other than ``x``'s
    is refused too (outside autocast), instead of silently promoting.
    """
    b, _, h, w = x.shape
    if not isinstance(mask_logits, torch.Tensor) or tuple(mask_logits.shape) != (b, 1, h, w):
        got = tuple(mask_logits.shape) if isinstance(mask_logits, torch.Tensor) else type(mask_logits).__name__
        raise ValueError(f"{who} expects mask logits of shape {(b, 1, h, w)}, got {got}")
    if not mask_logits.is_floating_point():
        raise TypeError(
            f"{who} expects floating-point mask logits (a sigmoid is applied to them), got "
            f"{mask_logits.dtype}; a 0/1 mask is not logits: pass e.g. torch.where(mask, 10.0, -10.0)"
        )
    autocast = autocast_enabled(x.device.type)
    if mask_logits.dtype != x.dtype and not autocast:
        raise TypeError(
            f"{who}: the features are {x.dtype} but the mask logits are {mask_logits.dtype}; "
            f"convert the mask, e.g. mask_logits.to({x.dtype})"
        )
    if mask_logits.device != x.device:
        raise ValueError(f"{who}: the features are on {x.device} but the mask logits on {mask_logits.device}")
    return mask_logits


def mask_average_pool(x: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Average ``x`` over the lesion, weighting each pixel by ``sigmoid(mask_logits)``.

    Args:
        x: (B, C, H, W) features.
        mask_logits: (B, 1, H, W) floating-point logits of the previous
            prediction, in ``x``'s dtype (bool/integer masks are refused, see
            ``check_mask_logits``).

    Returns:
        The pooled token, shape (B, C, 1), ``sum(x * m) / (sum(m) + 5e-4)`` per
        channel with ``m = sigmoid(mask_logits)``.
    """
    check_feature_map(x, None, "mask_average_pool")
    check_mask_logits(mask_logits, x, "mask_average_pool")
    m = torch.sigmoid(mask_logits)
    area = m.sum(dim=(-2, -1)) + MASK_EPS  # (B, 1)
    return ((x * m).sum(dim=(-2, -1)) / area).unsqueeze(-1)


class LCA(PixelAttention):
    """Lesion-aware cross-attention: pixels attend to the mask-pooled lesion token.

    (B, C, H, W) features and (B, 1, H, W) mask logits -> (B, H*W, C).
    Keys and values are one token each, so the softmax over them is exactly 1:
    chapter 5 shows what that means for the queries.
    """

    def tokens(self, t: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
        (mask_logits,) = context
        return mask_average_pool(t, mask_logits)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error unless ``x`` is (B, dim, H, W) in the module's dtype (autocast allowed)."""
        check_feature_map(x, self.dim, "LCA")
        check_same_dtype(x, self.to_qkv.weight, "LCA")

    def forward(self, x: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """(B, C, H, W), (B, 1, H, W) -> (B, H*W, C)."""
        self.check_input(x)
        check_mask_logits(mask_logits, x, "LCA")
        return self.forward_reference(x, mask_logits)


class _TokenBlock(nn.Module):
    """Attention with a residual, then a pre-norm feed-forward with a residual.

    (B, C, H, W) -> (B, C, H, W); subclasses name the attention layer.
    """

    def __init__(self, dim: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        check_positive_int("mlp_dim", mlp_dim)
        self.ff = PreNorm(dim, FeedForward(dim, mlp_dim, check_dropout(dropout)))

    def _refine(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        h = x.shape[-2]
        out = attended + rearrange(x, "b c h w -> b (h w) c")
        out = self.ff(out) + out
        return rearrange(out, "b (h w) c -> b c h w", h=h)


class ESABlock(_TokenBlock):
    """ESA + residual, then pre-norm feed-forward + residual: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        mlp_dim: int = 512,
        dropout: float = 0.0,
        pooling_sizes: Sequence[int] = (1, 3, 5),
    ) -> None:
        super().__init__(dim, mlp_dim, dropout)
        self.ESAlayer = ESA(dim, heads, dim_head, dropout, pooling_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._refine(x, self.ESAlayer(x))


class LCABlock(_TokenBlock):
    """LCA + residual, then pre-norm feed-forward + residual.

    (B, C, H, W) features, (B, 1, H, W) mask logits -> (B, C, H, W).
    """

    def __init__(
        self, dim: int, heads: int = 8, dim_head: int = 64, mlp_dim: int = 512, dropout: float = 0.0
    ) -> None:
        super().__init__(dim, mlp_dim, dropout)
        self.LCAlayer = LCA(dim, heads, dim_head, dropout)

    def forward(self, x: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        return self._refine(x, self.LCAlayer(x, mask_logits))
