"""Efficient Self-Attention (ESA) of LDNet (Zhang et al., MICCAI 2022).

Queries are all H*W pixels; keys and values are the projected map pooled by a
pyramid (1x1, 3x3, 5x5 -> 35 tokens), so the attention matrix is N x 35
instead of N x N.

Three forward passes compute the same function with the same parameters:

``reference``
    the literal form of the paper's code: project every pixel to q, k, v,
    pool k and v, attend, project out.
``sdpa``
    the literal form with :func:`torch.nn.functional.scaled_dot_product_attention`
    over the pooled keys and values: what PyTorch's fused attention gives.
``folded`` (default)
    the same algebra reordered. A bias-free 1x1 convolution and average
    pooling are both linear, so pooling the input once and projecting the 35
    pooled tokens gives the same keys and values. The query projection and the
    scale fold into the keys (``A_h = W_q,h^T K_h``, C x 35 per head) and the
    output projection into the values (``V'_h = V_h W_out,h^T``, 35 x C), so
    the work over the N pixels is two matrix products and a softmax over 35
    columns. Chapter 9 derives it step by step.

    Folding costs a fixed ``2 * 35 * inner_dim * C * 4`` FLOPs per image (and
    the input is pooled with two small products,
    :func:`~esa_tutorial.pyramid_pool`), so on maps of a few dozen pixels
    (and with heads much narrower than LDNet's 64 channels) the literal form
    does less work. ``folded`` therefore runs the literal form wherever that
    counts fewer FLOPs, or not enough more to pay for the folded form's smaller
    products (:func:`literal_is_cheaper`); both are exact, so only the time
    differs.
    :meth:`ESA.forward_folded` always folds.
"""

from __future__ import annotations

from typing import Literal, Sequence, get_args

import torch
from einops import rearrange

from .attention import PixelAttention
from .folded import folded_attention
from .ppm import PPM, num_tokens, pyramid_pool
from ..validation import check_choice

EsaImpl = Literal["folded", "reference", "sdpa"]
IMPLS: tuple[str, ...] = get_args(EsaImpl)


# The folded form's products are small (per image, 35 columns wide) and run at a lower rate than the literal
# form's large ones, so folding must save FLOPs by a margin to save time. On the book's 2-core EPYC (2026-11-26,
# float32, batches 1 to 16) folded ran 1.02x to 1.23x slower than literal where it saved 3.5% to 6.6% of the FLOPs
# (7x7 maps at C = 256 and 512) and faster where it saved 22% (8x8 at C = 256). A margin of 1.15 folds from
# 13% saved on.
FOLDING_MARGIN = 1.15


def literal_is_cheaper(height: int, width: int, dim: int, heads: int, dim_head: int,
                       pooling_sizes: Sequence[int] = (1, 3, 5), project_out: bool = True,
                       margin: float = FOLDING_MARGIN) -> bool:
    """True where ESA's literal form is the cheaper one on an H x W map: where its FLOPs are
    below ``margin`` times the folded form's (:data:`FOLDING_MARGIN`; ``margin=1`` compares FLOPs alone).

    With LDNet's sizes (8 heads of 64, pyramid (1, 3, 5)) that is square maps
    up to 7x7 at C = 256 and up to 6x6 at C = 64.

    Literal, per pixel: the q, k, v projection ``6IC``, scores and weighted sum
    ``4 n_kv I`` and the output projection ``2IC`` (I = heads * dim_head).
    Folded: ``4 n_kv heads C`` per pixel, the pyramid pooling's two products
    (:func:`~esa_tutorial.pyramid_pool`, ``2C(S HW + S^2 W)`` with
    ``S = sum(pooling_sizes)``) and, per image, the keys, values, ``A`` and
    ``V'`` from the pooled tokens, ``2 n_kv I C (3 + 1)``. These are the counts
    :func:`~esa_tutorial.cost.count_flops` reports for each form.
    """
    inner, out, pixels = heads * dim_head, int(project_out), height * width
    n_kv, s = num_tokens(pooling_sizes), sum(pooling_sizes)
    literal = pixels * (6 * inner * dim + 4 * n_kv * inner + 2 * inner * dim * out)
    pooling = 2 * dim * (s * pixels + s * s * width)
    folded = pixels * 4 * n_kv * heads * dim + pooling + 2 * n_kv * inner * dim * (3 + out)
    return literal < margin * folded


