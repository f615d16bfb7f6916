"""The tests' float64 oracle: an independent, deliberately plain implementation of ESA and MHSA.

Written differently from ``esa_tutorial.nn.esa`` on purpose: explicit bin
sums instead of ``adaptive_avg_pool2d``, a Python loop over heads, an explicit
exp/sum softmax, and float64 throughout. It is slow and only for small inputs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from esa_tutorial.nn.ppm import adaptive_bins


def naive_pyramid_pool(x: torch.Tensor, pooling_sizes: Sequence[int] = (1, 3, 5)) -> torch.Tensor:
    """Average each adaptive bin by explicit sums. (B, C, H, W) -> (B, C, sum(s^2)), float64."""
    x = x.double()
    height, width = x.shape[-2:]
    cells = []
    for s in pooling_sizes:
        for r0, r1 in adaptive_bins(height, s):
            for c0, c1 in adaptive_bins(width, s):
                block = x[:, :, r0:r1, c0:c1]
                cells.append(block.sum(dim=(-2, -1)) / ((r1 - r0) * (c1 - c0)))
    return torch.stack(cells, dim=-1)


def _softmax_rows(s: torch.Tensor) -> torch.Tensor:
    e = torch.exp(s - s.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def naive_attention(
    x: torch.Tensor,
    w_qkv: torch.Tensor,
    w_out: torch.Tensor | None,
    b_out: torch.Tensor | None,
    heads: int,
    kv_tokens: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Per-head attention from pixels to tokens, computed head by head in float64.

    Args:
        x: (B, C, H, W) input.
        w_qkv: (3 * heads * d, C) or (3 * heads * d, C, 1, 1) projection weights.
        w_out, b_out: (C, heads * d) and (C,) output projection, or None for identity.
        heads: number of heads.
        kv_tokens: maps projected maps (B, heads*d, H, W) to tokens (B, heads*d, n).

    Returns:
        (B, H*W, C) in float64.
    """
    x = x.double()
    w = w_qkv.double().reshape(w_qkv.shape[0], -1)
    inner = w.shape[0] // 3
    d = inner // heads
    b, c, height, width = x.shape
    pixels = x.reshape(b, c, height * width)  # (B, C, N)
    proj = torch.einsum("oc,bcn->bon", w, pixels).reshape(b, 3 * inner, height, width)
    q_all, k_all, v_all = proj[:, :inner], proj[:, inner : 2 * inner], proj[:, 2 * inner :]
    k_tok, v_tok = kv_tokens(k_all).double(), kv_tokens(v_all).double()  # (B, inner, n)
    outs = []
    for h in range(heads):
        rows = slice(h * d, (h + 1) * d)
        q = q_all[:, rows].reshape(b, d, -1).transpose(1, 2)  # (B, N, d)
        scores = q @ k_tok[:, rows] / d**0.5  # (B, N, n)
        outs.append(_softmax_rows(scores) @ v_tok[:, rows].transpose(1, 2))  # (B, N, d)
    out = torch.cat(outs, dim=-1)  # (B, N, inner)
    if w_out is not None:
        out = out @ w_out.double().T + b_out.double()
    return out


def _weights(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    # Parameters, not state_dict(): gradients must flow back to the module.
    params = dict(module.named_parameters())
    if "to_out.0.weight" in params:
        return params["to_qkv.weight"], params["to_out.0.weight"], params["to_out.0.bias"]
    return params["to_qkv.weight"], None, None


def naive_esa(module: nn.Module, x: torch.Tensor, pooling_sizes: Sequence[int] = (1, 3, 5)) -> torch.Tensor:
    """ESA with the weights of ``module`` (anything with ESA's state dict). (B, C, H, W) -> (B, H*W, C)."""
    return naive_attention(
        x, *_weights(module), module.heads, lambda t: naive_pyramid_pool(t, pooling_sizes).flatten(2)
    )


def naive_mhsa(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Full self-attention with the weights of ``module``. (B, C, H, W) -> (B, H*W, C)."""
    return naive_attention(x, *_weights(module), module.heads, lambda t: t.flatten(2))
