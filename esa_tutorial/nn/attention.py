"""Attention whose queries are the pixels of a feature map.

:class:`PixelAttention` holds what ESA, full self-attention (MHSA) and the
lesion-aware cross-attention (LCA) share: a bias-free 1x1 convolution to
queries, keys and values (``to_qkv``), scaled dot-product attention per head,
and an output projection (``to_out``). They differ only in which tokens the
keys and values come from, the :meth:`PixelAttention.tokens` hook.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..validation import check_dropout, check_feature_map, check_mask_logits, check_positive_int, check_same_dtype
from .ppm import mask_average_pool


class PixelAttention(nn.Module):
    """Multi-head attention from every pixel of (B, C, H, W) to a set of tokens.

    Args:
        dim: channels C of the input and of the output.
        heads: number of attention heads.
        dim_head: channels per head; ``inner_dim = heads * dim_head``.
        dropout: dropout after the output projection (training only).

    The parameter names (``to_qkv.weight``, ``to_out.0.weight``,
    ``to_out.0.bias``) match LDNet's code, so its checkpoints load with
    ``strict=True``. As there, the output projection is dropped when a single
    head already has ``dim`` channels.
    """

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        self.heads = check_positive_int("heads", heads)
        self.dim_head = check_positive_int("dim_head", dim_head)
        self.dropout = check_dropout(dropout)
        self.inner_dim = heads * dim_head
        self.scale = dim_head**-0.5
        self.to_qkv = nn.Conv2d(dim, 3 * self.inner_dim, kernel_size=1, bias=False)
        self.project_out = not (heads == 1 and dim_head == dim)
        self.to_out: nn.Module = (
            nn.Sequential(nn.Linear(self.inner_dim, dim), nn.Dropout(dropout))
            if self.project_out
            else nn.Identity()
        )

    def tokens(self, t: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
        """Turn projected keys or values (B, inner_dim, H, W) into tokens (B, inner_dim, n_kv)."""
        raise NotImplementedError

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error unless ``x`` is (B, dim, H, W) in the module's dtype and device."""
        who = type(self).__name__
        check_feature_map(x, self.dim, who)
        check_same_dtype(x, self.to_qkv.weight, who)

    def qkv(self, x: torch.Tensor, *context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries of every pixel and keys and values of the tokens, split into heads.

        (B, C, H, W) -> ``q`` (B, heads, H*W, dim_head), ``k`` and ``v``
        (B, heads, n_kv, dim_head). One 1x1 convolution projects all three.
        """
        q, k, v = self.to_qkv(x).chunk(3, dim=1)  # each (B, inner_dim, H, W)
        q = rearrange(q, "b (h d) x y -> b h (x y) d", h=self.heads)
        k, v = (
            rearrange(self.tokens(t, *context), "b (h d) n -> b h n d", h=self.heads) for t in (k, v)
        )
        return q, k, v

    def attention(self, x: torch.Tensor, *context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention weights and values of the literal form.

        Returns ``attn`` (B, heads, H*W, n_kv), rows summing to one, and
        ``v`` (B, heads, n_kv, dim_head).
        """
        q, k, v = self.qkv(x, *context)
        attn = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1)
        return attn, v

    def forward_reference(self, x: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
        """The literal form, as the paper's code computes it: (B, C, H, W) -> (B, H*W, C)."""
        self.check_input(x)
        return self._reference(x, *context)

    def forward_sdpa(self, x: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
        """The literal form with :func:`torch.nn.functional.scaled_dot_product_attention`. (B, C, H, W) -> (B, H*W, C).

        PyTorch's fused attention kernel replaces the scores, softmax and
        weighted sum; its default scale is ``dim_head**-0.5``, the same as ours.
        """
        self.check_input(x)
        return self._sdpa(x, *context)

    # The unchecked bodies: a forward that has checked its input once calls these.
    def _reference(self, x: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
        attn, v = self.attention(x, *context)
        return self.to_out(rearrange(attn @ v, "b h n d -> b n (h d)"))

    def _sdpa(self, x: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(*self.qkv(x, *context), scale=self.scale)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))

    def forward(self, x: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H*W, C)."""
        return self.forward_reference(x, *context)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, dim_head={self.dim_head}"


class MHSA(PixelAttention):
    """Full multi-head self-attention over all H*W pixels: the O(N^2) baseline.

    Same parameters as :class:`~esa_tutorial.ESA`; (B, C, H, W) -> (B, H*W, C).
    Its attention matrix has (H*W)^2 entries per head.
    """

    def tokens(self, t: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
        return t.flatten(2)


class LCA(PixelAttention):
    """Lesion-aware cross-attention: pixels attend to the mask-pooled lesion token.

    (B, C, H, W) features and (B, 1, H, W) mask logits -> (B, H*W, C).
    Keys and values are one token each, so the softmax over them is exactly 1:
    a chapter of the book shows what that means for the queries.
    """

    def tokens(self, t: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
        (mask_logits,) = context
        return mask_average_pool(t, mask_logits)

    def forward(self, x: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """(B, C, H, W), (B, 1, H, W) -> (B, H*W, C)."""
        self.check_input(x)
        check_mask_logits(mask_logits, x, "LCA")
        return self._reference(x, mask_logits)
