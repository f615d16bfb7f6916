"""LDNet (Zhang et al., MICCAI 2022) at a size that trains on a CPU.

The network, coarse to fine::

    image ─ Encoder ─ e1 (s2) e2 (s4) e3 (s8) e4 (s16) e5 (s32)
                                                     │
            top decoder ─ d (s16) ─ 1x1 ─ feat ─┐    └ KernelGenerator ─ kernel
                                                └ dynamic_conv(feat, kernel) ─ logits (s16)
    for each skip e4, e3, e2, e1:
        s = ESABlock(skip)                     self-attention on the encoder feature
        r = LCABlock(d, logits)                the decoder feature, refined by the lesion
        d = DecoderBlock(cat[r, s])            2x upsampling
        kernel = HeadUpdater(1x1(d), kernel, logits)
        logits = dynamic_conv(1x1(d), kernel)  one more output, twice finer

Five outputs (strides 1, 2, 4, 8, 16), all supervised during training.
``width=64`` with ``heads=8, dim_head=64, mlp_dim=512`` gives LDNet's channel
counts (:meth:`LDNet.paper_sized`); the default is four times narrower.

Differences from the paper's code, on purpose: the encoder is a small CNN
(:mod:`esa_tutorial.encoder`), not Res2Net-50; the outputs are logits, not
sigmoids (the loss then uses the numerically stable BCE-with-logits); the head
updater averages the lesion features rather than summing them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import torch
from torch import nn

from .attention import MHSA
from .blocks import ESABlock, LCABlock
from .dynamic_head import HeadUpdater, KernelGenerator, dynamic_conv
from .encoder import ConvBNReLU, Encoder
from .validation import check_feature_map, check_positive_int

ATTENTIONS = ("esa", "mhsa", "none")
STRIDE = 32  # total downsampling of the encoder: inputs must be multiples of it
PathLike = Union[str, "os.PathLike[str]"]


class DecoderBlock(nn.Sequential):
    """Two 3x3 conv-BN-ReLU (through ``C_in // 4`` channels), then 2x bilinear upsampling.

    (B, C_in, H, W) -> (B, C_out, 2H, 2W).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        mid = max(in_channels // 4, 1)
        super().__init__(
            ConvBNReLU(in_channels, mid),
            ConvBNReLU(mid, out_channels),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
        )


def skip_attention(
    kind: str,
    dim: int,
    heads: int,
    dim_head: int,
    mlp_dim: int,
    dropout: float = 0.0,
    pooling_sizes: Sequence[int] = (1, 3, 5),
) -> nn.Module:
    """The self-attention block on an encoder feature: (B, dim, H, W) -> (B, dim, H, W).

    ``"esa"``: :class:`~esa_tutorial.blocks.ESABlock`. ``"mhsa"``: the same block with its ESA layer
    swapped for full self-attention of the same size (the ablation baseline).
    ``"none"``: identity.
    """
    if kind not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {kind!r}")
    if kind == "none":
        return nn.Identity()
    block = ESABlock(dim, heads, dim_head, mlp_dim, dropout, pooling_sizes)
    if kind == "mhsa":
        # Same block, same parameter shapes: only where keys and values come from changes.
        block.ESAlayer = MHSA(dim, heads, dim_head, dropout)
    return block


def load_encoder_weights(encoder: nn.Module, path: PathLike) -> None:
    """Load a state dict saved from an :class:`~esa_tutorial.encoder.Encoder` of the same width, with clear errors."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"pretrained_backbone must be a path to a state dict or None, got {type(path).__name__}")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"pretrained_backbone: no file at {str(file)!r}. LDNet's ImageNet Res2Net-50 cannot be "
            "downloaded here and does not fit this encoder; pass a state dict saved with "
            "torch.save(Encoder(width=...).state_dict(), path), or None to start from scratch."
        )
    state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"pretrained_backbone {str(file)!r} holds a {type(state).__name__}, expected a state dict")
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        raise ValueError(
            f"pretrained_backbone {str(file)!r} does not match the encoder: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, wrong shapes {wrong[:3]} (was it saved at another width?)"
        )
    encoder.load_state_dict(state)


class LDNet(nn.Module):
    """Lesion-aware dynamic kernel network: (B, 3, H, W) -> 5 logit maps, fine to coarse.

    Outputs have shapes (B, 1, H/s, W/s) for s = 1, 2, 4, 8, 16; ``H`` and
    ``W`` must be multiples of 32.

    Args:
        width: channels of the first encoder stage; the stages have
            ``width * (1, 1, 2, 4, 8)``, the kernel ``width`` channels.
        heads, dim_head, mlp_dim: size of every ESA and LCA block.
        attention: self-attention on the skips, ``"esa"``, ``"mhsa"`` or ``"none"``.
        use_esa: ``False`` is a shorthand for ``attention="none"``.
        use_lca: refine each decoder input with an LCA block; without it the
            decoder feature goes on unchanged.
        kernel_size: size of the dynamic kernel (LDNet: 1).
        pretrained_backbone: ``None`` or the path of a saved :class:`~esa_tutorial.encoder.Encoder` state dict.
    """

    def __init__(
        self,
        width: int = 16,
        heads: int = 2,
        dim_head: int = 16,
        mlp_dim: int = 64,
        attention: str = "esa",
        use_esa: bool = True,
        use_lca: bool = True,
        kernel_size: int = 1,
        dropout: float = 0.0,
        pooling_sizes: Sequence[int] = (1, 3, 5),
        pretrained_backbone: PathLike | None = None,
    ) -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        if not use_esa:
            if attention == "mhsa":
                raise ValueError("use_esa=False removes the skip attention; it contradicts attention='mhsa'")
            attention = "none"
        self.attention = attention
        self.use_lca = bool(use_lca)
        self.width = check_positive_int("width", width)
        self.encoder = Encoder(width)
        if pretrained_backbone is not None:
            load_encoder_weights(self.encoder, pretrained_backbone)
        c = self.encoder.channels  # (w, w, 2w, 4w, 8w), fine to coarse
        skips = c[3::-1]  # e4, e3, e2, e1
        ins = (c[4],) + skips[:-1]  # decoder channels coming from the coarser stage
        block = dict(heads=heads, dim_head=dim_head, mlp_dim=mlp_dim, dropout=dropout)

        self.top_decoder = DecoderBlock(c[4], c[4])
        self.top_unify = nn.Conv2d(c[4], width, 1)
        self.kernel_generator = KernelGenerator(c[4], width, kernel_size)
        self.skip_attention = nn.ModuleList(
            skip_attention(attention, s, pooling_sizes=pooling_sizes, **block) for s in skips
        )
        self.lca = nn.ModuleList(LCABlock(d, **block) if self.use_lca else nn.Identity() for d in ins)
        self.decoders = nn.ModuleList(DecoderBlock(d + s, s) for d, s in zip(ins, skips))
        self.unify = nn.ModuleList(nn.Conv2d(s, width, 1) for s in skips)
        self.updaters = nn.ModuleList(HeadUpdater(width) for _ in skips)

    @classmethod
    def paper_sized(cls, **kwargs: object) -> "LDNet":
        """LDNet's channel and attention sizes (width 64, 8 heads of 64, MLP 512) on our encoder."""
        sizes: dict = dict(width=64, heads=8, dim_head=64, mlp_dim=512)
        return cls(**{**sizes, **kwargs})

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error unless ``x`` is (B, 3, H, W) with H, W multiples of 32."""
        check_feature_map(x, 3, "LDNet")
        h, w = x.shape[-2:]
        if h % STRIDE or w % STRIDE:
            raise ValueError(
                f"LDNet needs height and width divisible by {STRIDE} (the encoder halves them 5 times), "
                f"got {h}x{w}; resize or pad, e.g. to {STRIDE * max(1, round(h / STRIDE))}x"
                f"{STRIDE * max(1, round(w / STRIDE))}"
            )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, 3, H, W) -> five (B, 1, H/s, W/s) logit maps, s = 1, 2, 4, 8, 16."""
        self.check_input(x)
        features = self.encoder(x)
        top = features[-1]
        d = self.top_decoder(top)
        kernel = self.kernel_generator(top)
        logits = dynamic_conv(self.top_unify(d), kernel)
        outputs = [logits]
        stages = zip(features[3::-1], self.skip_attention, self.lca, self.decoders, self.unify, self.updaters)
        for skip, attend, lca, decode, unify, update in stages:
            refined = lca(d, logits) if self.use_lca else d
            d = decode(torch.cat([refined, attend(skip)], dim=1))
            feat = unify(d)
            kernel = update(feat, kernel, logits)
            logits = dynamic_conv(feat, kernel)
            outputs.append(logits)
        return tuple(outputs[::-1])
