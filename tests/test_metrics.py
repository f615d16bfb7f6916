"""Segmentation metrics against counts worked out by hand, empty-mask conventions, errors."""

from __future__ import annotations

import pytest
import torch

from esa_tutorial import metrics
from esa_tutorial.metrics import METRICS, confusion, segmentation_scores


def masks(*rows_pairs):
    """(pred rows, target rows) pairs -> two (B, 1, H, W) float tensors."""
    pred = torch.tensor([p for p, _ in rows_pairs], dtype=torch.float32).unsqueeze(1)
    target = torch.tensor([t for _, t in rows_pairs], dtype=torch.float32).unsqueeze(1)
    return pred, target


# tp=1, fp=1, fn=2, tn=2 (counted by eye from the grids)
MIXED = ([[1, 0, 0], [0, 0, 1]], [[1, 1, 1], [0, 0, 0]])
MIXED_SCORES = {
    "recall": 1 / 3, "specificity": 2 / 3, "precision": 1 / 2, "dice": 2 / 5, "f2": 5 / 14,
    "accuracy": 3 / 6, "iou_polyp": 1 / 4, "iou_background": 2 / 5, "miou": (1 / 4 + 2 / 5) / 2,
}
BOTH_EMPTY = ([[0, 0], [0, 0]], [[0, 0], [0, 0]])
FALSE_ALARM = ([[0, 1], [0, 0]], [[0, 0], [0, 0]])  # no polyp, one predicted pixel
MISSED = ([[0, 0], [0, 0]], [[0, 1], [0, 0]])  # one polyp pixel, nothing predicted
ALL_POLYP = ([[1, 1], [1, 1]], [[1, 1], [1, 1]])
ALL_POLYP_MISSED_ONE = ([[1, 1], [1, 0]], [[1, 1], [1, 1]])


def test_confusion_counts_by_hand() -> None:
    c = confusion(*masks(MIXED))
    assert {k: v.tolist() for k, v in c.items()} == {"tp": [1.0], "fp": [1.0], "fn": [2.0], "tn": [2.0]}


def test_mixed_case_every_metric_by_hand() -> None:
    scores = segmentation_scores(*masks(MIXED))
    assert list(scores) == list(METRICS)
    assert all(isinstance(v, float) for v in scores.values())
    assert scores == pytest.approx(MIXED_SCORES, abs=1e-12)


def test_f2_matches_f_beta_formula() -> None:
    p, r = MIXED_SCORES["precision"], MIXED_SCORES["recall"]
    assert MIXED_SCORES["f2"] == pytest.approx(5 * p * r / (4 * p + r))
    assert float(metrics.f2(*masks(MIXED))) == pytest.approx(5 * p * r / (4 * p + r))


@pytest.mark.parametrize(
    "case, expected",
    [
        (BOTH_EMPTY, dict.fromkeys(METRICS, 1.0)),
        (FALSE_ALARM, {"recall": 0.0, "specificity": 3 / 4, "precision": 0.0, "dice": 0.0, "f2": 0.0,
                       "accuracy": 3 / 4, "iou_polyp": 0.0, "iou_background": 3 / 4, "miou": 3 / 8}),
        (MISSED, {"recall": 0.0, "specificity": 1.0, "precision": 0.0, "dice": 0.0, "f2": 0.0,
                  "accuracy": 3 / 4, "iou_polyp": 0.0, "iou_background": 3 / 4, "miou": 3 / 8}),
        (ALL_POLYP, dict.fromkeys(METRICS, 1.0)),
        (ALL_POLYP_MISSED_ONE, {"recall": 3 / 4, "specificity": 0.0, "precision": 1.0, "dice": 6 / 7,
                                "f2": 15 / 19, "accuracy": 3 / 4, "iou_polyp": 3 / 4,
                                "iou_background": 0.0, "miou": 3 / 8}),
    ],
    ids=["both-empty", "false-alarm", "missed", "all-polyp", "all-polyp-missed-one"],
)
def test_empty_and_full_mask_conventions(case, expected) -> None:
    """0/0 scores 1 when the prediction is exact, 0 otherwise."""
    assert segmentation_scores(*masks(case)) == pytest.approx(expected, abs=1e-12)


def test_scores_are_per_image_then_averaged() -> None:
    pred, target = masks(FALSE_ALARM, BOTH_EMPTY)
    # Per image: dice 0 (false alarm) and 1 (both empty) -> mean 0.5; pooled counts would give 0.
    per_image = metrics.dice(pred, target)
    assert per_image.tolist() == [0.0, 1.0]
    assert segmentation_scores(pred, target)["dice"] == pytest.approx(0.5)


