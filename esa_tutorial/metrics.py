"""Segmentation metrics of LDNet's evaluation, computed per image.

Every metric is a ratio of pixel counts of one image: true positives
``tp`` (polyp predicted polyp), false positives ``fp``, false negatives ``fn``
and true negatives ``tn``.

=================  =====================================
recall             tp / (tp + fn)
specificity        tn / (tn + fp)
precision          tp / (tp + fp)
dice (= F1)        2 tp / (2 tp + fp + fn)
f2                 5 tp / (5 tp + 4 fn + fp)
accuracy           (tp + tn) / (tp + fp + fn + tn)
iou_polyp          tp / (tp + fp + fn)
iou_background     tn / (tn + fp + fn)
miou               (iou_polyp + iou_background) / 2
=================  =====================================

**Empty masks.** A ratio whose denominator is zero (e.g. dice when both
prediction and target are empty) is undefined. We score it **1 if the
prediction equals the target on that image, else 0**. So an image with no
polyp and no predicted polyp gets dice = iou_polyp = recall = precision = 1,
and a wrong prediction never earns a perfect score from an undefined ratio
(no polyp but a predicted one: recall = 0, as are precision and dice).
Code that adds a small epsilon to every denominator instead scores a
correctly empty prediction as dice 0.

Scores are computed per image and then averaged over the batch (the way
LDNet and most polyp papers report them), not from the summed counts.
"""

from __future__ import annotations

import torch

METRICS = (
    "recall", "specificity", "precision", "dice", "f2", "accuracy", "iou_polyp", "iou_background", "miou",
)


def _check_masks(pred: torch.Tensor, target: torch.Tensor, who: str) -> None:
    for name, t in (("prediction", pred), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{who} expects the {name} as a torch.Tensor, got {type(t).__name__}")
        if t.dim() not in (3, 4) or (t.dim() == 4 and t.shape[1] != 1) or t.numel() == 0:
            raise ValueError(f"{who} expects the {name} as (B, 1, H, W) or (B, H, W), got {tuple(t.shape)}")
    if pred.shape != target.shape:
        raise ValueError(f"{who}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if ((target != 0) & (target != 1)).any():
        raise ValueError(f"{who} expects a binary target (values 0 and 1 only)")


def confusion(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Pixel counts per image of binary masks (B, 1, H, W) or (B, H, W).

    Returns ``{"tp", "fp", "fn", "tn"}``, each int64 (B,) on the masks' device
    (integer counts work on every device; MPS has no float64).
    """
    _check_masks(pred, target, "confusion")
    if ((pred != 0) & (pred != 1)).any():
        raise ValueError("confusion expects a binary prediction; threshold probabilities first")
    p, t = pred.flatten(1).bool(), target.flatten(1).bool()
    count = lambda m: m.sum(dim=1, dtype=torch.int64)  # noqa: E731
    return {"tp": count(p & t), "fp": count(p & ~t), "fn": count(~p & t), "tn": count(~p & ~t)}


def _ratio(num: torch.Tensor, den: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """num / den, with 0/0 scored 1 where the prediction is exact and 0 elsewhere."""
    return torch.where(den > 0, num / den.clamp(min=1), exact.to(num.dtype))


def scores_from_confusion(c: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every metric of the module docstring, per image (float64 (B,), on the CPU), from :func:`confusion` counts."""
    tp, fp, fn, tn = (c[k].cpu().double() for k in ("tp", "fp", "fn", "tn"))  # exact for counts below 2**53
    exact = (fp == 0) & (fn == 0)
    out = {
        "recall": _ratio(tp, tp + fn, exact),
        "specificity": _ratio(tn, tn + fp, exact),
        "precision": _ratio(tp, tp + fp, exact),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, exact),
        "f2": _ratio(5 * tp, 5 * tp + 4 * fn + fp, exact),
        "accuracy": (tp + tn) / (tp + fp + fn + tn),
        "iou_polyp": _ratio(tp, tp + fp + fn, exact),
        "iou_background": _ratio(tn, tn + fp + fn, exact),
    }
    out["miou"] = (out["iou_polyp"] + out["iou_background"]) / 2
    return out


def _per_image_metric(name: str, what: str):
    """A function (pred, target) -> float64 (B,) that returns one entry of :func:`scores_from_confusion`."""

    def metric(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return scores_from_confusion(confusion(pred, target))[name]

    metric.__name__ = metric.__qualname__ = name
    metric.__doc__ = f"{what} per image of binary masks (B, 1, H, W) or (B, H, W): float64 (B,)."
    return metric


recall = _per_image_metric("recall", "Recall (sensitivity)")
specificity = _per_image_metric("specificity", "Specificity")
precision = _per_image_metric("precision", "Precision")
dice = _per_image_metric("dice", "Dice coefficient (= F1 score)")
f2 = _per_image_metric("f2", "F2 score (F-beta with beta = 2: recall counts more than precision)")
accuracy = _per_image_metric("accuracy", "Pixel accuracy")


def iou(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """IoU of polyp, of background and their mean per image: ``{"polyp", "background", "mean"}``, float64 (B,)."""
    s = scores_from_confusion(confusion(pred, target))
    return {"polyp": s["iou_polyp"], "background": s["iou_background"], "mean": s["miou"]}


def segmentation_scores(probs: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> dict[str, float]:
    """Threshold probabilities and score them, per image, averaged over the batch.

    Args:
        probs: (B, 1, H, W) or (B, H, W) polyp probabilities in [0, 1]
            (apply ``sigmoid`` to logits first).
        target: binary masks of the same shape.
        threshold: a pixel is predicted polyp when ``probs >= threshold``.

    Returns:
        ``{name: float}`` for the names in ``METRICS``: recall, specificity,
        precision, dice, f2, accuracy, iou_polyp, iou_background, miou.

    Raises:
        ValueError: for NaN or inf probabilities, values outside [0, 1], a
            non-binary target, or shapes that differ.
    """
    _check_masks(probs, target, "segmentation_scores")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold!r}")
    probs = probs.detach()
    probs = probs if probs.dtype == torch.float64 else probs.float()  # float64 where given; MPS has none
    finite = torch.isfinite(probs)
    if not bool(finite.all()):
        # NaN compares False with everything: unchecked it would be scored as background.
        raise ValueError(
            f"segmentation_scores got {int((~finite).sum())} non-finite probabilities (NaN or inf) of "
            f"{probs.numel()}: the model's outputs are not finite (did the training diverge?)"
        )
    if probs.min() < 0 or probs.max() > 1:
        raise ValueError(
            f"segmentation_scores expects probabilities in [0, 1], got values in "
            f"[{float(probs.min()):.3g}, {float(probs.max()):.3g}]; apply torch.sigmoid to logits first"
        )
    per_image = scores_from_confusion(confusion((probs >= threshold).to(target.dtype), target.detach()))
    return {name: float(per_image[name].mean()) for name in METRICS}
