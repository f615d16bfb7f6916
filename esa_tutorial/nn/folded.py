"""The pixel-side work of folded ESA, from public torch operations.

Once the query and output projections are folded into the pooled keys and
values (:meth:`esa_tutorial.ESA.folded_weights`), every pixel needs two matrix
products and a softmax over each head's ``n_kv`` columns::

    scores = a^T x            (heads*n_kv, C) @ (C, n)   -> (heads*n_kv, n)
    probs  = softmax per head (over n_kv rows, for every pixel)
    out    = probs^T vo + b   (n, heads*n_kv) @ (heads*n_kv, C) -> (n, C)

:func:`folded_attention` runs them over blocks of images and pixels
(:func:`block_shape`), so that a block's (b, heads*n_kv, n) scores stay in the
CPU's caches between the three steps instead of making a round trip through
memory.
Threading is left to torch's own intra-op parallelism inside each operation.

The scores are laid out pixels-last, (B, heads*n_kv, n), not (B, n, heads*n_kv):
the softmax then reduces over a middle axis of 35 and runs along contiguous
pixels, which vectorises fully. Along a last axis of 35 the CPU kernel works on
short rows that do not fill its vector registers. On the CPU the softmax is also
taken in base 2 (:func:`softmax2_per_head_`). Chapter 9 measures both choices
(:func:`esa_tutorial.bench.softmax.softmax_costs`). The products read the
transposed operands through BLAS's transpose flags, without copies.

For autograd, a :class:`torch.autograd.Function` keeps only ``x``, ``a`` and
``vo`` and recomputes each block's probabilities in the backward pass: no
(B, N, heads*n_kv) tensor lives from forward to backward (about 4x the input
at LDNet's sizes). The backward pass is itself written in differentiable
operations, so second derivatives, ``torch.func`` (``grad``, ``vmap``) and
``torch.compile`` work too.
"""

from __future__ import annotations

import math

import torch

from ..validation import autocast_enabled

# The block API: public, so that the benchmark (esa_tutorial.bench.forward_breakdown) times the very
# functions the forward runs, and a reader can run one block by hand.
__all__ = ["CPU_BLOCK_ROWS", "block_output", "block_probabilities", "block_scores", "block_shape", "blocks",
           "folded_attention", "score_keys", "softmax2_per_head_", "softmax_per_head", "spans", "uses_exp2"]

# Rows (images x pixels) per block on the CPU. A (1536, 280) float32 block of scores is 1.6 MiB: it stays in a
# server CPU's L2/L3 between the three steps. On a 2-core EPYC (2026-11-26, LDNet's four ESA maps at batch 16),
# 1024 to 2048 rows ran within the run-to-run noise of each other (1024 best at C = 64, 2048 at C = 128), 3072
# about 10-20% slower, and no blocking at all about 2x slower (shared/reviews/2026-11-26-perf-probe.md).
CPU_BLOCK_ROWS = 1536
# softmax(s) = 2^(s log2 e) / sum: the factor that turns natural scores into base-2 ones.
LOG2E = 1 / math.log(2)


def _evened(total: int, most: int) -> int:
    """The largest even split of ``total`` into as few parts of at most ``most`` as possible."""
    return math.ceil(total / math.ceil(total / most))


