"""The fine-key task: a 2x2 key among decoys whose colour and frame counts do not reveal the target."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from esa_tutorial.book.context_task import PALETTE, context_sample
from esa_tutorial.book.fine_key_task import (
    DECOY_SIDE, FINE_FRAME, FINE_KEY_SIZE, KEY_CLEARANCE, N_KEYS, FineKeyDiscs, fine_key_sample,
)


def _disc_distance(s, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return np.min([np.hypot(yy - cy, xx - cx) - r for (cy, cx), r in zip(s.centres, s.radii)], axis=0)


def _items(image: np.ndarray, near_disc: np.ndarray) -> tuple[list, list]:
    """Frames (top, left, inner colour index or None) and unframed dots (top, left, colour index) off the discs."""
    size = image.shape[0]
    white = image.min(-1) > 0.9
    frames, inner_taken = [], np.zeros(white.shape, bool)
    for t in range(size - DECOY_SIDE + 1):
        for left in range(size - DECOY_SIDE + 1):
            ring = white[t : t + DECOY_SIDE, left : left + DECOY_SIDE].copy()
            ring[FINE_FRAME:-FINE_FRAME, FINE_FRAME:-FINE_FRAME] = True
            inner = image[t + FINE_FRAME : t + FINE_FRAME + FINE_KEY_SIZE,
                          left + FINE_FRAME : left + FINE_FRAME + FINE_KEY_SIZE]
            if ring.all() and not white[t + FINE_FRAME, left + FINE_FRAME]:
                d = ((inner.reshape(-1, 3).mean(0) - PALETTE) ** 2).sum(1)
                frames.append((t, left, int(d.argmin()) if d.min() < 0.05 else None))
                inner_taken[t : t + DECOY_SIDE, left : left + DECOY_SIDE] = True
    dist = ((image[..., None, :] - PALETTE) ** 2).sum(-1)
    coloured = (dist.min(-1) < 0.05) & (near_disc > 1) & ~inner_taken
    dots = []
    for t, left in zip(*np.nonzero(coloured)):
        if coloured[t, left] and (t == 0 or not coloured[t - 1, left]) and (left == 0 or not coloured[t, left - 1]):
            dots.append((int(t), int(left), int(dist[t, left].argmin())))
    return frames, dots


@pytest.mark.parametrize("index", range(6))
@pytest.mark.parametrize("size", [48, 64])
def test_counts_of_colours_and_frames_do_not_reveal_the_target(index: int, size: int) -> None:
    s = fine_key_sample(0, index, size)
    frames, dots = _items(s.image, _disc_distance(s, size))
    target = s.colours[s.target]
    keys = [f for f in frames if f[2] is not None]
    # Every framed dot has the target's colour; there are N_KEYS of them, the corner one included.
    assert [f[2] for f in keys] == [target] * N_KEYS
    top, left, *_ = s.key_box
    assert (top, left) in {(f[0], f[1]) for f in keys}
    # Each disc colour is on the same number of dots, framed or not; the frame count is fixed by it.
    per_colour = {int(c): sum(d[2] == c for d in dots) + sum(f[2] == c for f in keys) for c in s.colours}
    assert len(set(per_colour.values())) == 1, per_colour
    assert len(frames) == next(iter(per_colour.values()))
    assert not [d for d in dots if d[2] not in s.colours]


@pytest.mark.parametrize("index", range(6))
def test_keys_stay_out_of_the_discs_reach_and_the_discs_are_the_context_tasks(index: int) -> None:
    s = fine_key_sample(3, index, 48)
    near = _disc_distance(s, 48)
    frames, _ = _items(s.image, near)
    for t, left, colour in frames:
        if colour is not None:
            assert near[t : t + DECOY_SIDE, left : left + DECOY_SIDE].min() >= KEY_CLEARANCE
    base = context_sample(3, index, 48, key_size=FINE_KEY_SIZE, frame=FINE_FRAME)
    assert s.target == base.target and np.array_equal(s.mask, base.mask)
    assert np.array_equal(s.centres, base.centres) and np.array_equal(s.colours, base.colours)
    # The label is the disc of the key's colour.
    inner = s.image[s.key_box[0] + FINE_FRAME, s.key_box[1] + FINE_FRAME]
    assert ((PALETTE - inner) ** 2).sum(1).argmin() == s.colours[s.target]


def test_dataset_is_deterministic_and_shaped() -> None:
    a, b = FineKeyDiscs(3, 48, seed=2), FineKeyDiscs(3, 48, seed=2)
    image, mask = a[1]
    assert image.shape == (3, 48, 48) and mask.shape == (1, 48, 48) and image.dtype == torch.float32
    assert torch.equal(image, b[1][0]) and not torch.equal(image, FineKeyDiscs(3, 48, seed=3)[1][0])
    assert repr(a) == "FineKeyDiscs(n=3, size=48, seed=2)"
    with pytest.raises(IndexError, match="out of range"):
        a.sample(3)


def test_context_sample_checks_the_key_size() -> None:
    with pytest.raises(ValueError, match="key_size"):
        context_sample(0, 0, 64, key_size=0)
