"""Pyramid Pooling Module (PPM): the 35 keys and values of ESA.

Adaptive average pooling splits an H x W map into s x s bins, bin ``i`` along
an axis of length L covering ``[floor(i*L/s), ceil((i+1)*L/s))``. Bins overlap
when L is not a multiple of s, and every bin holds at least one pixel, so any
H, W >= 1 works, even a map smaller than the grid.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..validation import check_feature_map, check_mask_logits, check_pooling_sizes


def adaptive_bins(length: int, bins: int) -> list[tuple[int, int]]:
    """Half-open ``(start, stop)`` index ranges of adaptive average pooling.

    ``adaptive_bins(7, 3) == [(0, 3), (2, 5), (4, 7)]``: the same ranges that
    ``torch.nn.AdaptiveAvgPool1d(3)`` averages over on a length-7 axis.
    """
    return [(math.floor(i * length / bins), math.ceil((i + 1) * length / bins)) for i in range(bins)]


def num_tokens(pooling_sizes: Sequence[int]) -> int:
    """Number of pooled tokens, ``sum(s * s)``: 35 for (1, 3, 5)."""
    return sum(s * s for s in pooling_sizes)


def pooling_matrix(length: int, pooling_sizes: Sequence[int], device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """Adaptive average pooling along one axis as a matrix, every grid side by side.

    Returns (length, sum(pooling_sizes)): column ``j`` averages the half-open
    bin ``j`` of :func:`adaptive_bins`, grid after grid. ``v @ pooling_matrix(L, (s,))``
    equals ``adaptive_avg_pool1d(v, s)`` up to rounding.
    """
    bins = [b for s in pooling_sizes for b in adaptive_bins(length, s)]
    start, stop = torch.tensor(bins, device=device).unbind(1)
    index = torch.arange(length, device=device)[:, None]
    dtype = dtype or torch.get_default_dtype()
    inside = ((index >= start) & (index < stop)).to(dtype)
    return inside / (stop - start).to(dtype)


def pyramid_pool(x: torch.Tensor, pooling_sizes: Sequence[int] = (1, 3, 5)) -> torch.Tensor:
    """The same tokens as :class:`PPM`, as two matrix products: (B, C, H, W) -> (B, C, sum(s^2)).

    Average pooling is linear and separable, so every grid of the pyramid is
    ``P_H^T X P_W`` with the matrices of :func:`pooling_matrix`. Pooling the
    rows of all grids at once reads the map once, where three
    ``adaptive_avg_pool2d`` calls read it three times; on LDNet's large maps that
    is the faster way on the CPU. :class:`PPM` keeps ``adaptive_avg_pool2d``, the
    literal form's operation.
    The products also give the cross terms (a 3-row by 5-column grid); only the
    square grids on the diagonal are kept.
    """
    h, w = x.shape[-2:]
    rows = pooling_matrix(h, pooling_sizes, x.device, x.dtype).t()  # (sum s, H)
    cols = pooling_matrix(w, pooling_sizes, x.device, x.dtype)  # (W, sum s)
    grids = torch.matmul(torch.matmul(rows, x), cols)  # (B, C, sum s, sum s)
    ends = list(itertools.accumulate(pooling_sizes))
    return torch.cat([grids[..., e - s:e, e - s:e].flatten(-2) for s, e in zip(pooling_sizes, ends)], dim=-1)


class PPM(nn.Module):
    """Pool a feature map at several grid sizes and concatenate the cells.

    (B, C, H, W) -> (B, C, sum(s^2)); (B, C, 35) for the default (1, 3, 5).
    Tokens are ordered grid by grid, each grid row-major.
    """

    def __init__(self, pooling_sizes: Sequence[int] = (1, 3, 5)) -> None:
        super().__init__()
        self.pooling_sizes = check_pooling_sizes(pooling_sizes)

    @property
    def num_tokens(self) -> int:
        return num_tokens(self.pooling_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, None, "PPM")
        cells = [F.adaptive_avg_pool2d(x, s).flatten(2) for s in self.pooling_sizes]
        return torch.cat(cells, dim=-1)

    def extra_repr(self) -> str:
        return f"pooling_sizes={self.pooling_sizes}"


MASK_EPS = 5e-4  # LDNet's epsilon: keeps an all-background mask from dividing by zero


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
