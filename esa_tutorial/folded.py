"""The pixel-side work of folded ESA, from public torch operations.

Once the query and output projections are folded into the pooled keys and
values (:meth:`esa_tutorial.ESA.folded_weights`), every pixel needs two matrix
products and a softmax over ``heads * n_kv`` columns::

    scores = x^T a            (N, C) @ (C, heads*n_kv)
    probs  = softmax per head (over n_kv columns)
    out    = probs @ vo + b   (N, heads*n_kv) @ (heads*n_kv, C)

:func:`folded_attention` runs them over blocks of pixels (all images of the
batch at once), so that a block's (B, n, heads*n_kv) scores stay in the CPU's
caches between the three steps instead of making a round trip through memory.
Threading is left to torch's own intra-op parallelism inside each product.

For autograd, a :class:`torch.autograd.Function` keeps only ``x``, ``a`` and
``vo`` and recomputes each block's probabilities in the backward pass: no
(B, N, heads*n_kv) tensor lives from forward to backward (about 4x the input
at LDNet's sizes). The backward pass is itself written in differentiable
operations, so second derivatives, ``torch.func`` (``grad``, ``vmap``) and
``torch.compile`` work too.
"""

from __future__ import annotations

import torch

from .validation import autocast_enabled

# Rows (images x pixels) per block on the CPU: a (4096, 280) float32 block of scores is 4.6 MiB, about what a
# server CPU's L2/L3 cache keeps between the three steps. On a quiet 2-core EPYC at 16x64x112x112, blocks of
# 1024 to 4096 rows ran within a few percent of each other (141-146 ms) and no blocking at all ~2x slower
# (281 ms; shared/reviews/2026-11-26-perf-probe.md). On an oversubscribed CPU (load 10 on 2 cores) every
# parallel operation pays a barrier that waits for descheduled threads, so fewer, larger blocks win there
# (1024: 6.7 s, 4096: 3.8 s, 16384: 1.2 s): the largest block that still fits the cache is the robust choice.
CPU_BLOCK_ROWS = 4096


def block_pixels(batch: int, pixels: int, device: torch.device, rows: int | None = None) -> int:
    """Pixels per block: ``rows // batch`` (at least 1) on the CPU, all of them on other devices.

    ``rows=None`` means :data:`CPU_BLOCK_ROWS` on the CPU; on a GPU one launch over the whole
    batch is faster than blocking, so every pixel goes into one block there.
    """
    if rows is None:
        if device.type != "cpu":
            return pixels
        rows = CPU_BLOCK_ROWS
    return max(1, min(pixels, rows // batch))


def softmax_per_head(scores: torch.Tensor, heads: int) -> torch.Tensor:
    """Softmax of (..., heads*k) scores over each head's k columns; same shape."""
    return torch.softmax(scores.unflatten(-1, (heads, -1)), dim=-1).flatten(-2)


def _softmax_per_head_backward(p: torch.Tensor, dp: torch.Tensor, heads: int) -> torch.Tensor:
    """Gradient of the scores given the probabilities ``p`` and their gradient ``dp``."""
    p4, dp4 = p.unflatten(-1, (heads, -1)), dp.unflatten(-1, (heads, -1))
    return (p4 * (dp4 - (p4 * dp4).sum(-1, keepdim=True))).flatten(-2)


def _spans(pixels: int, step: int) -> list[slice]:
    return [slice(start, min(start + step, pixels)) for start in range(0, pixels, step)]


def _forward(x: torch.Tensor, a: torch.Tensor, vo: torch.Tensor, bias: torch.Tensor | None,
             heads: int, step: int) -> torch.Tensor:
    """(B, C, N) -> (B, N, C_out), block by block over the pixels."""
    outs = []
    for span in _spans(x.shape[-1], step):
        p = softmax_per_head(torch.bmm(x[:, :, span].transpose(1, 2), a), heads)
        outs.append(torch.bmm(p, vo) if bias is None else torch.baddbmm(bias, p, vo))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


class _FoldedAttention(torch.autograd.Function):
    """softmax_per_head(x^T a) @ vo + bias, blocked, recomputing the probabilities in backward."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, a: torch.Tensor, vo: torch.Tensor, bias: torch.Tensor | None,
                heads: int, step: int) -> torch.Tensor:
        return _forward(x, a, vo, bias, heads, step)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
        x, a, vo, bias, heads, step = inputs
        ctx.save_for_backward(x, a, vo)
        ctx.heads, ctx.step, ctx.has_bias = heads, step, bias is not None

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[no-untyped-def]
        x, a, vo = ctx.saved_tensors
        heads = ctx.heads
        dxs, da, dvo = [], None, None
        for span in _spans(x.shape[-1], ctx.step):
            xs, g = x[:, :, span], grad_out[:, span]  # (B, C, n), (B, n, C_out)
            p = softmax_per_head(torch.bmm(xs.transpose(1, 2), a), heads)  # recomputed, not stored
            ds = _softmax_per_head_backward(p, torch.bmm(g, vo.transpose(1, 2)), heads)
            da_s, dvo_s = torch.bmm(xs, ds), torch.bmm(p.transpose(1, 2), g)
            da = da_s if da is None else da + da_s
            dvo = dvo_s if dvo is None else dvo + dvo_s
            dxs.append(torch.bmm(ds, a.transpose(1, 2)))  # (B, n, C)
        dx = (dxs[0] if len(dxs) == 1 else torch.cat(dxs, dim=1)).transpose(1, 2)
        dbias = grad_out.sum(dim=(0, 1)) if ctx.has_bias else None
        return dx, da, dvo, dbias, None, None


def folded_attention(
    x: torch.Tensor,
    a: torch.Tensor,
    vo: torch.Tensor,
    bias: torch.Tensor | None,
    heads: int,
    rows: int | None = None,
) -> torch.Tensor:
    """``softmax_per_head(x^T a) @ vo + bias`` over all pixels, blocked and memory-lean.

    Args:
        x: (B, C, N) pixels.
        a: (B, C, heads*n_kv) keys with the query projection and scale folded in.
        vo: (B, heads*n_kv, C_out) values with the output projection folded in.
        bias: (C_out,) or None.
        heads: softmax groups along the last axis of the scores.
        rows: images x pixels per block; None means :func:`block_pixels`' default for x's device.

    Returns:
        (B, N, C_out). Differentiable in x, a, vo and bias, to any order.

    Under ``torch.autocast`` the products run in the autocast dtype, as they
    would in the literal form; the softmax runs in that dtype too (torch's
    softmax kernels accumulate in float32 for float16 and bfloat16 inputs).
    """
    device_type = x.device.type
    if autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        x, a, vo = x.to(dtype), a.to(dtype), vo.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        with torch.autocast(device_type, enabled=False):
            return folded_attention(x, a, vo, bias, heads, rows)
    step = block_pixels(x.shape[0], x.shape[-1], x.device, rows)
    return _FoldedAttention.apply(x, a, vo, bias, heads, step)
