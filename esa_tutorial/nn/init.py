"""Initialise a module's parameters from a ``torch.Generator``, as torch's defaults do.

Building a module draws its initial weights from torch's global random
stream, so a module's weights depend on everything built before it. An
ablation needs the shared parts of its variants to start equal whatever the
other parts are; :func:`init_parameters` redraws a part's weights from its own
generator with the same distributions as torch's defaults, so the result no
longer depends on build order (and no global state is touched).
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn

from ..validation import check_seed

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)


def part_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator for the part called ``name``, fixed by ``seed`` and the name alone."""
    check_seed(seed)
    # A stable hash (unlike hash()), mixing seed and name into the low 32 bits, the only
    # ones torch's CPU generator (mt19937) uses.
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:4], "little"))


@torch.no_grad()
def init_parameters(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Redraw every parameter of ``module`` from ``generator``; returns ``module``.

    Linear and convolution layers get torch's default: weights
    ``kaiming_uniform_(a=sqrt(5))``, i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    and biases from the same range. Norm layers get ones and zeros and fresh
    running statistics. Any other layer with parameters raises ``TypeError``
    rather than being left at its old values. A module on the ``meta``
    device (shapes only, no values) is returned unchanged.
    """
    if any(p.is_meta for p in module.parameters()):
        return module
    for sub in module.modules():
        if isinstance(sub, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            fan_in = sub.weight[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in else 0.0
            cpu = torch.empty(sub.weight.shape, device="cpu").uniform_(-bound, bound, generator=generator)
            sub.weight.copy_(cpu)
            if sub.bias is not None:
                sub.bias.copy_(torch.empty(sub.bias.shape, device="cpu").uniform_(-bound, bound, generator=generator))
        elif isinstance(sub, _NORMS):
            sub.reset_parameters()
        elif any(True for _ in sub.parameters(recurse=False)):
            raise TypeError(f"init_parameters does not know how to initialise {type(sub).__name__}")
    return module
