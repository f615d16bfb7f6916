"""The pixel-side work of folded ESA as one fused, memory-lean autograd function.

Once the query and output projections are folded into the pooled keys and
values (:meth:`esa_tutorial.ESA.folded_weights`), every pixel needs two matrix
products and a softmax over ``heads * n_kv`` columns::

    scores = x^T a            (N, C) @ (C, heads*n_kv)
    probs  = softmax per head (over n_kv columns)
    out    = probs @ vo + b   (N, heads*n_kv) @ (heads*n_kv, C)

:func:`folded_attention` runs them block by block over the pixels, so the
(block, heads*n_kv) scores stay in the CPU cache and are written into two
reused buffers instead of a fresh (B, N, heads*n_kv) tensor. Autograd stores
only ``x``, ``a`` and ``vo``: the backward pass recomputes each block's
probabilities, so no (B, N, heads*n_kv) tensor lives from forward to backward.
The result is the same arithmetic as the unblocked form (same products, same
order within each row), so it is exact up to float rounding.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import torch
from einops import rearrange

# Pixels per block on the CPU. A block's scores and probabilities (1024 x 280 floats each) stay in the
# L2/L3 caches; 256 to 2048 measured within ~15% of each other on a 2-core EPYC at 16x64x112x112,
# 1024 fastest, the whole image (no blocking) ~1.8x slower. Measure with ``python -m esa_tutorial.bench``.
CPU_BLOCK_ROWS = 1024


def default_block_rows(device: torch.device) -> int | None:
    """Pixels per block: a cache-sized block on the CPU, everything at once (None) on a GPU."""
    return CPU_BLOCK_ROWS if device.type == "cpu" else None


def _blocks(batch: int, pixels: int, rows: int | None) -> Iterator[tuple[slice, slice]]:
    """(batch slice, pixel slice) pairs covering a (batch, pixels) grid.

    Whole batch and all pixels in one block when ``rows`` is None or covers the
    image; otherwise one image at a time in ``rows``-pixel slices, so that
    every slice of a (B, N, C) tensor stays contiguous.
    """
    if rows is None or rows >= pixels:
        yield slice(None), slice(None)
        return
    for b in range(batch):
        for start in range(0, pixels, rows):
            yield slice(b, b + 1), slice(start, min(start + rows, pixels))


def _softmax_heads(scores: torch.Tensor, out: torch.Tensor, heads: int) -> torch.Tensor:
    """Softmax of (b, n, heads*k) scores over each head's k columns, written into ``out``."""
    torch._softmax(
        rearrange(scores, "b n (h k) -> b n h k", h=heads), -1, False,
        out=rearrange(out, "b n (h k) -> b n h k", h=heads),
    )
    return out


def _num_workers(device: torch.device, num_blocks: int) -> int:
    """Threads :func:`_for_each_block` uses: one per intra-op thread on the CPU, one on a GPU."""
    return max(1, min(torch.get_num_threads(), num_blocks)) if device.type == "cpu" else 1


def _block_buffers(x: torch.Tensor, a: torch.Tensor, blocks: list[tuple[slice, slice]],
                   count: int) -> list[list[torch.Tensor]]:
    """``count`` reusable (b, n, heads*n_kv) buffers per worker, sized for the largest block."""
    size = x[blocks[0][0], 0, blocks[0][1]].shape + a.shape[-1:]
    return [[x.new_empty(size) for _ in range(count)] for _ in range(_num_workers(x.device, len(blocks)))]


def _block_probs(x: torch.Tensor, a: torch.Tensor, bs: slice, ps: slice, bufs: list[torch.Tensor],
                 heads: int) -> tuple[torch.Tensor, int]:
    """Softmax probabilities (b, n, heads*n_kv) of one block, in ``bufs[1]``; also returns n."""
    n = x[0, 0, ps].shape[0]
    s = torch.bmm(x[bs, :, ps].transpose(1, 2), a[bs], out=bufs[0][:, :n])
    return _softmax_heads(s, bufs[1][:, :n], heads), n


