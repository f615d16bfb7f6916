"""What an attention layer looks at: weights per pixel, their entropy, their pyramid levels, and plots.

ESA gives every pixel 35 weights per head, one per pooled cell (1x1, 3x3,
5x5). This module reads them through the layer's reference path
(:meth:`~esa_tutorial.PixelAttention.attention`), splits them into
the pyramid's grids, summarises them (entropy, share per level) and draws them:
:func:`~esa_tutorial.book.plotting.show_heatmaps` (a grid of heatmaps, like d2l's) and
:func:`~esa_tutorial.book.plotting.show_pyramid` (one row per head: the image with the pixel and where its
weight lands, then the 1x1, 3x3 and 5x5 grids).

Because a pooled key and value are *averages* of pixels, attending to a cell
with weight ``w`` is the same as attending to each of its pixels with
``w / |cell|``; :func:`effective_pixel_weights` turns the 35 weights into
that map over the feature map's pixels, which sums to 1 like a row of full
self-attention.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..nn.attention import PixelAttention
from ..nn.ppm import adaptive_bins, num_tokens
from ..validation import check_feature_map, check_pooling_sizes


@torch.no_grad()
def attention_weights(layer: PixelAttention, x: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
    """Softmax weights of ``layer`` on ``x``: (B, C, H, W) -> (B, heads, H*W, n_kv), rows summing to 1.

    Uses the literal (reference) computation, whichever ``impl`` the layer runs.
    """
    layer.check_input(x)
    attn, _ = layer.attention(x, *context)
    return attn


def pixel_weights(
    layer: PixelAttention, x: torch.Tensor, pixel: tuple[int, int], image: int = 0
) -> torch.Tensor:
    """The weights of one pixel (row, col of the feature map) of one image: (heads, n_kv)."""
    check_feature_map(x, layer.dim, "pixel_weights")
    h, w = x.shape[-2:]
    r, c = pixel
    if not (0 <= r < h and 0 <= c < w):
        raise ValueError(f"pixel {pixel} lies outside the {h}x{w} feature map")
    return attention_weights(layer, x[image : image + 1])[0, :, r * w + c]


def feature_pixel(pixel: tuple[int, int], image_size: tuple[int, int], feature_size: tuple[int, int]) -> tuple[int, int]:
    """The feature-map pixel (row, col) whose receptive field is centred nearest an image pixel."""
    return tuple(min(f - 1, int(p * f / s)) for p, s, f in zip(pixel, image_size, feature_size))  # type: ignore[return-value]


def token_grids(weights: torch.Tensor, pooling_sizes: Sequence[int] = (1, 3, 5)) -> list[torch.Tensor]:
    """Split (..., n_kv) weights into the pyramid's grids: [(..., 1, 1), (..., 3, 3), (..., 5, 5)]."""
    sizes = check_pooling_sizes(pooling_sizes)
    if weights.shape[-1] != num_tokens(sizes):
        raise ValueError(f"expected {num_tokens(sizes)} weights for pooling sizes {sizes}, got {weights.shape[-1]}")
    parts = weights.split([s * s for s in sizes], dim=-1)
    return [p.reshape(*p.shape[:-1], s, s) for p, s in zip(parts, sizes)]


def level_shares(weights: torch.Tensor, pooling_sizes: Sequence[int] = (1, 3, 5)) -> torch.Tensor:
    """Share of the weight on each pyramid level: (..., n_kv) -> (..., n_levels), summing to 1."""
    return torch.stack([g.flatten(-2).sum(-1) for g in token_grids(weights, pooling_sizes)], dim=-1)


def entropy(weights: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of distributions on the last axis: 0 for one token, log(35) = 3.56 for uniform."""
    p = weights.clamp_min(0)
    return -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(-1)


def effective_pixel_weights(
    weights: torch.Tensor, height: int, width: int, pooling_sizes: Sequence[int] = (1, 3, 5)
) -> torch.Tensor:
    """Spread each cell's weight evenly over the pixels it averages: (..., n_kv) -> (..., height, width).

    ESA's output for a pixel equals full attention with these weights on the
    pixels' values (pooling is an average and the value projection is
    linear), so the map sums to 1 over the (height, width) feature map.
    """
    out = torch.zeros(*weights.shape[:-1], height, width, dtype=weights.dtype, device=weights.device)
    for grid, s in zip(token_grids(weights, pooling_sizes), pooling_sizes):
        for i, (r0, r1) in enumerate(adaptive_bins(height, s)):
            for j, (c0, c1) in enumerate(adaptive_bins(width, s)):
                out[..., r0:r1, c0:c1] += (grid[..., i, j] / ((r1 - r0) * (c1 - c0)))[..., None, None]
    return out


def block_inputs(model: nn.Module, modules: Sequence[nn.Module], *inputs: torch.Tensor) -> list[torch.Tensor]:
    """Run ``model(*inputs)`` in eval mode without gradients; return what each of ``modules`` received first."""
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, i=i: seen.setdefault(i, args[0].detach()))
        for i, m in enumerate(modules)
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    missing = [i for i in range(len(modules)) if i not in seen]
    if missing:
        raise ValueError(f"modules {missing} were not called by the model's forward")
    return [seen[i] for i in range(len(modules))]


# --------------------------------------------------------------------------- plots


def max_entropy(pooling_sizes: Sequence[int] = (1, 3, 5)) -> float:
    """Entropy of uniform weights over the pooled tokens, ``log(n_kv)``."""
    return math.log(num_tokens(check_pooling_sizes(pooling_sizes)))


def skip_weights(model: nn.Module, image: torch.Tensor) -> list[torch.Tensor]:
    """ESA weights of every skip block of an LDNet for one image (1, 3, H, W).

    Returns one (heads, h*w, n_kv) tensor per skip, coarse to fine (e4, e3, e2, e1).
    """
    blocks = list(model.skip_attention)  # type: ignore[attr-defined]
    if not all(hasattr(b, "ESAlayer") for b in blocks):
        raise ValueError("skip_weights needs a model with attention on its skips (attention='esa' or 'mhsa')")
    inputs = block_inputs(model, blocks, image)
    return [attention_weights(b.ESAlayer, x)[0] for b, x in zip(blocks, inputs)]


def skip_level_maps(model: nn.Module, image: torch.Tensor, pixel: tuple[int, int]) -> torch.Tensor:
    """Effective pixel weights of one image pixel at every skip level, relative to uniform, at image size.

    ``image`` (1, 3, H, W), ``pixel`` (row, col) in the image. Returns
    (levels, heads, H, W): for each skip (coarse to fine) and head, the
    feature-map pixel under ``pixel`` spreads its 35 weights over the (h, w)
    feature map (:func:`effective_pixel_weights`); the map is multiplied by
    ``h * w`` (so 1 means "as much as uniform attention") and upsampled to the
    image by repetition, which makes levels of different sizes comparable.
    """
    blocks = list(model.skip_attention)  # type: ignore[attr-defined]
    inputs = block_inputs(model, blocks, image)
    size = tuple(image.shape[-2:])
    maps = []
    for block, x in zip(blocks, inputs):
        h, w = x.shape[-2:]
        fy, fx = feature_pixel(pixel, size, (h, w))  # type: ignore[arg-type]
        weights = attention_weights(block.ESAlayer, x)[0, :, fy * w + fx]
        eff = effective_pixel_weights(weights, h, w, block.ESAlayer.ppm.pooling_sizes)
        relative = eff * (h * w)
        maps.append(relative.repeat_interleave(size[0] // h, -2).repeat_interleave(size[1] // w, -1))
    return torch.stack(maps)
