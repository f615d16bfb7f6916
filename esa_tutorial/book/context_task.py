"""A synthetic segmentation task that needs global context, and a small model to test it.

**The task** ("find the blob that matches the key"): each image has a *key*,
a small square of one colour inside a white frame, in a random corner, and
three discs of different colours elsewhere. The label is the disc whose colour
matches the key. Locally, every disc looks alike; whether a disc pixel is
"lesion" depends on a patch at least :data:`MIN_DISTANCE` pixels away. A
network that sees only a small window around each pixel cannot do better than
guess among the discs; one that can look across the image can compare.

**The model** (:class:`ContextNet`): three 3x3 convolutions (the second
halves the resolution), one token block, one 3x3 convolution and a 1x1
classifier, upsampled back. Its receptive field without the block is
:data:`RECEPTIVE_FIELD` pixels, smaller than the distance between key and
discs. The block is ESA, full self-attention (MHSA) or, for ``"none"``, the
same block without its attention layer (its feed-forward part stays), so the
variants differ only in the attention.

Images are (3, size, size) float32 in [0, 1], masks (1, size, size) in {0, 1};
sample ``i`` depends only on ``(seed, i)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..nn.blocks import FeedForward, PreNorm
from ..nn.encoder import ConvBNReLU
from ..nn.init import init_parameters, part_generator
from ..nn.ldnet import Attention, check_attention, skip_attention
from ..validation import check_index, check_feature_map, check_positive_int, check_seed

# Saturated, well separated colours: a disc matches the key by hue, not by a shade.
PALETTE = np.array(
    [[0.9, 0.15, 0.15], [0.15, 0.8, 0.2], [0.2, 0.3, 0.95], [0.95, 0.85, 0.1], [0.85, 0.2, 0.85], [0.1, 0.85, 0.85]],
    dtype=np.float32,
)
N_DISCS = 3
KEY_SIZE = 8  # inner side of the key square, pixels (at size 64)
FRAME = 2  # width of the key's white frame
MIN_DISTANCE = 20  # every disc pixel is at least this far (Chebyshev) from the key's frame
RECEPTIVE_FIELD = 13  # of ContextNet without attention: 3, 5, 9 (stride 2 from the 2nd conv), 13


@dataclass(frozen=True)
class ContextSample:
    """One drawn image with what defines its label.

    ``image`` float32 (size, size, 3), ``mask`` bool (size, size);
    ``key_box`` = (top, left, bottom, right) of the framed key (exclusive end);
    ``centres`` (N_DISCS, 2) disc centres (row, col), ``radii`` (N_DISCS,);
    ``colours`` palette index of each disc; ``target`` the index of the disc
    that matches the key.
    """

    image: np.ndarray
    mask: np.ndarray
    key_box: tuple[int, int, int, int]
    centres: np.ndarray
    radii: np.ndarray
    colours: np.ndarray
    target: int


def context_sample(
    seed: int, index: int, size: int = 64, key_size: int = KEY_SIZE, frame: int = FRAME
) -> ContextSample:
    """Draw sample ``index`` of the task, determined by ``(seed, index)`` alone.

    ``key_size`` and ``frame`` set the key's inner side and its white frame
    (pixels); the defaults are the book's task, smaller ones give the
    fine-key variant of :mod:`esa_tutorial.book.fine_key_task`.
    """
    check_positive_int("key_size", key_size)
    check_positive_int("frame", frame)
    if size < 48:
        raise ValueError(f"the context task needs size >= 48 to keep the discs far from the key, got {size}")
    rng = np.random.default_rng([seed, index, 7])
    yy, xx = np.mgrid[0:size, 0:size]
    # Grey background with a slow shading and fine noise: nothing in it tells the discs apart.
    shade = 0.45 + 0.1 * rng.random() + 0.05 * np.sin(yy / size * np.pi * rng.uniform(0.5, 2))
    image = np.repeat(shade[..., None], 3, axis=-1).astype(np.float32)

    side = key_size + 2 * frame
    corner = rng.integers(4)
    top = 2 if corner < 2 else size - 2 - side
    left = 2 if corner % 2 == 0 else size - 2 - side
    key_box = (top, left, top + side, left + side)
    colours = rng.permutation(len(PALETTE))[:N_DISCS]
    target = int(rng.integers(N_DISCS))
    jitter = lambda: rng.uniform(-0.06, 0.06, size=3).astype(np.float32)  # noqa: E731
    image[top : top + side, left : left + side] = 1.0
    image[top + frame : top + frame + key_size, left + frame : left + frame + key_size] = (
        PALETTE[colours[target]] + jitter()
    )

    centres, radii = [], []
    # Chebyshev distance of every pixel to the framed key: discs stay beyond MIN_DISTANCE.
    dist_key = np.maximum(
        np.maximum(top - yy, yy - (top + side - 1)).clip(0), np.maximum(left - xx, xx - (left + side - 1)).clip(0)
    )
    while len(centres) < N_DISCS:
        r = float(rng.uniform(5.0, 8.0))
        cy, cx = rng.uniform(r + 1, size - r - 1, size=2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if dist_key[disc].min() < MIN_DISTANCE:
            continue
        if any(np.hypot(cy - y, cx - x) < r + q + 3 for (y, x), q in zip(centres, radii)):
            continue
        centres.append((cy, cx))
        radii.append(r)
    mask = np.zeros((size, size), dtype=bool)
    for i, ((cy, cx), r) in enumerate(zip(centres, radii)):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        image[disc] = PALETTE[colours[i]] + jitter()
        if i == target:
            mask = disc
    image += rng.normal(0.0, 0.02, size=image.shape).astype(np.float32)
    return ContextSample(
        np.clip(image, 0, 1), mask, key_box, np.array(centres), np.array(radii), colours, target
    )


class ContextDiscs(Dataset):
    """``n`` samples of the key-matching task: ``ds[i]`` = (image (3, S, S), mask (1, S, S)) float32."""

    def __init__(self, n: int, size: int = 64, seed: int = 0) -> None:
        self.n = check_positive_int("n", n)
        self.size = check_positive_int("size", size)
        if size < 48:
            raise ValueError(f"the context task needs size >= 48, got {size}")
        self.seed = check_seed(seed)

    # How a sample is drawn from (seed, index, size); a variant of the task swaps this.
    _draw = staticmethod(context_sample)

    def __len__(self) -> int:
        return self.n

    def sample(self, i: int) -> ContextSample:
        """The full :class:`ContextSample` of item ``i`` (key position, disc colours...)."""
        return self._draw(self.seed, check_index(i, self.n), self.size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.sample(i)
        return (
            torch.from_numpy(np.ascontiguousarray(s.image.transpose(2, 0, 1))),
            torch.from_numpy(s.mask[None].astype(np.float32)),
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n}, size={self.size}, seed={self.seed})"


class FeedForwardBlock(nn.Module):
    """The token block without attention: pre-norm feed-forward with a residual. (B, C, H, W) -> same."""

    def __init__(self, dim: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.ff = PreNorm(dim, FeedForward(dim, mlp_dim, dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)  # (B, H*W, C)
        out = self.ff(tokens) + tokens
        return out.transpose(1, 2).reshape(x.shape)


class ContextNet(nn.Module):
    """Small segmenter for :class:`ContextDiscs`: (B, 3, H, W) -> (B, 1, H, W) logits (H, W even).

    Args:
        attention: the block at half resolution, ``"esa"``, ``"mhsa"`` or
            ``"none"`` (the same block without its attention layer).
        width, heads, dim_head, mlp_dim: sizes of the features and the block.
        pooling_sizes: ESA's pyramid.
        seed: initial weights, one generator per part (as :class:`~esa_tutorial.nn.ldnet.LDNet`),
            so the convolutions start equal across attention variants.
    """

    def __init__(
        self,
        attention: Attention = "esa",
        width: int = 32,
        heads: int = 2,
        dim_head: int = 16,
        mlp_dim: int = 64,
        pooling_sizes: Sequence[int] = (1, 3, 5),
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.attention = check_attention(attention)
        self.width = check_positive_int("width", width)
        self.stem = nn.Sequential(
            ConvBNReLU(3, width // 2), ConvBNReLU(width // 2, width, stride=2), ConvBNReLU(width, width)
        )
        if attention == "none":
            self.block: nn.Module = FeedForwardBlock(width, mlp_dim)
        else:
            self.block = skip_attention(attention, width, heads, dim_head, mlp_dim, pooling_sizes=pooling_sizes)
        self.head = nn.Sequential(ConvBNReLU(width, width), nn.Conv2d(width, 1, 1))
        for name in ("stem", "head"):
            init_parameters(getattr(self, name), part_generator(seed, name))
        # The feed-forward part of the block starts equal too; the attention layer has its own generator.
        init_parameters(self.block.ff, part_generator(seed, "block.ff"))
        if attention != "none":
            init_parameters(self.block.ESAlayer, part_generator(seed, "block.attention"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, 3, "ContextNet")
        if x.shape[-2] % 2 or x.shape[-1] % 2:
            raise ValueError(f"ContextNet needs an even height and width, got {tuple(x.shape[-2:])}")
        features = self.block(self.stem(x))
        return F.interpolate(self.head(features), size=x.shape[-2:], mode="bilinear", align_corners=False)


@torch.no_grad()
def key_attention(model: ContextNet, sample: ContextSample) -> dict[str, torch.Tensor]:
    """How much of its attention each kind of pixel puts on the key, per head.

    For the centre pixel of the target disc, of a distractor disc and of a
    background pixel (the image centre's nearest pixel outside discs and key),
    returns (heads,) tensors: the sum of
    :func:`~esa_tutorial.book.attention_maps.effective_pixel_weights` over the
    key's feature pixels. With uniform attention this is the key's share of
    the map's area.
    """
    from .attention_maps import attention_weights, effective_pixel_weights

    if model.attention != "esa":
        raise ValueError(f"key_attention reads ESA's pooled weights; the model has attention={model.attention!r}")
    layer = model.block.ESAlayer
    image = torch.from_numpy(np.ascontiguousarray(sample.image.transpose(2, 0, 1)))[None]
    was_training = model.training
    model.eval()
    features = model.stem(image)
    model.train(was_training)
    h, w = features.shape[-2:]
    size = sample.image.shape[0]
    attn = attention_weights(layer, features)[0]  # (heads, h*w, n_kv)
    top, left, bottom, right = (v * h // size for v in sample.key_box)
    distractor = (sample.target + 1) % N_DISCS
    taken = sample.mask.copy()
    yy, xx = np.mgrid[0:size, 0:size]
    for (cy, cx), r in zip(sample.centres, sample.radii):
        taken |= (yy - cy) ** 2 + (xx - cx) ** 2 <= (r + 3) ** 2
    taken[sample.key_box[0] - 3 : sample.key_box[2] + 3, sample.key_box[1] - 3 : sample.key_box[3] + 3] = True
    free = np.argwhere(~taken)
    background = free[np.argmin(((free - size / 2) ** 2).sum(1))]
    pixels = {
        "target disc": sample.centres[sample.target],
        "other disc": sample.centres[distractor],
        "background": background,
    }
    out = {}
    for name, (py, px) in pixels.items():
        fy, fx = min(h - 1, int(py) * h // size), min(w - 1, int(px) * w // size)
        eff = effective_pixel_weights(attn[:, fy * w + fx], h, w, layer.ppm.pooling_sizes)
        out[name] = eff[:, top:bottom, left:right].sum((-2, -1))
    return out
