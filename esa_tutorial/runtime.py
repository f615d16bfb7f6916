"""Small conveniences the notebooks share: seeding, device choice, shape checks."""

from __future__ import annotations

import os
import random
from typing import Sequence

import numpy as np
import torch


def seed_everything(seed: int = 0) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch's (CPU and every CUDA device).

    It also changes process-wide state: cuDNN is set to deterministic
    algorithms without benchmarking, and ``PYTHONHASHSEED`` is set in
    ``os.environ``, which affects child processes only (string hashing of the
    running interpreter is fixed at its start). Operations without a
    deterministic implementation, other libraries' generators, and the order
    of floating-point reductions across thread counts or machines are not
    covered. For scripts and notebooks; library code takes a seed or a
    ``torch.Generator`` instead.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    # Spelt right: cudnn.deterministic (a common typo, "determinstic", silently does nothing).
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def default_device() -> torch.device:
    """CUDA when a GPU is there, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(name: "str | torch.device | None") -> torch.device:
    """``None`` -> :func:`~esa_tutorial.default_device`; ``"cuda"`` without a GPU -> a clear ``ValueError``."""
    if name is None:
        return default_device()
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(name)!r} requested but CUDA is not available; use 'cpu'")
    return device


def check_shape(t: torch.Tensor, expected: Sequence[int]) -> torch.Tensor:
    """Return ``t`` if its shape is ``expected``, else raise ``ValueError`` naming both."""
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"expected shape {tuple(expected)}, got {tuple(t.shape)}")
    return t
