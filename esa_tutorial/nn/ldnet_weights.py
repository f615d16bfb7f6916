"""Weights in and out of :meth:`LDNet.full() <esa_tutorial.LDNet.full>`: ImageNet Res2Net files and LDNet's checkpoints.

Two kinds of files, both plain ``torch.save`` state dicts, both read with
``weights_only=True`` (tensors only, never code):

* **ImageNet Res2Net-50 v1b**: the Res2Net authors' ``res2net50_v1b_26w_4s``
  file or timm's ``res2net50d`` (``timm.create_model("res2net50d",
  pretrained=True).state_dict()``): 524 keys, ``conv1.0.weight`` ...
  ``fc.bias``. :func:`load_res2net_weights` loads the 522 that are not the
  classifier into :class:`~esa_tutorial.nn.res2net.Res2Net`.
* **LDNet's checkpoints**: ``torch.save(model.state_dict())`` of
  ``models/LDNet.py`` (ReaFly/LDNet) writes 902 keys for 766 tensors, because
  LDNet registers its decoders, unify convolutions, ESA and LCA blocks twice:
  as ``decoder4`` ... and again in the lists ``decoderList.0`` ... (likewise
  ``unifyList``, ``esaList``, ``lcaList``; 136 alias keys).
  :func:`load_ldnet_checkpoint` accepts that form, the same with every key
  prefixed ``module.`` (``nn.DataParallel``), and the deduplicated 766-key
  form; an alias must equal the tensor it repeats.

The names: :func:`ldnet_key` gives LDNet's name of every key of the
package's full network (encoder: ``encoder.backbone.conv1`` ->
``encoder1_conv``, ``bn1`` -> ``encoder1_bn``, ``layerN`` -> ``encoder{N+1}``,
``encoder.reduce.i`` -> ``reduce{i+2}``; the rest as in
``esa_tutorial.nn.ldnet.ldnet_key_map``, of which it is the inverse).
:func:`ldnet_state_dict` writes the package's weights in LDNet's layout
(902 keys, LDNet's order), which LDNet's code loads.

A file of the wrong kind (a Res2Net file given as an LDNet checkpoint or the
reverse, another depth, a truncated file, something else) raises
:class:`~esa_tutorial.checkpoints.CheckpointError` naming the file, what it
holds (:func:`describe_state_dict`) and the first missing and unexpected keys.

**Where such files come from** (none can be downloaded on the machines that
build this package: its tests write files of the same layout from generated
weights):

* the Res2Net authors' ImageNet file ``res2net50_v1b_26w_4s-3cf99910.pth``,
  the one LDNet's code loads (its URL is in LDNet's ``models/res2net.py``);
* timm's ``res2net50d.in1k``, e.g. on Colab:
  ``torch.save(timm.create_model("res2net50d", pretrained=True).state_dict(), "res2net50d.pth")``.
  timm's ``res2net50d`` has the same keys, shapes and outputs as the
  authors' model (checked with one state dict in both); whether its
  pretrained weights are the authors' file was not checked, and timm lists
  their licence as unknown;
* LDNet checkpoints: LDNet's repository publishes none. A third party
  (EndoKED) released an LDNet checkpoint trained with its own pretraining; it
  was not available here, so whether it loads as it is was not checked.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..checkpoints import CheckpointError, load_state_dict_file
from .res2net import DEPTHS
from ..files import PathLike


# LDNet's registration order of its top-level modules (so of its state dict), then the aliases.
LDNET_ORDER = (
    "encoder1_conv", "encoder1_bn", "encoder2", "encoder3", "encoder4", "encoder5",
    "reduce2", "reduce3", "reduce4", "reduce5",
    "decoder5", "decoder4", "decoder3", "decoder2", "decoder1",
    "gobal_average_pool", "generate_head", "headUpdators",
    "unify1", "unify2", "unify3", "unify4", "unify5",
    "esa1", "esa2", "esa3", "esa4", "lca1", "lca2", "lca3", "lca4",
)
# ``<list>.i`` is the same module as ``<name>{4 - i}``: LDNet lists its stages coarse to fine.
ALIASES = {"decoderList": "decoder", "unifyList": "unify", "esaList": "esa", "lcaList": "lca"}
_UPDATER = {  # the package's HeadUpdater names -> LDNet's HeadUpdator names
    "lesion_proj": "pred_transform_layer", "kernel_proj": "head_transform_layer",
    "lesion_gate.0": "pred_gate", "lesion_gate.1": "pred_norm_in",
    "kernel_gate.0": "head_gate", "kernel_gate.1": "head_norm_in",
    "lesion_norm": "pred_norm_out", "kernel_norm": "head_norm_out",
    "out.0": "fc_layer", "out.1": "fc_norm",
}


def ldnet_key(key: str) -> str:
    """LDNet's name for ``key`` of ``LDNet.full().state_dict()``.

    E.g. ``decoders.0.1.1.bias`` -> ``decoder4.conv2.bn.bias``; raises ``KeyError`` for a key the full network lacks.
    """
    head, _, rest = key.partition(".")
    stage = lambda j: str(4 - int(j))  # noqa: E731  (package stage 0 is LDNet's stage 4)
    if head == "encoder":
        part, _, inner = rest.partition(".")
        if part == "reduce":
            i, _, param = inner.partition(".")
            return f"reduce{int(i) + 2}.{param}"
        top, _, sub = inner.partition(".")
        if top in ("conv1", "bn1"):
            return f"encoder1_{top[:-1]}.{sub}"
        if top.startswith("layer"):
            return f"encoder{int(top[5:]) + 1}.{sub}"
    elif head in ("top_decoder", "decoders"):
        if head == "decoders":
            j, _, rest = rest.partition(".")
        conv, layer, param = rest.split(".", 2)
        name = "decoder5" if head == "top_decoder" else f"decoder{stage(j)}"
        return f"{name}.conv{int(conv) + 1}.{('conv', 'bn')[int(layer)]}.{param}"
    elif head == "top_unify":
        return f"unify5.{rest}"
    elif head in ("unify", "skip_attention", "lca"):
        j, _, inner = rest.partition(".")
        return f"{ {'unify': 'unify', 'skip_attention': 'esa', 'lca': 'lca'}[head] }{stage(j)}.{inner}"
    elif head == "kernel_generator":
        part, _, inner = rest.partition(".")
        return f"{ {'context': 'gobal_average_pool', 'generate': 'generate_head'}[part] }.{inner}"
    elif head == "updaters":
        i, _, inner = rest.partition(".")
        layer, _, param = inner.rpartition(".")
        return f"headUpdators.{i}.{_UPDATER[layer]}.{param}"
    raise KeyError(f"no LDNet name for {key!r}: not a key of LDNet.full()")


def _alias_of(key: str) -> str | None:
    """``decoderList.0.conv1.conv.weight`` -> ``decoder4.conv1.conv.weight``; None for a key that is no alias."""
    head, _, rest = key.partition(".")
    if head not in ALIASES:
        return None
    i, _, inner = rest.partition(".")
    return f"{ALIASES[head]}{4 - int(i)}.{inner}" if i.isdigit() and 0 <= int(i) < 4 else None


def _rank(key: str) -> int:
    head = key.partition(".")[0]
    return LDNET_ORDER.index(head) if head in LDNET_ORDER else len(LDNET_ORDER) + list(ALIASES).index(head)


def ldnet_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of ``LDNet.full()`` in LDNet's layout: 902 keys, aliases included, LDNet's order.

    ``torch.save(ldnet_state_dict(model), path)`` writes the file LDNet's
    ``train.py`` would have written for the same weights; the alias keys share
    storage with their originals, as in LDNet.
    """
    state = {ldnet_key(k): v for k, v in model.state_dict().items()}
    for key in list(state):
        head, _, rest = key.partition(".")
        for alias, base in ALIASES.items():
            number = head[len(base):]
            if head.startswith(base) and number in ("1", "2", "3", "4"):  # decoder5, unify5 have no alias
                state[f"{alias}.{4 - int(number)}.{rest}"] = state[key]
    return dict(sorted(state.items(), key=lambda kv: _rank(kv[0])))


