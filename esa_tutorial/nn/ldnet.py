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
        kernel = HeadUpdater(1x1(d), kernel, logits)   pools 1x1(d) under the previous logits
        logits = dynamic_conv(1x1(d), kernel)  one more output, twice finer

Five outputs (strides 1, 2, 4, 8, 16), all supervised during training.
``width=64`` with ``heads=8, dim_head=64, mlp_dim=512`` gives LDNet's channel
counts (:meth:`LDNet.paper_sized`); the default is four times narrower.

Differences from LDNet's code (``models/LDNet.py`` of ReaFly/LDNet), on
purpose: the encoder is a small CNN (:mod:`esa_tutorial.nn.encoder`), not
Res2Net-50 with 1x1 reductions (``LDNet.full()`` builds that one:
``esa_tutorial.nn.res2net``, 33,375,608 parameters as in LDNet); the outputs are logits, not sigmoids (the loss
then uses the numerically stable BCE-with-logits); one class only. Everything
after the encoder is LDNet's: with LDNet's weights renamed by
:func:`ldnet_key_map`, the five outputs are LDNet's (sigmoid applied) to float
rounding. ``head_pooling="mean"`` is an option of ours, not LDNet's.

The shared parts (encoder, decoders, 1x1 unify convs, kernel generator, head
updaters) are built before the attention blocks, and with ``seed`` every part
is drawn from its own generator (:mod:`esa_tutorial.nn.init`), so the shared parts
start from identical weights whatever ``attention`` and ``use_lca`` are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Sequence, get_args

import torch
from torch import nn

from .attention import MHSA
from .blocks import ESABlock, LCABlock
from ..checkpoints import CheckpointError, load_state_dict_file
from .dynamic_head import HeadUpdater, KernelGenerator, Pooling, dynamic_conv
from .encoder import ConvBNReLU, Encoder
from .init import init_parameters, part_generator
from ..validation import check_choice, check_feature_map, check_positive_int, check_same_dtype
from ..files import PathLike

Attention = Literal["esa", "mhsa", "none"]
ATTENTIONS: tuple[str, ...] = get_args(Attention)
EncoderKind = Literal["small", "res2net50"]
ENCODERS: tuple[str, ...] = get_args(EncoderKind)
# Parts that every variant has; their initial weights do not depend on attention or LCA.
SHARED_PARTS = ("encoder", "top_decoder", "top_unify", "kernel_generator", "decoders", "unify", "updaters")
STRIDE = 32  # total downsampling of the encoder: inputs must be multiples of it


def check_attention(value: object) -> Attention:
    """Return ``value`` if it names a skip attention (``"esa"``, ``"mhsa"``, ``"none"``), else raise."""
    return check_choice("attention", value, ATTENTIONS)  # type: ignore[return-value]


