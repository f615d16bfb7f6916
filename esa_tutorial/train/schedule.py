"""The poly learning-rate schedule of LDNet's recipe, as torch's own scheduler."""

from __future__ import annotations

import torch

from ..validation import check_finite, check_positive_int


def poly_schedule(optimizer: torch.optim.Optimizer, total: int, power: float = 0.9,
                  ) -> torch.optim.lr_scheduler.PolynomialLR:
    """``lr = base_lr * (1 - k / total) ** power`` after ``k`` calls of ``step()``; 0 from ``total`` on.

    torch's ``PolynomialLR``; stepped per optimizer step (the package's
    default) or per epoch (LDNet's code, ``total`` = epochs). Raises
    ``ValueError`` naming the argument for a ``total`` that is not a positive
    integer or a ``power`` that is not a finite number >= 0.
    """
    check_positive_int("total", total)
    check_finite("power", power, low=0.0)
    return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total, power=power)


def lr_values(base_lr: float, total: int, power: float = 0.9) -> list[float]:
    """The ``total`` learning rates that :func:`poly_schedule` gives, one per step, from ``base_lr``.

    Runs the scheduler itself on a throw-away optimizer, so a plot of these
    values shows what training uses.
    """
    check_finite("base_lr", base_lr, 0.0)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    scheduler = poly_schedule(optimizer, total, power)
    values = []
    for _ in range(total):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # nothing to update (no gradient); keeps the scheduler's step order right
        scheduler.step()
    return values