def describe_state_dict(state: Mapping[str, torch.Tensor]) -> str:
    """What a state dict looks like it holds, in words (for error messages)."""
    keys = [k[len("module."):] if k.startswith("module.") else k for k in state]
    prefix = " (keys prefixed 'module.')" if keys and all(k.startswith("module.") for k in state) else ""
    heads = {k.split(".")[0] for k in keys}
    if {"encoder1_conv", "decoder5"} & heads:
        aliases = sum(1 for k in keys if _alias_of(k) is not None)
        return f"an LDNet state dict of {len(keys)} keys ({aliases} of them '*List' aliases){prefix}"
    if "encoder" in heads and "top_decoder" in heads:
        return (f"a state dict of this package's LDNet ({len(keys)} keys); load it with "
                "model.load_state_dict, or a save_checkpoint file with esa_tutorial.train.model_from_checkpoint")
    if "conv1.0.weight" in keys and any(k.startswith("layer1.0.convs.") for k in keys):
        blocks = tuple(len({m.group(1) for k in keys if (m := re.match(rf"layer{i}\.(\d+)\.", k))})
                       for i in range(1, 5))
        depth = next((d for d, b in DEPTHS.items() if b == blocks), None)
        name = f"Res2Net-{depth}" if depth else f"a Res2Net with blocks {blocks}"
        first = state.get(next(k for k in state if k.endswith("layer1.0.convs.0.weight")))
        groups = sum(1 for k in keys if re.match(r"layer1\.0\.convs\.\d+\.weight$", k)) + 1
        width = f" {first.shape[0]}w x {groups}s" if isinstance(first, torch.Tensor) else ""
        fc = ", with an ImageNet classifier (fc)" if "fc.weight" in keys else ""
        return f"{name} v1b{width} weights ({len(keys)} keys{fc}){prefix}"
    if "conv1.weight" in keys and any(k.startswith("layer1.0.convs.") for k in keys):
        return (f"Res2Net weights with a 7x7 stem ({len(keys)} keys): res2net50_26w_4s, not the v1b variant "
                f"(deep 3x3 stem, res2net50_v1b_26w_4s / timm res2net50d) that LDNet uses{prefix}")
    if "conv1.weight" in keys and any(k.startswith("layer1.0.conv2.") for k in keys):
        return f"ResNet weights ({len(keys)} keys), not Res2Net{prefix}"
    shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
    return f"a state dict of {len(keys)} tensors ({shown})"


