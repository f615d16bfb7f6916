"""What one block's softmax costs, element by element: the measurements behind the folded form's layout.

Chapter 9 uses :func:`softmax_costs` to show that a cached block's softmax is
bound by its exponentials rather than by memory traffic, and what the two
choices of :mod:`esa_tutorial.nn.folded` (scores laid out pixels-last, the
exponential taken in base 2 on the CPU) buy.
"""

from __future__ import annotations

import torch

from ..nn import folded
from . import time_call

# (name, what it times) in the order they are printed and plotted.
SOFTMAX_COSTS = (
    ("copy", "copying the block (memory traffic alone)"),
    ("exp", "torch.exp of every score"),
    ("exp2", "torch.exp2 of every score"),
    ("softmax, pixels first", "torch.softmax over a last axis of k (B, n, heads, k)"),
    ("softmax, pixels last", "torch.softmax over a middle axis of k (B, heads, k, n)"),
    ("base-2 softmax, pixels last", "the package's in-place softmax2_per_head_"),
)


def softmax_costs(batch: int = 1, pixels: int = folded.CPU_BLOCK_ROWS, heads: int = 8, keys: int = 35,
                  device: torch.device | str = "cpu", min_run_time: float = 0.2) -> dict[str, float]:
    """Nanoseconds per score of each operation in :data:`SOFTMAX_COSTS` on one block of scores.

    The block is (batch, heads*keys, pixels) float32; by default the size of the
    folded form's blocks on a large map on the CPU (one image,
    :data:`~esa_tutorial.nn.folded.CPU_BLOCK_ROWS` pixels): small enough to stay in
    the cache, so what is timed is arithmetic.
    """
    gen = torch.Generator().manual_seed(0)
    scores = (3 * torch.randn(batch, heads * keys, pixels, generator=gen)).to(device)
    out = torch.empty_like(scores)
    last = scores.unflatten(1, (heads, keys)).permute(0, 3, 1, 2).contiguous()  # (B, n, heads, k)
    middle = scores.unflatten(1, (heads, keys))  # (B, heads, k, n)

    def base2() -> torch.Tensor:
        return folded.softmax2_per_head_(out.copy_(scores), heads)

    runs = {
        "copy": lambda: out.copy_(scores),
        "exp": lambda: torch.exp(scores, out=out),
        "exp2": lambda: torch.exp2(scores, out=out),
        "softmax, pixels first": lambda: torch.softmax(last, dim=-1),
        "softmax, pixels last": lambda: torch.softmax(middle, dim=2),
        "base-2 softmax, pixels last": base2,
    }
    seconds = {name: time_call(fn, min_run_time) for name, fn in runs.items()}
    # The in-place softmax works on a fresh copy each time: take the copy's time off.
    seconds["base-2 softmax, pixels last"] = max(0.0, seconds["base-2 softmax, pixels last"] - seconds["copy"])
    return {name: 1e9 * s / scores.numel() for name, s in seconds.items()}


def format_softmax_costs(costs: dict[str, float]) -> str:
    """One line per operation: ns per score, and the cost relative to a copy."""
    width = max(len(name) for name, _ in SOFTMAX_COSTS)
    return "\n".join(f"{name:>{width}s}: {costs[name]:6.3f} ns per score ({costs[name] / costs['copy']:5.1f}x a copy)"
                     for name, _ in SOFTMAX_COSTS)