class DecoderBlock(nn.Sequential):
    """Two 3x3 conv-BN-ReLU (through ``C_in // 4`` channels), then 2x bilinear upsampling.

    (B, C_in, H, W) -> (B, C_out, 2H, 2W). The convolutions keep a bias, as
    LDNet's ``ConvBlock`` does: redundant before batch norm in training, but in
    eval mode it is part of the function, and it lets LDNet's decoder weights
    load unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        mid = max(in_channels // 4, 1)
        super().__init__(
            ConvBNReLU(in_channels, mid, bias=True),
            ConvBNReLU(mid, out_channels, bias=True),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
        )


def skip_attention(
    kind: Attention,
    dim: int,
    heads: int,
    dim_head: int,
    mlp_dim: int,
    dropout: float = 0.0,
    pooling_sizes: Sequence[int] = (1, 3, 5),
) -> nn.Module:
    """The self-attention block on an encoder feature: (B, dim, H, W) -> (B, dim, H, W).

    ``"esa"``: :class:`~esa_tutorial.nn.blocks.ESABlock`. ``"mhsa"``: the same block with its ESA layer
    swapped for full self-attention of the same size (the ablation baseline).
    ``"none"``: identity.
    """
    if check_attention(kind) == "none":
        return nn.Identity()
    block = ESABlock(dim, heads, dim_head, mlp_dim, dropout, pooling_sizes)
    if kind == "mhsa":
        # Same block, same parameter shapes: only where keys and values come from changes.
        # Copying the weights keeps the two variants' blocks equal at the start as well.
        mhsa = MHSA(dim, heads, dim_head, dropout)
        mhsa.load_state_dict(block.ESAlayer.state_dict())
        block.ESAlayer = mhsa
    return block


def build_encoder(kind: EncoderKind, width: int) -> nn.Module:
    """The encoder called ``kind``: ``"small"`` (:class:`~esa_tutorial.nn.encoder.Encoder` of ``width``)
    or ``"res2net50"`` (LDNet's Res2Net-50 v1b with 1x1 reductions, which fixes ``width=64``)."""
    if check_choice("encoder", kind, ENCODERS) == "small":
        return Encoder(width)
    if width != 64:
        raise ValueError(f"encoder='res2net50' gives LDNet's channels 64, 64, 128, 256, 512, so width must be 64, "
                         f"got {width}")
    from esa_tutorial.nn.res2net import Res2NetEncoder

    return Res2NetEncoder()


def load_encoder_weights(encoder: nn.Module, path: PathLike) -> None:
    """Load a state dict saved from an :class:`~esa_tutorial.nn.encoder.Encoder` of the same width, with clear errors."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"pretrained_backbone must be a path to a state dict or None, got {type(path).__name__}")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"pretrained_backbone: no file at {str(file)!r}. LDNet's ImageNet Res2Net-50 cannot be "
            "downloaded here and does not fit this encoder; pass a state dict saved with "
            "torch.save(Encoder(width=...).state_dict(), path), or None to start from scratch."
        )
    try:  # weights_only loading; a garbage, truncated or pickled-object file is an error naming the file
        state = load_state_dict_file(file)
    except CheckpointError as err:
        raise CheckpointError(f"pretrained_backbone: {err}") from None
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
        use_lca: refine each decoder input with an LCA block; without it the
            decoder feature goes on unchanged.
        kernel_size: size of the dynamic kernel (LDNet: 1).
        head_pooling: how the head updaters pool the lesion feature,
            ``"sum"`` (LDNet's code) or ``"mean"``
            (``esa_tutorial.nn.dynamic_head.lesion_feature``).
        seed: initial weights. Every part (encoder, each decoder, each head
            updater, each attention block...) is drawn from its own generator,
            fixed by ``seed`` and the part's name, so equal seeds give equal
            shared parts across ablation variants. ``None`` draws the seed from
            torch's global generator (one number), so ``torch.manual_seed``
            before building has the same effect.
        pretrained_backbone: ``None`` or the path of a saved :class:`~esa_tutorial.nn.encoder.Encoder` state dict
            (``encoder="small"``) or of ImageNet Res2Net-50 v1b weights (``encoder="res2net50"``).
        encoder: ``"small"`` (the default, a compact CNN) or ``"res2net50"``
            (LDNet's own encoder; :meth:`full` builds the whole paper network).
    """

    def __init__(
        self,
        width: int = 16,
        heads: int = 2,
        dim_head: int = 16,
        mlp_dim: int = 64,
        attention: Attention = "esa",
        use_lca: bool = True,
        kernel_size: int = 1,
        dropout: float = 0.0,
        pooling_sizes: Sequence[int] = (1, 3, 5),
        head_pooling: Pooling = "sum",
        seed: int | None = None,
        pretrained_backbone: PathLike | None = None,
        encoder: EncoderKind = "small",
    ) -> None:
        super().__init__()
        self.attention = check_attention(attention)
        if not isinstance(use_lca, bool):
            raise TypeError(f"use_lca must be True or False, got {use_lca!r}")
        self.use_lca = use_lca
        self.width = check_positive_int("width", width)
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, (), device="cpu").item())
        self.seed = seed
        self.encoder_kind = encoder
        self.encoder = build_encoder(encoder, width)
        c = self.encoder.channels  # (w, w, 2w, 4w, 8w), fine to coarse
        skips = c[3::-1]  # e4, e3, e2, e1
        ins = (c[4],) + skips[:-1]  # decoder channels coming from the coarser stage
        block = dict(heads=heads, dim_head=dim_head, mlp_dim=mlp_dim, dropout=dropout)

        self.top_decoder = DecoderBlock(c[4], c[4])
        self.top_unify = nn.Conv2d(c[4], width, 1)
        self.kernel_generator = KernelGenerator(c[4], width, kernel_size)
        self.decoders = nn.ModuleList(DecoderBlock(d + s, s) for d, s in zip(ins, skips))
        self.unify = nn.ModuleList(nn.Conv2d(s, width, 1) for s in skips)
        self.updaters = nn.ModuleList(HeadUpdater(width, head_pooling) for _ in skips)
        self.lca = nn.ModuleList(LCABlock(d, **block) if use_lca else nn.Identity() for d in ins)
        self.skip_attention = nn.ModuleList(
            skip_attention(self.attention, s, pooling_sizes=pooling_sizes, **block) for s in skips
        )
        for name, part in self.parts().items():
            init_parameters(part, part_generator(seed, name))
        if pretrained_backbone is not None and encoder == "small":
            load_encoder_weights(self.encoder, pretrained_backbone)
        elif pretrained_backbone is not None:
            self.encoder.load_pretrained(pretrained_backbone)

    def parts(self) -> dict[str, nn.Module]:
        """The separately initialised parts by name: ``encoder``, ``decoders.0``, ``lca.3``, ..."""
        parts: dict[str, nn.Module] = {}
        for name, module in self.named_children():
            if isinstance(module, nn.ModuleList):
                parts.update({f"{name}.{i}": m for i, m in enumerate(module)})
            else:
                parts[name] = module
        return parts

    def shared_state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters and buffers of the parts every variant has (:data:`SHARED_PARTS`)."""
        return {k: v for k, v in self.state_dict().items() if k.split(".")[0] in SHARED_PARTS}

    @classmethod
    def paper_sized(cls, **kwargs: object) -> "LDNet":
        """LDNet's channel and attention sizes (width 64, 8 heads of 64, MLP 512) on our encoder."""
        sizes: dict = dict(width=64, heads=8, dim_head=64, mlp_dim=512)
        return cls(**{**sizes, **kwargs})

    @classmethod
    def full(cls, **kwargs: object) -> "LDNet":
        """LDNet's whole network (33,375,608 parameters): :meth:`paper_sized` on Res2Net-50 v1b 26w x 4s.

        ``LDNet.full(pretrained_backbone=path)`` starts the encoder from
        ImageNet weights (the Res2Net authors' ``res2net50_v1b_26w_4s`` file or
        timm's ``res2net50d``; ``fc.*`` ignored). Outputs stay logits.
        """
        return cls.paper_sized(**{"encoder": "res2net50", **kwargs})

    @classmethod
    def from_ldnet_checkpoint(cls, path: PathLike, **kwargs: object) -> "LDNet":
        """:meth:`full` with the weights of a state dict written by LDNet's ``train.py``, in eval mode.

        Strict (every tensor present, no extra, same shapes), ``weights_only``;
        the ``*List`` aliases, a ``module.`` prefix and the deduplicated form
        are accepted (:func:`esa_tutorial.nn.ldnet_weights.load_ldnet_checkpoint`).
        """
        from esa_tutorial.nn.ldnet_weights import full_model_from_ldnet_file

        return full_model_from_ldnet_file(cls, path, **kwargs)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error unless ``x`` is (B, 3, H, W) with H, W multiples of 32, in the model's dtype."""
        check_feature_map(x, 3, "LDNet")
        check_same_dtype(x, self.top_unify.weight, "LDNet")
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
            # LCA refines the coarser decoder feature with that stage's logits, at the same size.
            refined = lca(d, logits) if self.use_lca else d
            d = decode(torch.cat([refined, attend(skip)], dim=1))
            feat = unify(d)
            kernel = update(feat, kernel, logits)  # pools feat under the previous logits, upsampled x2
            logits = dynamic_conv(feat, kernel)
            outputs.append(logits)
        return tuple(outputs[::-1])