def _for_each_block(work: Callable[[int, slice, slice], None], blocks: list[tuple[slice, slice]],
                    device: torch.device) -> None:
    """Call ``work(worker, batch_slice, pixel_slice)`` for every block.

    On the CPU the blocks are dealt round-robin to ``torch.get_num_threads()``
    Python threads, each running single-threaded torch ops (which release the
    GIL). A block is too small to split across cores: letting every small
    product fork and join all cores costs a barrier per operation, which on a
    busy machine was measured to be many times slower than this.
    """
    workers = _num_workers(device, len(blocks))
    if workers == 1:
        for bs, ps in blocks:
            work(0, bs, ps)
        return

    def run(worker: int) -> None:
        torch.set_num_threads(1)  # OpenMP's thread count is per calling thread
        with torch.no_grad():  # grad mode is per thread; a new thread starts with it on
            for bs, ps in blocks[worker::workers]:
                work(worker, bs, ps)

    threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, range(workers)))
    finally:
        torch.set_num_threads(threads)  # BLAS libraries may share the setting across threads


class _FoldedAttention(torch.autograd.Function):
    """softmax_per_head(x^T a) @ vo + bias, blocked over pixels; see the module docstring."""

    @staticmethod
    def forward(ctx, x, a, vo, bias, heads, rows):  # type: ignore[override]
        batch, _, pixels = x.shape
        out = x.new_empty(batch, pixels, vo.shape[-1])
        blocks = list(_blocks(batch, pixels, rows))
        bufs = _block_buffers(x, a, blocks, 2)

        def work(worker: int, bs: slice, ps: slice) -> None:
            p, _ = _block_probs(x, a, bs, ps, bufs[worker], heads)
            if bias is None:
                torch.bmm(p, vo[bs], out=out[bs, ps])
            else:
                torch.baddbmm(bias, p, vo[bs], out=out[bs, ps])

        _for_each_block(work, blocks, x.device)
        ctx.save_for_backward(x, a, vo)
        ctx.heads, ctx.rows, ctx.has_bias = heads, rows, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        if torch.is_grad_enabled():  # create_graph=True: a silent wrong second derivative otherwise
            raise RuntimeError(
                "folded ESA has first-order gradients only (its backward pass is hand-written); "
                "for double backward use ESA(..., impl='reference')"
            )
        x, a, vo = ctx.saved_tensors
        need_x, need_a, need_vo, need_bias = ctx.needs_input_grad[:4]
        grad_out = grad_out.contiguous()
        batch, _, pixels = x.shape
        heads = ctx.heads
        dx_t = x.new_empty(batch, pixels, x.shape[1]) if need_x else None
        da = dvo = None
        if need_x or need_a or need_vo:
            blocks = list(_blocks(batch, pixels, ctx.rows))
            bufs = _block_buffers(x, a, blocks, 3)
            workers = len(bufs)
            # One accumulator per worker (no races), summed in a fixed order (deterministic).
            das = [torch.zeros_like(a) for _ in range(workers)] if need_a else None
            dvos = [torch.zeros_like(vo) for _ in range(workers)] if need_vo else None

            def work(worker: int, bs: slice, ps: slice) -> None:
                p, n = _block_probs(x, a, bs, ps, bufs[worker], heads)  # recomputed, not stored
                xs, g = x[bs, :, ps], grad_out[bs, ps]  # (b, C, n), (b, n, C)
                # baddbmm(out=acc) rather than acc.baddbmm_: same kernel, and FlopCounterMode counts it.
                if need_vo:
                    torch.baddbmm(dvos[worker][bs], p.transpose(1, 2), g, out=dvos[worker][bs])
                dp = torch.bmm(g, vo[bs].transpose(1, 2), out=bufs[worker][2][:, :n])
                ds = rearrange(
                    torch._softmax_backward_data(
                        rearrange(dp, "b n (h k) -> b n h k", h=heads),
                        rearrange(p, "b n (h k) -> b n h k", h=heads),
                        -1, p.dtype,
                    ),
                    "b n h k -> b n (h k)",
                )
                if need_a:
                    torch.baddbmm(das[worker][bs], xs, ds, out=das[worker][bs])
                if need_x:
                    torch.bmm(ds, a[bs].transpose(1, 2), out=dx_t[bs, ps])

            _for_each_block(work, blocks, x.device)
            da = sum(das[1:], das[0]) if need_a else None
            dvo = sum(dvos[1:], dvos[0]) if need_vo else None
        dbias = grad_out.sum(dim=(0, 1)) if need_bias and ctx.has_bias else None
        dx = dx_t.transpose(1, 2) if need_x else None
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
        rows: pixels per block; None means :func:`default_block_rows` for x's device.

    Returns:
        (B, N, C_out). Differentiable in x, a, vo and bias (first order).
    """
    if rows is None:
        rows = default_block_rows(x.device)
    return _FoldedAttention.apply(x, a, vo, bias, heads, rows)