def test_agrees_with_set_arithmetic_on_random_masks() -> None:
    g = torch.Generator().manual_seed(1)
    pred = (torch.rand(6, 1, 7, 9, generator=g) > 0.6).float()
    target = (torch.rand(6, 1, 7, 9, generator=g) > 0.5).float()
    d, j = metrics.dice(pred, target), metrics.iou(pred, target)
    for b in range(6):
        a = {tuple(i) for i in pred[b, 0].nonzero().tolist()}
        t = {tuple(i) for i in target[b, 0].nonzero().tolist()}
        every = {(r, c) for r in range(7) for c in range(9)}
        assert float(d[b]) == pytest.approx(2 * len(a & t) / (len(a) + len(t)))
        assert float(j["polyp"][b]) == pytest.approx(len(a & t) / len(a | t))
        bg_a, bg_t = every - a, every - t
        assert float(j["background"][b]) == pytest.approx(len(bg_a & bg_t) / len(bg_a | bg_t))
        assert float(j["mean"][b]) == pytest.approx((float(j["polyp"][b]) + float(j["background"][b])) / 2)


def test_single_metric_functions_match_the_dict() -> None:
    pred, target = masks(MIXED, ([[0, 1, 0], [0, 0, 0]], [[0, 1, 1], [0, 0, 0]]))
    every = segmentation_scores(pred, target)
    for name in ("recall", "specificity", "precision", "dice", "f2", "accuracy"):
        assert float(getattr(metrics, name)(pred, target).mean()) == pytest.approx(every[name])


def test_threshold_is_inclusive_and_configurable() -> None:
    target = torch.tensor([[[[1.0, 1.0, 0.0]]]])
    probs = torch.tensor([[[[0.5, 0.49, 0.3]]]])
    assert segmentation_scores(probs, target)["recall"] == pytest.approx(1 / 2)
    assert segmentation_scores(probs, target, threshold=0.3)["precision"] == pytest.approx(2 / 3)


def test_three_and_four_dim_inputs_agree() -> None:
    pred, target = masks(MIXED)
    assert segmentation_scores(pred[:, 0], target[:, 0]) == segmentation_scores(pred, target)
    assert segmentation_scores(pred, target.bool()) == segmentation_scores(pred, target)


@pytest.mark.parametrize(
    "probs, target, err, match",
    [
        (torch.rand(2, 1, 4, 4), torch.zeros(2, 1, 4, 5), ValueError, "differ in shape"),
        (torch.randn(2, 1, 4, 4) * 5, torch.zeros(2, 1, 4, 4), ValueError, "sigmoid"),
        (torch.rand(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.5), ValueError, "binary target"),
        (torch.rand(2, 2, 4, 4), torch.zeros(2, 2, 4, 4), ValueError, r"\(B, 1, H, W\)"),
        (torch.rand(4, 4), torch.zeros(4, 4), ValueError, r"\(B, 1, H, W\)"),
        ([[0.5]], torch.zeros(1, 1, 1), TypeError, "torch.Tensor"),
    ],
    ids=["shape-mismatch", "logits", "soft-target", "two-channels", "no-batch", "list"],
)
def test_bad_inputs_raise(probs, target, err, match) -> None:
    with pytest.raises(err, match=match):
        segmentation_scores(probs, target)


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.2])
def test_bad_threshold_raises(threshold) -> None:
    with pytest.raises(ValueError, match="threshold must lie in"):
        segmentation_scores(torch.rand(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), threshold=threshold)


def test_metric_functions_reject_soft_predictions() -> None:
    with pytest.raises(ValueError, match="threshold probabilities first"):
        metrics.dice(torch.full((1, 1, 2, 2), 0.7), torch.ones(1, 1, 2, 2))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_probabilities_are_rejected(bad: float) -> None:
    """B1: NaN compared False with the range check and was scored as background (miou 0.47)."""
    target = torch.zeros(1, 1, 8, 8)
    target[..., :2, :2] = 1
    probs = torch.full((1, 1, 8, 8), 0.2)
    probs[0, 0, 3, 3] = bad
    with pytest.raises(ValueError, match=r"got 1 non-finite probabilities \(NaN or inf\) of 64"):
        segmentation_scores(probs, target)
    with pytest.raises(ValueError, match="non-finite probabilities"):
        segmentation_scores(torch.full((1, 1, 8, 8), float("nan")), target)
