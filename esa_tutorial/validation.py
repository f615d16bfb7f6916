"""Argument and input checks shared by every module of the package.

Each check raises a ``ValueError`` (or ``TypeError``) that names what was
expected and what came, so that a reader sees the mistake in their own terms
instead of a stack trace from deep inside torch.
"""

from __future__ import annotations

import math
from typing import Sequence, TypeVar

import numpy as np
import torch

T = TypeVar("T")


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_int_range(name: str, value: object, low: int, high: int) -> int:
    """Return ``value`` if it is an int in [low, high], else raise ``ValueError`` naming the range.

    The upper bound keeps a value such as ``10**20`` from reaching torch, which
    would fail deep inside with an overflow instead of naming the option.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return value


def check_float_range(name: str, value: object, low: float, high: float, *, low_open: bool = False) -> float:
    """Return ``value`` as a float if it is finite and in [low, high] ((low, high] with ``low_open``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value > high or (value <= low if low_open else value < low):
        left = "(" if low_open else "["
        raise ValueError(f"{name} must be a finite number in {left}{low:g}, {high:g}], got {value!r}")
    return float(value)


def check_kernel_size(value: object) -> int:
    """Return ``value`` if it is an odd int >= 1: an even kernel cannot keep the map's size with symmetric padding."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer (1, 3, 5, ...), got {value!r}")
    return value


SEED_LIMIT = 2**32  # NumPy's seeds (seed_everything seeds NumPy too) lie in [0, 2**32)


def check_seed(value: object, name: str = "seed") -> int:
    """Return ``value`` if it is an int in [0, 2**32) (a seed every generator accepts), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
        raise ValueError(f"{name} must be an integer in [0, 2**32), got {value!r}")
    return value


def check_non_negative_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 0, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def check_finite(name: str, value: object, low: float | None = None, *, strict: bool = False) -> float:
    """Return ``value`` as a float if it is a finite real number (``> low`` if ``strict``, else ``>= low``).

    Else ``ValueError`` naming ``name``, the bound and the value: NaN, inf, bools and
    strings are refused (a NaN learning rate would silently turn every weight into NaN).
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if strict else value >= low  # type: ignore[operator]
    if not ok:
        bound = "" if low is None else (f" > {low:g}" if strict else f" >= {low:g}")
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_dropout(value: object) -> float:
    """Return ``value`` as a float if it lies in [0, 1), else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"dropout must be a probability in [0, 1), got {value!r}")
    return float(value)


def check_pooling_sizes(sizes: object) -> tuple[int, ...]:
    """Return ``sizes`` as a tuple of positive ints; reject empty or non-positive entries."""
    if isinstance(sizes, int) or not isinstance(sizes, Sequence) or len(sizes) == 0:
        raise ValueError(
            f"pooling_sizes must be a non-empty sequence of positive integers, got {sizes!r}"
        )
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ValueError(
                f"pooling_sizes must be a non-empty sequence of positive integers, got {sizes!r}"
            )
    return tuple(sizes)


def check_feature_map(x: object, channels: int | None, who: str) -> torch.Tensor:
    """Check that ``x`` is a floating (B, C, H, W) tensor with ``C == channels``.

    ``channels=None`` accepts any channel count. Returns ``x`` unchanged.
    """
    expected = f"(B, C, H, W) with C={channels}" if channels is not None else "(B, C, H, W)"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who} expects a torch.Tensor {expected}, got {type(x).__name__}")
    if x.is_nested or x.layout != torch.strided or x.is_quantized:
        kind = "nested" if x.is_nested else "quantized" if x.is_quantized else str(x.layout).replace("torch.", "")
        raise TypeError(f"{who} expects a dense (strided) floating-point tensor, got a {kind} tensor; "
                        "convert it first, e.g. x.to_dense() or x.dequantize()")
    if x.dim() != 4 or (channels is not None and x.shape[1] != channels):
        raise ValueError(f"{who} expects {expected}, got {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{who} expects a non-empty {expected}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{who} expects a floating-point tensor, got dtype {x.dtype}")
    return x


def check_choice(name: str, value: T, choices: Sequence[T]) -> T:
    """Return ``value`` if it is one of ``choices`` (e.g. ``typing.get_args`` of a ``Literal``), else raise ``ValueError``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_same_dtype(x: torch.Tensor, weight: torch.Tensor, who: str) -> None:
    """Raise unless the input ``x`` can meet the module's ``weight``: same device, same dtype.

    A different dtype is accepted only while ``torch.autocast`` is enabled for
    x's device type: autocast casts each operation's inputs itself, and an
    input coming from an earlier autocast layer (bfloat16, float16) meeting
    float32 weights is exactly what mixed precision looks like.
    """
    if x.dtype != weight.dtype and not autocast_enabled(x.device.type):
        raise TypeError(
            f"{who} parameters are {weight.dtype} but the input is {x.dtype}; "
            f"convert one of them, e.g. module.to({x.dtype}), or run under torch.autocast"
        )
    if x.device != weight.device:
        raise ValueError(
            f"{who} parameters are on {weight.device} but the input is on {x.device}; "
            f"move one of them, e.g. module.to({str(x.device)!r})"
        )


def autocast_enabled(device_type: str) -> bool:
    """Whether ``torch.autocast`` is on for ``device_type``; False where there is none (``meta``)."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def check_mask_logits(mask_logits: object, x: torch.Tensor, who: str) -> torch.Tensor:
    """Check that ``mask_logits`` is a floating (B, 1, H, W) tensor matching ``x`` (B, C, H, W).

    Rule for masks that are not logits: bool and integer tensors are refused,
    because a sigmoid of 0/1 gives 0.5/0.73, not a mask. Pass logits instead,
    e.g. ``torch.where(mask, 10.0, -10.0)``. A float dtype other than ``x``'s
    is refused too (outside autocast), instead of silently promoting.
    """
    b, _, h, w = x.shape
    if not isinstance(mask_logits, torch.Tensor) or tuple(mask_logits.shape) != (b, 1, h, w):
        got = tuple(mask_logits.shape) if isinstance(mask_logits, torch.Tensor) else type(mask_logits).__name__
        raise ValueError(f"{who} expects mask logits of shape {(b, 1, h, w)}, got {got}")
    if not mask_logits.is_floating_point():
        raise TypeError(
            f"{who} expects floating-point mask logits (a sigmoid is applied to them), got "
            f"{mask_logits.dtype}; a 0/1 mask is not logits: pass e.g. torch.where(mask, 10.0, -10.0)"
        )
    autocast = autocast_enabled(x.device.type)
    if mask_logits.dtype != x.dtype and not autocast:
        raise TypeError(
            f"{who}: the features are {x.dtype} but the mask logits are {mask_logits.dtype}; "
            f"convert the mask, e.g. mask_logits.to({x.dtype})"
        )
    if mask_logits.device != x.device:
        raise ValueError(f"{who}: the features are on {x.device} but the mask logits on {mask_logits.device}")
    return mask_logits


def check_index(i: object, n: int) -> int:
    """Python-style index into ``n`` items (negative counts from the end)."""
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
        raise TypeError(f"index must be an integer, got {type(i).__name__}")
    if not -n <= i < n:
        raise IndexError(f"index {i} out of range for a dataset of {n} samples")
    return int(i) % n