class ESA(PixelAttention):
    """Efficient Self-Attention: (B, C, H, W) -> (B, H*W, C).

    Args:
        dim: channels C of the input and the output.
        heads: attention heads (8 in LDNet).
        dim_head: channels per head (64 in LDNet).
        dropout: dropout after the output projection.
        pooling_sizes: grid sizes of the pyramid; keys and values are
            ``sum(s*s)`` tokens (35 for (1, 3, 5)).
        impl: ``"folded"`` (fast, default), ``"reference"`` (literal form) or
            ``"sdpa"`` (literal form with PyTorch's fused attention). All give
            the same outputs and gradients up to rounding, under autograd,
            ``torch.func``, ``torch.compile`` and autocast alike.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        pooling_sizes: Sequence[int] = (1, 3, 5),
        impl: EsaImpl = "folded",
    ) -> None:
        super().__init__(dim, heads, dim_head, dropout)
        self.ppm = PPM(pooling_sizes)
        self.impl = impl

    @property
    def impl(self) -> EsaImpl:
        return self._impl

    @impl.setter
    def impl(self, value: EsaImpl) -> None:
        self._impl = check_choice("impl", value, IMPLS)

    def tokens(self, t: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
        return self.ppm(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H*W, C)."""
        self.check_input(x)  # once; the bodies below do not check again
        if self.impl == "sdpa":
            return self._sdpa(x)
        if self.impl == "reference" or self.literal_is_cheaper(x):
            return self._reference(x)
        return self._folded(x)

    def literal_is_cheaper(self, x: torch.Tensor) -> bool:
        """Whether ``forward`` runs the literal form for (B, C, H, W) ``x`` (see :func:`literal_is_cheaper`)."""
        return literal_is_cheaper(x.shape[-2], x.shape[-1], self.dim, self.heads, self.dim_head,
                                  self.ppm.pooling_sizes, self.project_out)

    def folded_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image matrices of the folded form.

        Returns ``a`` (B, C, heads*n_kv), the scaled query-key product
        ``W_q,h^T K_h / sqrt(d)`` for all heads side by side, and ``vo``
        (B, heads*n_kv, C), the values already multiplied by the output
        projection.
        """
        b, h = x.shape[0], self.heads
        w_q, w_kv = self.to_qkv.weight.flatten(1).split([self.inner_dim, 2 * self.inner_dim])
        pooled = rearrange(pyramid_pool(x, self.ppm.pooling_sizes), "b c n -> c (b n)")  # every image
        # One product per weight over every image's tokens, instead of B small ones: same FLOPs, better GEMMs.
        k, v = rearrange(w_kv @ pooled, "(two h d) bn -> two h d bn", two=2, h=h)
        w_q = rearrange(w_q * self.scale, "(h d) c -> h c d", h=h)
        a = rearrange(torch.bmm(w_q, k), "h c (b n) -> b c (h n)", b=b)
        v = v.transpose(1, 2)  # (h, B*n_kv, d)
        if self.project_out:
            v = torch.bmm(v, rearrange(self.to_out[0].weight, "c (h d) -> h d c", h=h))
        return a, rearrange(v, "h (b n) c -> b (h n) c", b=b)

    def forward_folded(self, x: torch.Tensor) -> torch.Tensor:
        """The folded form: two matrix products over the pixels. (B, C, H, W) -> (B, H*W, C).

        Always folds, whatever the map size. The pixel-side work runs blocked
        over the pixels and recomputes the probabilities in the backward pass
        (:func:`~esa_tutorial.nn.folded.folded_attention`), so no (B, N, heads*35)
        tensor is kept for autograd.
        """
        self.check_input(x)
        return self._folded(x)

    def _folded(self, x: torch.Tensor) -> torch.Tensor:
        a, vo = self.folded_weights(x)
        bias = self.to_out[0].bias if self.project_out else None
        out = folded_attention(x.flatten(2), a, vo, bias, self.heads)  # (B, N, C)
        if self.project_out:
            out = self.to_out[1](out)  # dropout, as the reference applies it after the bias
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, impl={self.impl!r}"
