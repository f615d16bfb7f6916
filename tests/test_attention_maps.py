"""Attention-map helpers: weights, grids, entropy, levels, effective pixel weights, plots."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from einops import rearrange

from esa_tutorial import ESA, LDNet
from esa_tutorial.book.plotting import show_heatmaps, show_pyramid
from esa_tutorial.book.attention_maps import (
    attention_weights,
    block_inputs,
    effective_pixel_weights,
    entropy,
    feature_pixel,
    level_shares,
    max_entropy,
    pixel_weights,
    token_grids,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_weights_rows_sum_to_one_and_match_the_folded_layer() -> None:
    layer = ESA(8, heads=2, dim_head=4).double()
    x = torch.randn(2, 8, 7, 9, dtype=torch.float64)
    attn = attention_weights(layer, x)
    assert attn.shape == (2, 2, 63, 35)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 2, 63, dtype=torch.float64))
    w = pixel_weights(layer, x, (3, 4), image=1)
    torch.testing.assert_close(w, attn[1, :, 3 * 9 + 4])
    with pytest.raises(ValueError, match=r"pixel \(7, 0\) lies outside the 7x9"):
        pixel_weights(layer, x, (7, 0))


def test_effective_pixel_weights_reproduce_the_esa_output() -> None:
    # ESA's output at a pixel == sum over feature pixels of effective weight x projected value.
    layer = ESA(6, heads=2, dim_head=3, impl="reference").double()
    x = torch.randn(1, 6, 7, 10, dtype=torch.float64)
    attn = attention_weights(layer, x)[0]  # (heads, N, 35)
    eff = effective_pixel_weights(attn, 7, 10)  # (heads, N, 7, 10)
    torch.testing.assert_close(eff.sum((-2, -1)), torch.ones(2, 70, dtype=torch.float64))
    v = layer.to_qkv(x).chunk(3, dim=1)[2]  # (1, inner, 7, 10)
    v = rearrange(v, "1 (h d) r c -> h (r c) d", h=2)
    out = torch.einsum("hnp,hpd->nhd", eff.flatten(-2), v)
    expected = layer.to_out(rearrange(out, "n h d -> 1 n (h d)"))
    torch.testing.assert_close(expected, layer(x))


def test_grids_levels_entropy() -> None:
    w = torch.arange(35.0)
    grids = token_grids(w)
    assert [tuple(g.shape) for g in grids] == [(1, 1), (3, 3), (5, 5)]
    assert grids[2][0, 1] == 11  # 1 + 9 + (row 0, col 1)
    # 1 + ... + 9 = 45 and 10 + ... + 34 = 550 out of 595
    # 1 + ... + 9 = 45 and 10 + ... + 34 = 550, out of 595
    torch.testing.assert_close(level_shares(w / w.sum()), torch.tensor([0.0, 45.0, 550.0]) / 595)
    uniform = torch.full((35,), 1 / 35)
    torch.testing.assert_close(entropy(uniform), torch.tensor(math.log(35)))
    assert max_entropy() == pytest.approx(math.log(35))
    one_hot = torch.zeros(35)
    one_hot[4] = 1
    assert entropy(one_hot) == 0
    with pytest.raises(ValueError, match="expected 35 weights"):
        token_grids(torch.ones(34))


def test_block_inputs_are_the_skip_features() -> None:
    model = LDNet(width=4, heads=1, dim_head=4, mlp_dim=8, seed=0)
    x = torch.rand(1, 3, 64, 64)
    inputs = block_inputs(model, list(model.skip_attention), x)
    with torch.no_grad():
        features = model.eval().encoder(x)
    for got, expected in zip(inputs, features[3::-1]):
        torch.testing.assert_close(got, expected)
    assert model.training is False or model.training is True  # mode restored below
    model.train()
    block_inputs(model, [model.skip_attention[0]], x)
    assert model.training
    assert feature_pixel((63, 0), (64, 64), (8, 8)) == (7, 0)


def test_plots_have_the_expected_panels() -> None:
    fig = show_heatmaps(torch.rand(2, 3, 5, 5), row_titles=["a", "b"], col_titles=["x", "y", "z"])
    assert len([ax for ax in fig.axes if ax.get_label() != "<colorbar>"]) == 6 + 0
    w = torch.softmax(torch.randn(2, 35), -1)
    fig = show_pyramid(torch.rand(3, 32, 32), (5, 6), w)
    assert len(fig.axes) == 2 * 4
    assert fig.axes[1].get_title().startswith("1x1: ")
    with pytest.raises(ValueError, match=r"\(rows, cols, h, w\)"):
        show_heatmaps(torch.rand(3, 5, 5))
