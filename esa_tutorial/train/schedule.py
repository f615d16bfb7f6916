"""The poly learning-rate schedule of LDNet's recipe."""

from __future__ import annotations

import math


def poly_lr(base_lr: float, step: int, total_steps: int, power: float = 0.9) -> float:
    """Poly schedule: ``base_lr * (1 - step / total_steps) ** power``; 0 from ``total_steps`` on.

    Raises ``ValueError`` for ``total_steps < 1``, ``step < 0``, or a
    ``base_lr``/``power`` that is not finite (a NaN rate would silently turn
    every weight into NaN).
    """
    if total_steps < 1 or step < 0:
        raise ValueError(f"poly_lr needs total_steps >= 1 and step >= 0, got {total_steps} and {step}")
    if not (math.isfinite(base_lr) and math.isfinite(power)):
        raise ValueError(f"poly_lr needs a finite base_lr and power, got {base_lr!r} and {power!r}")
    return base_lr * max(0.0, 1.0 - step / total_steps) ** power
