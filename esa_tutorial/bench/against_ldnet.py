"""LDNet's own network beside the package's ``LDNet.full()``: same weights, same input, one run.

LDNet's repository (github.com/ReaFly/LDNet) has no licence, so the package
ships none of its code: you clone it yourself and pass the folder,

    git clone https://github.com/ReaFly/LDNet ldnet-upstream
    python -m esa_tutorial.bench --against-ldnet ldnet-upstream --device cpu

Its network cannot be built as the repository stands, for two reasons in its
code (``models/``): ``__init__.py`` also imports ``LDNet_ResNet34``, which
needs torchvision, and ``LDNet()`` builds its encoder with
``res2net50_v1b_26w_4s(pretrained=True)``, which ``torch.load``\\ s a file at a
path of the authors' machine. :func:`load_ldnet_network` therefore imports
``models/res2net.py``, ``models/modules.py`` and ``models/LDNet.py`` as the
package ``models`` without running its ``__init__.py``, and has the encoder
built with ``pretrained=False``. Nothing in the clone is changed.

:func:`forward_side_by_side` gives the package's network LDNet's (random)
weights through :func:`~esa_tutorial.nn.ldnet_weights.ldnet_checkpoint_to_package`,
checks that both compute the same outputs (LDNet's network returns
probabilities, the package logits: compared after a sigmoid), and times the
two forward passes interleaved, so that a busy machine slows both alike.
"""

from __future__ import annotations

import importlib
import math
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..files import PathLike
from . import time_call

LDNET_FILES = ("models/LDNet.py", "models/modules.py", "models/res2net.py")


def _models_modules() -> dict[str, types.ModuleType]:
    return {k: m for k, m in sys.modules.items() if k == "models" or k.startswith("models.")}


def check_clone(checkout: PathLike) -> Path:
    """``checkout`` as a ``Path`` if it holds the files of LDNet's network, else ``FileNotFoundError`` naming them."""
    root = Path(checkout)
    missing = [name for name in LDNET_FILES if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{str(root)!r} is not a clone of github.com/ReaFly/LDNet: it has no "
                                f"{', '.join(missing)}")
    return root


def load_ldnet_network(checkout: PathLike) -> nn.Module:
    """``LDNet()`` built by LDNet's own code in the clone ``checkout``, with random weights.

    Draws its initial weights from torch's global generator, as LDNet's code
    does. Raises ``FileNotFoundError`` naming the files a clone must hold. Any
    module named ``models`` imported before is put back afterwards.
    """
    root = check_clone(checkout)
    before = _models_modules()
    for name in before:
        del sys.modules[name]
    package = types.ModuleType("models")
    package.__path__ = [str(root / "models")]  # a package whose __init__.py is never run
    sys.modules["models"] = package
    try:
        res2net = importlib.import_module("models.res2net")
        build_encoder = res2net.res2net50_v1b_26w_4s

        def without_weights_file(pretrained: bool = False, **kwargs: object) -> nn.Module:
            return build_encoder(pretrained=False, **kwargs)

        res2net.res2net50_v1b_26w_4s = without_weights_file  # LDNet.py imports this name from here
        network = importlib.import_module("models.LDNet").LDNet()
    finally:
        for name in _models_modules():
            del sys.modules[name]
        sys.modules.update(before)
    return network


@dataclass
class SideBySide:
    """What :func:`forward_side_by_side` measured.

    ``seconds``: the fastest round's forward time of ``"ldnet"`` (LDNet's
    code) and ``"package"`` (``LDNet.full()``); ``rounds``: every round.
    ``max_abs_diff``: the largest difference between the two networks'
    probabilities over all five outputs. ``shape``: the input (B, 3, H, W).
    """

    seconds: dict[str, float]
    max_abs_diff: float
    shape: tuple[int, ...]
    rounds: list[dict[str, float]] = field(default_factory=list)


def forward_side_by_side(checkout: PathLike, size: int = 224, batch: int = 1, device: torch.device | str = "cpu",
                         rounds: int = 5, min_run_time: float = 0.5) -> SideBySide:
    """Time the forward pass (eval mode, no gradients) of LDNet's network and of ``LDNet.full()``.

    Both hold the same weights (drawn with seed 0 by LDNet's code) and see
    the same (``batch``, 3, ``size``, ``size``) input. Each of ``rounds``
    rounds times LDNet's network, then the package's, for ``min_run_time``
    seconds each (:func:`~esa_tutorial.bench.time_call`, the median call);
    the fastest round of each is reported.
    """
    from ..nn.ldnet import LDNet
    from ..nn.ldnet_weights import ldnet_checkpoint_to_package

    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(0)
        theirs = load_ldnet_network(checkout)
    ours = LDNet.full()
    ours.load_state_dict(ldnet_checkpoint_to_package(theirs.state_dict(), ours, f"{checkout} (LDNet's network)"),
                         strict=True)
    theirs, ours = theirs.to(device).eval(), ours.to(device).eval()
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
        diff = max(float((e - torch.sigmoid(g)).abs().max()) for e, g in zip(expected, got, strict=True))
        if not math.isfinite(diff):
            raise RuntimeError(f"the two networks' outputs are not finite (largest difference {diff})")
        timed = [{name: time_call(lambda net=net: net(x), min_run_time, device)
                  for name, net in (("ldnet", theirs), ("package", ours))}
                 for _ in range(rounds)]
    best = {name: min(r[name] for r in timed) for name in ("ldnet", "package")}
    return SideBySide(best, diff, tuple(x.shape), timed)