def read_state_dict(path: object, what: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """(path, state dict) of a plain ``torch.save`` file, ``weights_only``; errors start with ``what``, name the file."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a path to a state-dict file, got {type(path).__name__}")
    file = Path(path)
    try:
        return file, load_state_dict_file(file)
    except CheckpointError as err:
        raise CheckpointError(f"{what}: {err}") from None


def _mismatch(file: Path, what: str, holds: str, expected: Mapping[str, torch.Tensor],
              given: Mapping[str, torch.Tensor], hint: str = "") -> None:
    """Raise naming the first missing, unexpected and wrongly shaped keys, if there are any."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    wrong = [f"{k} {tuple(given[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if k in given and given[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (first: {missing[:3]})" if missing else "",
                 f"{len(unexpected)} unexpected (first: {unexpected[:3]})" if unexpected else "",
                 f"{len(wrong)} of another shape (first: {wrong[:2]})" if wrong else ""]
        raise CheckpointError(f"{what} {file} holds {holds}, which does not fit: "
                              + "; ".join(p for p in parts if p) + hint)


def load_res2net_weights(backbone: nn.Module, path: PathLike) -> None:
    """Load ImageNet Res2Net-50 v1b weights into ``backbone`` strictly; ``fc.*`` (the classifier) is skipped.

    ``backbone`` is a :class:`~esa_tutorial.nn.res2net.Res2Net`. The file is
    the authors' ``res2net50_v1b_26w_4s`` state dict or timm's ``res2net50d``
    (the same 524 keys); a ``module.`` prefix is accepted. Raises
    ``FileNotFoundError`` or :class:`~esa_tutorial.checkpoints.CheckpointError`
    naming the file, what it holds and the first missing/unexpected keys.
    """
    file, state = read_state_dict(path, "pretrained_backbone")
    holds = describe_state_dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    weights = {k: v for k, v in state.items() if not k.startswith("fc.")}
    hint = (" (an LDNet checkpoint holds the whole network: use LDNet.from_ldnet_checkpoint)"
            if holds.startswith("an LDNet") else "")
    _mismatch(file, "pretrained_backbone", holds, backbone.state_dict(), weights, hint)
    backbone.load_state_dict(weights, strict=True)


def ldnet_checkpoint_to_package(state: Mapping[str, torch.Tensor], model: nn.Module,
                                file: Path | str = "<state dict>") -> dict[str, torch.Tensor]:
    """Rename a state dict of LDNet's code to ``model``'s keys (``model`` is an ``LDNet.full()``), checking it all.

    Drops a ``module.`` prefix; checks that every ``*List`` alias equals the
    tensor it repeats (and uses it where the original is absent); then
    requires exactly LDNet's keys with the right shapes. Raises
    :class:`~esa_tutorial.checkpoints.CheckpointError` otherwise.
    """
    holds = describe_state_dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    plain: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        original = _alias_of(key)
        if original is None:
            plain[key] = value
    for key, value in state.items():
        original = _alias_of(key)
        if original is None:
            continue
        if original in plain:
            same = plain[original].shape == value.shape and torch.equal(plain[original], value)
            if not same:
                raise CheckpointError(f"LDNet checkpoint {file}: {key} is an alias of {original} in LDNet's "
                                      "network but holds another tensor (an edited file?)")
        else:
            plain[original] = value  # a deduplicated file that kept the alias and dropped the original
    own = model.state_dict()
    names = {ldnet_key(k): k for k in own}
    expected = {ldnet: own[k] for ldnet, k in names.items()}
    hint = (" (an ImageNet Res2Net file holds the encoder only: use LDNet.full(pretrained_backbone=...))"
            if "Res2Net" in holds else "")
    _mismatch(Path(file), "LDNet checkpoint", holds, expected, plain, hint)
    return {names[k]: v for k, v in plain.items()}


def load_ldnet_checkpoint(model: nn.Module, path: PathLike) -> None:
    """Load a file written by LDNet's ``train.py`` into ``model`` (an ``LDNet.full()``), strictly, ``weights_only``.

    Accepts the 902-key file, the same with a ``module.`` prefix and the
    deduplicated 766-key form. Raises ``FileNotFoundError`` or
    :class:`~esa_tutorial.checkpoints.CheckpointError` naming the file.
    """
    file, state = read_state_dict(path, "LDNet checkpoint")
    model.load_state_dict(ldnet_checkpoint_to_package(state, model, file), strict=True)


def full_model_from_ldnet_file(cls: type, path: PathLike, **kwargs: object) -> nn.Module:
    """``cls.full(**kwargs)`` holding the weights of LDNet's checkpoint at ``path``, in eval mode.

    The file is read and checked before the network is built, and the network
    is built on the ``meta`` device (shapes only), then given the file's
    tensors (``assign=True``): no random initial weights are drawn for 33 M
    parameters that the file replaces.
    """
    file, state = read_state_dict(path, "LDNet checkpoint")
    with torch.device("meta"):
        model = cls.full(**kwargs)
    own = model.state_dict()
    weights = ldnet_checkpoint_to_package(state, model, file)
    # assign=True would keep the file's dtype and layout: a half-precision file would give a half model.
    weights = {k: v.to(dtype=own[k].dtype).contiguous() for k, v in weights.items()}
    model.load_state_dict(weights, strict=True, assign=True)
    return model.eval()
