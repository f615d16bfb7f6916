"""The far-pixel task: labels follow the marker's bit, ESA on linear features cannot see it, MHSA can."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from esa_tutorial import pyramid_pool
from esa_tutorial.book.far_pixel_task import (
    IN_CHANNELS, FarPixelBits, FarPixelNet, cell_vote, far_pixel_sample, marker_cells, pooling_twin, same_cells,
)


@pytest.mark.parametrize("index", range(5))
def test_label_is_agreement_with_the_marker_bit(index: int) -> None:
    s = far_pixel_sample(4, index, 12)
    image = s.image
    assert image.shape == (IN_CHANNELS, 12, 12) and image.dtype == np.float32
    # One-hot bit: +1 in channel 0, -1 in channel 1; exactly one marker pixel.
    assert np.array_equal(image[0] - image[1], s.bits) and np.array_equal(image[0] + image[1], np.ones((12, 12)))
    assert image[2].sum() == 1 and image[2][s.marker] == 1
    # The hand rule, pixel by pixel.
    for r in range(12):
        for c in range(12):
            assert s.mask[r, c] == (s.bits[r, c] == s.bits[s.marker])
    assert s.mask[s.marker]


def test_samples_depend_on_seed_and_index_only() -> None:
    a, b = far_pixel_sample(3, 7), far_pixel_sample(3, 7)
    assert np.array_equal(a.bits, b.bits) and a.marker == b.marker
    assert not np.array_equal(a.bits, far_pixel_sample(3, 8).bits)
    assert not np.array_equal(a.bits, far_pixel_sample(4, 7).bits)
    ds = FarPixelBits(10, 24, seed=3)
    x, y = ds[7]
    assert x.shape == (3, 24, 24) and y.shape == (1, 24, 24) and x.dtype == y.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(a.image)) and torch.equal(y[0].bool(), torch.from_numpy(a.mask))
    assert repr(ds) == "FarPixelBits(n=10, size=24, seed=3)"
    with pytest.raises(IndexError, match="out of range"):
        ds.sample(10)
    # About half the pixels are foreground, over many maps.
    share = np.mean([far_pixel_sample(0, i).mask.mean() for i in range(50)])
    assert 0.45 < share < 0.55


@pytest.mark.parametrize("attention, encoder", [("esa", "linear"), ("mhsa", "linear"), ("esa", "conv")])
def test_network_shapes_and_equal_start(attention: str, encoder: str) -> None:
    net = FarPixelNet(attention, encoder, seed=1)
    x = torch.stack([FarPixelBits(2, 10)[i][0] for i in range(2)])
    assert net(x).shape == (2, 1, 10, 10)
    reference = FarPixelNet("esa", "linear", seed=1).shared_state_dict()
    shared = net.shared_state_dict()
    assert shared.keys() == reference.keys() and all(torch.equal(shared[k], reference[k]) for k in shared)
    assert not torch.equal(FarPixelNet("esa", seed=2).shared_state_dict()["head.0.weight"], reference["head.0.weight"])
    with pytest.raises(ValueError, match=r"C=3"):
        net(torch.zeros(1, 2, 10, 10))
    with pytest.raises(ValueError, match="encoder must be one of"):
        FarPixelNet("esa", "deep")


def test_the_twin_has_the_same_35_averages_and_the_opposite_label() -> None:
    s = far_pixel_sample(0, 0)
    twin = pooling_twin(s)
    changed = np.argwhere(s.bits != twin.bits)
    assert len(changed) == 2 and same_cells(24, tuple(changed[0]))[tuple(changed[1])]
    assert twin.marker == s.marker and twin.bits[s.marker] == -s.bits[s.marker]
    assert (s.mask != twin.mask).sum() == 24 * 24 - 2  # every label flips but the two swapped pixels'
    pooled = [pyramid_pool(torch.from_numpy(t.image)[None]) for t in (s, twin)]
    assert pooled[0].shape == (1, 3, 35)
    torch.testing.assert_close(pooled[0], pooled[1], rtol=0, atol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_esa_on_linear_features_gives_the_twins_the_same_output(seed: int) -> None:
    # Whatever its weights: away from the two swapped pixels, a pixel's input, query and the 35 keys and
    # values are the same in both maps, so its output is too, though every label there flipped.
    # In float64, so that "the same" (rounding, ~1e-16) and "different" (random weights: ~1e-6) are far apart.
    s = far_pixel_sample(seed, 3)
    twin = pooling_twin(s)
    x = torch.stack([torch.from_numpy(t.image) for t in (s, twin)]).double()
    keep = torch.from_numpy(s.bits == twin.bits)
    for attention, encoder, same in [("esa", "linear", True), ("mhsa", "linear", False), ("esa", "conv", False)]:
        out = FarPixelNet(attention, encoder, seed=seed).double().eval()(x)[:, 0]
        gap = (out[0] - out[1])[keep].abs().max().item()
        assert (gap < 1e-12) if same else (gap > 1e-9), (attention, encoder, gap)


def test_cell_vote_matches_the_binomial_and_a_simulation() -> None:
    assert cell_vote(1) == 1.0 and cell_vote(2) == 0.75  # alone; with one other bit a tie half the time
    # n odd: the others' sum is even; b_m = +1 wins unless they sum to -2 or less.
    assert cell_vote(25) == pytest.approx(0.5 + math.comb(24, 12) / 2**25)
    rng = np.random.default_rng(0)
    bits = rng.choice([-1, 1], size=(200_000, 36))
    total = bits.sum(1)
    right = np.where(total == 0, 0.5, np.sign(total) == bits[:, 0])
    assert right.mean() == pytest.approx(cell_vote(36), abs=0.005)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        cell_vote(0)


def test_marker_cells_are_the_cells_that_hold_the_marker() -> None:
    cells = marker_cells(24, (4, 0))  # row 4 is in two bins of the 5x5 grid: (0, 5) and (4, 10)
    assert [s for s, *_ in cells] == [1, 3, 5, 5]
    for _, rows, cols in cells:
        assert rows.start <= 4 < rows.stop and cols.start <= 0 < cols.stop


def test_a_patch_marker_is_a_square_of_the_markers_bit() -> None:
    one, square = far_pixel_sample(2, 5), far_pixel_sample(2, 5, patch=6)
    r, c = square.marker
    assert square.image[2].sum() == 36 and (square.image[2, r : r + 6, c : c + 6] == 1).all()
    assert (square.bits[r : r + 6, c : c + 6] == square.bits[r, c]).all()
    assert np.array_equal(square.mask, square.bits == square.bits[r, c])
    # Outside the square the draws are the one-pixel task's: the same random bits.
    outside = square.image[2] == 0
    assert np.array_equal(square.bits[outside], far_pixel_sample(2, 5, patch=1).bits[outside])
    assert np.array_equal(one.bits, far_pixel_sample(2, 5, patch=1).bits) and one.patch == 1
    assert repr(FarPixelBits(4, patch=6)) == "FarPixelBits(n=4, size=24, seed=0, patch=6)"
    with pytest.raises(ValueError, match="patch must be an integer from 1 to size=24, got 25"):
        far_pixel_sample(0, 0, patch=25)
