"""The blocks around the attention layers in LDNet: the ESA and LCA blocks (pre-norm feed-forward, residual).

Submodule names follow LDNet's code (``ESAlayer``, ``LCAlayer``,
``ff.norm``, ``ff.fn.net``) so that its block checkpoints load with
``strict=True``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from einops import rearrange
from torch import nn

from .attention import LCA
from .esa import ESA
from ..validation import check_dropout, check_positive_int

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