def ldnet_key_map(ldnet_keys: Sequence[str]) -> dict[str, str]:
    """Rename the post-encoder keys of a state dict of LDNet's code to this package's names.

    ``ldnet_keys``: keys of ``LDNet().state_dict()`` from ``models/LDNet.py``
    (ReaFly/LDNet). Returns ``{ldnet_key: package_key}`` for every key after
    the encoder; encoder (``encoder*``), ``reduce*`` and the duplicate
    ``*List`` aliases are left out. The ESA and LCA blocks keep their inner
    names (``ESAlayer``, ``LCAlayer``, ``ff.norm``, ``ff.fn.net``).

    ==============================  =====================================
    LDNet                           package
    ==============================  =====================================
    ``decoder5``                    ``top_decoder``
    ``decoder{4,3,2,1}``            ``decoders.{0,1,2,3}``
    ``*.conv{1,2}.conv``/``.bn``    ``*.{0,1}.0`` / ``*.{0,1}.1``
    ``unify5``                      ``top_unify``
    ``unify{4,3,2,1}``              ``unify.{0,1,2,3}``
    ``gobal_average_pool.0``        ``kernel_generator.context.0``
    ``generate_head``               ``kernel_generator.generate``
    ``headUpdators.i``              ``updaters.i`` (inner names: :class:`HeadUpdater`)
    ``esa{4,3,2,1}``                ``skip_attention.{0,1,2,3}``
    ``lca{4,3,2,1}``                ``lca.{0,1,2,3}``
    ==============================  =====================================
    """
    updater = {
        "pred_transform_layer": "lesion_proj", "head_transform_layer": "kernel_proj",
        "pred_gate": "lesion_gate.0", "pred_norm_in": "lesion_gate.1",
        "head_gate": "kernel_gate.0", "head_norm_in": "kernel_gate.1",
        "pred_norm_out": "lesion_norm", "head_norm_out": "kernel_norm",
        "fc_layer": "out.0", "fc_norm": "out.1",
    }
    stage = {"4": "0", "3": "1", "2": "2", "1": "3"}
    mapping: dict[str, str] = {}
    for key in ldnet_keys:
        head, _, rest = key.partition(".")
        if head.startswith("decoder") and not head.endswith("List"):
            conv, _, leaf = rest.partition(".")  # conv1.conv.weight -> 0.0.weight
            layer, _, param = leaf.partition(".")
            inner = f"{int(conv[-1]) - 1}.{ {'conv': 0, 'bn': 1}[layer] }.{param}"
            n = head[-1]
            mapping[key] = f"top_decoder.{inner}" if n == "5" else f"decoders.{stage[n]}.{inner}"
        elif head.startswith("unify") and not head.endswith("List"):
            n = head[-1]
            mapping[key] = f"top_unify.{rest}" if n == "5" else f"unify.{stage[n]}.{rest}"
        elif head == "gobal_average_pool":
            mapping[key] = f"kernel_generator.context.{rest}"
        elif head == "generate_head":
            mapping[key] = f"kernel_generator.generate.{rest}"
        elif head == "headUpdators":
            i, _, inner = rest.partition(".")
            layer, _, param = inner.partition(".")
            mapping[key] = f"updaters.{i}.{updater[layer]}.{param}"
        elif head[:3] in ("esa", "lca") and head[3:].isdigit():
            part = "skip_attention" if head[:3] == "esa" else "lca"
            mapping[key] = f"{part}.{stage[head[3:]]}.{rest}"
    return mapping