def block_shape(batch: int, pixels: int, device: torch.device, rows: int | None = None) -> tuple[int, int]:
    """(images, pixels) per block: about ``rows`` rows (images x pixels) on the CPU, everything elsewhere.

    ``rows=None`` means :data:`CPU_BLOCK_ROWS` on the CPU; on a GPU one launch over the whole
    batch is faster than blocking, so everything goes into one block there. A map that fits
    in a block is never split: its block holds whole images, as many as fit, so that each
    image's pixels are read as one contiguous run. A larger map is split into blocks of one
    image's pixels. Blocks are evened out (784 pixels in blocks of at most 128 become 7
    blocks of 112, not 6 of 128 and one of 16), as a short last block runs at a poor rate.
    """
    if rows is None:
        if device.type != "cpu":
            return batch, pixels
        rows = CPU_BLOCK_ROWS
    if pixels <= rows:
        return _evened(batch, max(1, rows // pixels)), pixels
    return 1, _evened(pixels, rows)


def blocks(batch: int, pixels: int, device: torch.device, rows: int | None = None) -> list[tuple[slice, slice]]:
    """The (images, pixels) slices of every block, in order (see :func:`block_shape`)."""
    images, step = block_shape(batch, pixels, device, rows)
    return [(i, p) for i in spans(batch, images) for p in spans(pixels, step)]


def softmax_per_head(scores: torch.Tensor, heads: int, dim: int = 1) -> torch.Tensor:
    """Softmax over each head's group of ``scores.shape[dim] // heads`` entries along ``dim``.

    With the default ``dim=1``, (B, heads*k, n) scores -> probabilities of the same shape,
    each head's k rows summing to one for every pixel.
    """
    dim = dim % scores.dim()
    return torch.softmax(scores.unflatten(dim, (heads, -1)), dim=dim + 1).flatten(dim, dim + 1)


def _softmax_per_head_backward(p: torch.Tensor, dp: torch.Tensor, heads: int) -> torch.Tensor:
    """Gradient of (B, heads*k, n) scores given the probabilities ``p`` and their gradient ``dp``.

    Overwrites ``dp`` unless autograd records this (``create_graph=True``): a first-order backward
    then makes no temporaries of the block's size besides one product.
    """
    p4, dp4 = p.unflatten(1, (heads, -1)), dp.unflatten(1, (heads, -1))
    if torch.is_grad_enabled():
        return (p4 * (dp4 - (p4 * dp4).sum(2, keepdim=True))).flatten(1, 2)
    pdp = dp4.mul_(p4)  # p * dp - p * sum(p * dp), in place
    return pdp.addcmul_(p4, pdp.sum(2, keepdim=True), value=-1).flatten(1, 2)


def uses_exp2(t: torch.Tensor) -> bool:
    """Whether the blocks of ``t``'s device and dtype take the softmax in base 2 (CPU float32/float64)."""
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)


def softmax2_per_head_(scores2: torch.Tensor, heads: int) -> torch.Tensor:
    """In place: the per-head softmax of (B, heads*k, n) scores given in base 2 (times log2 e).

    ``softmax(s) = 2^(s log2 e - max) / sum``. The exponential, not memory traffic, is what a
    cached block's softmax spends its time on, and torch's CPU kernel for ``exp2`` is much
    cheaper than its ``exp`` (:func:`esa_tutorial.bench.softmax.softmax_costs` measures both).
    The factor log2 e is folded into the keys once per call (:func:`score_keys`), so no pass
    over the scores pays for it. Returns ``scores2``'s memory.
    """
    s4 = scores2.unflatten(1, (heads, -1))
    s4.sub_(s4.amax(2, keepdim=True)).exp2_()
    return s4.div_(s4.sum(2, keepdim=True)).flatten(1, 2)


def block_scores(xs: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Scores of a block: ``a^T xs``, (B, C, n) pixels and (B, C, heads*k) keys -> (B, heads*k, n)."""
    return torch.bmm(a.transpose(1, 2), xs)


def block_probabilities(xs: torch.Tensor, a: torch.Tensor, heads: int, exp2: bool) -> torch.Tensor:
    """Probabilities of a block, (B, heads*k, n); ``a`` is pre-multiplied by log2 e when ``exp2``."""
    scores = block_scores(xs, a)
    if not exp2:
        return softmax_per_head(scores, heads)
    if torch.is_grad_enabled():  # a backward recorded for second derivatives: no in-place operations
        s4 = scores.unflatten(1, (heads, -1))
        e = torch.exp2(s4 - s4.amax(2, keepdim=True).detach())  # any shift gives the same softmax
        return (e / e.sum(2, keepdim=True)).flatten(1, 2)
    return softmax2_per_head_(scores, heads)


def block_output(p: torch.Tensor, vo: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Output of a block: ``p^T vo + bias``, (B, heads*k, n) probabilities -> (B, n, C_out)."""
    pt = p.transpose(1, 2)
    return torch.bmm(pt, vo) if bias is None else torch.baddbmm(bias, pt, vo)


def spans(pixels: int, step: int) -> list[slice]:
    """The blocks of ``step`` pixels (the last one may be shorter) covering ``range(pixels)``."""
    return [slice(start, min(start + step, pixels)) for start in range(0, pixels, step)]


def score_keys(a: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The keys the blocks multiply with: ``a * log2 e`` where the softmax runs in base 2."""
    exp2 = uses_exp2(a)
    return (a * LOG2E if exp2 else a), exp2


def _forward(x: torch.Tensor, a: torch.Tensor, vo: torch.Tensor, bias: torch.Tensor | None,
             heads: int, rows: int | None) -> torch.Tensor:
    """(B, C, N) -> (B, N, C_out), block by block."""
    keys, exp2 = score_keys(a)
    out = None
    for imgs, px in blocks(x.shape[0], x.shape[-1], x.device, rows):
        p = block_probabilities(x[imgs, :, px], keys[imgs], heads, exp2)
        y = block_output(p, vo[imgs], bias)
        if out is None:
            if y.shape[:2] == (x.shape[0], x.shape[-1]):
                return y  # one block
            # Allocated from a block's result rather than from x, so that under torch.func.vmap it is batched
            # whenever any input is; writing blocks in place saves the copy a final torch.cat would make.
            out = y.new_empty((x.shape[0], x.shape[-1], y.shape[-1]))
        out[imgs, px] = y
    assert out is not None  # at least one pixel: checked by the callers
    return out


class _FoldedAttention(torch.autograd.Function):
    """softmax_per_head(a^T x)^T vo + bias, blocked, recomputing the probabilities in backward."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, a: torch.Tensor, vo: torch.Tensor, bias: torch.Tensor | None,
                heads: int, rows: int | None) -> torch.Tensor:
        return _forward(x, a, vo, bias, heads, rows)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
        x, a, vo, bias, heads, rows = inputs
        ctx.save_for_backward(x, a, vo)
        ctx.heads, ctx.rows, ctx.has_bias = heads, rows, bias is not None

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[no-untyped-def]
        x, a, vo = ctx.saved_tensors
        heads = ctx.heads
        # The gradient of a sum (`out.sum().backward()`) comes expanded, with zero strides: bmm would copy
        # every image's slice of every block; one copy up front is cheaper.
        grad_out = grad_out.contiguous()
        keys, exp2 = score_keys(a)
        dx = da = dvo = None
        for imgs, px in blocks(x.shape[0], x.shape[-1], x.device, ctx.rows):
            xs, g, k = x[imgs, :, px], grad_out[imgs, px], keys[imgs]  # (b, C, n), (b, n, C_out)
            p = block_probabilities(xs, k, heads, exp2)  # recomputed, not stored
            ds = _softmax_per_head_backward(p, torch.bmm(vo[imgs], g.transpose(1, 2)), heads)  # (b, hk, n)
            da_s, dvo_s, dx_s = torch.bmm(xs, ds.transpose(1, 2)), torch.bmm(p, g), torch.bmm(a[imgs], ds)
            if dx is None:
                if dx_s.shape == x.shape:
                    dx, da, dvo = dx_s, da_s, dvo_s  # one block
                    break
                # From a block's result, as in the forward: batched under vmap whenever any input is.
                dx, da, dvo = dx_s.new_empty(x.shape), da_s.new_zeros(a.shape), dvo_s.new_zeros(vo.shape)
            dx[imgs, :, px] = dx_s  # already in x's layout
            da[imgs] += da_s
            dvo[imgs] += dvo_s
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
    """``softmax_per_head(a^T x)^T vo + bias`` over all pixels, blocked and memory-lean.

    Args:
        x: (B, C, N) pixels.
        a: (B, C, heads*n_kv) keys with the query projection and scale folded in.
        vo: (B, heads*n_kv, C_out) values with the output projection folded in.
        bias: (C_out,) or None.
        heads: softmax groups of ``n_kv`` keys each.
        rows: images x pixels per block; None means :func:`block_shape`'s default for x's device.

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
    return _FoldedAttention.apply(x, a, vo, bias, heads, rows)
