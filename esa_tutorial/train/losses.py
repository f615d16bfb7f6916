"""LDNet's training loss: BCE plus Dice on every output of the deep supervision."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

DICE_SMOOTH = 1.0  # LDNet's Dice smoothing: an empty prediction of an empty mask scores 1


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE plus Dice loss of one output: (B, 1, H, W) logits and targets in [0, 1] -> scalar.

    BCE is averaged over all pixels; the Dice loss ``1 - (2|P T| + 1) / (|P| + |T| + 1)``
    with ``P = sigmoid(logits)`` is computed per image and averaged over the batch.
    """
    if logits.shape != target.shape:
        raise ValueError(f"bce_dice_loss expects logits and target of one shape, got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # under autocast: sum the loss in float32
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p, t = torch.sigmoid(logits).flatten(1), target.flatten(1)
    dice = (2 * (p * t).sum(1) + DICE_SMOOTH) / (p.sum(1) + t.sum(1) + DICE_SMOOTH)
    return bce + 1 - dice.mean()


def deep_supervision_loss(outputs: Sequence[torch.Tensor], target: torch.Tensor, resize: str = "area",
                          ) -> torch.Tensor:
    """Sum of :func:`bce_dice_loss` over all outputs, each against the target at its size.

    ``outputs``: logits (B, 1, H/s, W/s), s = 1, 2, 4, ...; ``target`` (B, 1, H, W)
    in {0, 1}. ``resize="area"`` (the package's default) shrinks the target by
    area averaging, so a coarse pixel's target is the fraction of lesion it
    covers. ``resize="bilinear"`` is LDNet's code: each output's target is the
    previous one halved by bilinear interpolation (``align_corners=True``), chained.
    """
    if len(outputs) == 0:
        raise ValueError("deep_supervision_loss needs at least one output")
    if resize not in ("area", "bilinear"):
        raise ValueError(f"resize must be one of ('area', 'bilinear'), got {resize!r}")
    total = torch.zeros((), device=target.device)
    scaled = target
    for logits in outputs:
        h, w = logits.shape[-2:]
        if target.shape[-2] % h or target.shape[-1] % w:
            raise ValueError(f"output of size {h}x{w} does not divide the target size "
                             f"{target.shape[-2]}x{target.shape[-1]}")
        if resize == "area":
            scaled = target if (h, w) == target.shape[-2:] else F.interpolate(target, size=(h, w), mode="area")
        else:
            while scaled.shape[-2:] != (h, w):
                if scaled.shape[-2] < h or scaled.shape[-1] < w:
                    raise ValueError(f"outputs must go from fine to coarse for resize='bilinear', got {h}x{w} "
                                     f"after {scaled.shape[-2]}x{scaled.shape[-1]}")
                scaled = F.interpolate(scaled, scale_factor=0.5, mode="bilinear", align_corners=True)
        total = total + bce_dice_loss(logits, scaled)
    return total
