"""The key-matching task: deterministic, labelled as specified, far from the key; ContextNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from esa_tutorial.book.context_task import (
    FRAME,
    KEY_SIZE,
    MIN_DISTANCE,
    N_DISCS,
    PALETTE,
    RECEPTIVE_FIELD,
    ContextDiscs,
    ContextNet,
    context_sample,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_samples_are_deterministic_and_differ_by_index() -> None:
    a, b = ContextDiscs(4, seed=3), ContextDiscs(4, seed=3)
    for i in range(4):
        for t, u in zip(a[i], b[i]):
            assert torch.equal(t, u)
    assert not torch.equal(a[0][0], a[1][0])
    assert not torch.equal(a[0][0], ContextDiscs(4, seed=4)[0][0])
    image, mask = a[0]
    assert image.shape == (3, 64, 64) and mask.shape == (1, 64, 64)
    assert image.dtype == mask.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1 and set(mask.unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("index", range(12))
def test_label_is_the_disc_with_the_key_colour(index: int) -> None:
    s = context_sample(0, index)
    top, left, bottom, right = s.key_box
    inner = s.image[top + FRAME : top + FRAME + KEY_SIZE, left + FRAME : left + FRAME + KEY_SIZE]
    key_colour = inner.reshape(-1, 3).mean(0)
    # The frame is white, the discs have distinct palette colours, and the key's is the target's.
    assert s.image[top, left:right].mean() > 0.9
    assert len(set(s.colours.tolist())) == N_DISCS
    nearest = np.argmin(((PALETTE - key_colour) ** 2).sum(1))
    assert nearest == s.colours[s.target]
    yy, xx = np.mgrid[0:64, 0:64]
    for i, ((cy, cx), r) in enumerate(zip(s.centres, s.radii)):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        colour = s.image[disc].mean(0)
        assert np.argmin(((PALETTE - colour) ** 2).sum(1)) == s.colours[i]
        assert (s.mask[disc].all() if i == s.target else not s.mask[disc].any())
    assert s.mask.sum() == sum(
        ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).sum()
        for i, ((cy, cx), r) in enumerate(zip(s.centres, s.radii)) if i == s.target
    )
    # Every lesion pixel is farther from the key than the receptive field of the model without attention.
    rows, cols = np.nonzero(s.mask)
    gap = np.maximum(np.maximum(top - rows, rows - (bottom - 1)), np.maximum(left - cols, cols - (right - 1)))
    assert gap.min() >= MIN_DISTANCE > RECEPTIVE_FIELD // 2


def test_receptive_field_of_contextnet_without_attention() -> None:
    # The gradient of one output pixel reaches only a RECEPTIVE_FIELD-wide window of the input
    # (plus bilinear upsampling's one pixel); ESA's reaches the whole image.
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    for attention, whole in (("none", False), ("esa", True)):
        model = ContextNet(attention, width=8, heads=1, dim_head=8, mlp_dim=16, seed=0).eval()
        model(x)[0, 0, 32, 32].backward()
        rows, cols = np.nonzero(x.grad.abs().sum(1)[0].numpy())
        span = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
        assert (span == 64) if whole else (span <= RECEPTIVE_FIELD + 4), (attention, span)
        x.grad = None


def test_contextnet_shapes_params_and_equal_starts() -> None:
    models = {a: ContextNet(a, seed=1) for a in ("none", "esa", "mhsa")}
    none, esa, mhsa = ({k: v.clone() for k, v in models[a].state_dict().items()} for a in ("none", "esa", "mhsa"))
    for m in models.values():
        assert m(torch.rand(2, 3, 64, 64)).shape == (2, 1, 64, 64)
    for k, v in none.items():  # stem, head and the feed-forward part start equal in all three
        assert torch.equal(esa[k], v) and torch.equal(mhsa[k], v), k
    extra = sum(v.numel() for k, v in esa.items() if k not in none)
    assert extra == sum(p.numel() for p in models["esa"].block.ESAlayer.parameters())
    with pytest.raises(ValueError, match="attention must be one of"):
        ContextNet("full")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="even height and width"):
        models["esa"](torch.rand(1, 3, 63, 64))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="size >= 48"):
        ContextDiscs(2, size=32)
    with pytest.raises(IndexError, match="out of range"):
        ContextDiscs(2).sample(5)
