"""PPM: shapes, values against explicit bin averages, bin edges, errors."""

import pytest
import torch

from esa_tutorial import PPM, adaptive_bins, num_tokens, pooling_matrix, pyramid_pool
from oracle import naive_pyramid_pool


@pytest.mark.parametrize("hw", [(11, 11), (7, 13), (5, 5), (2, 2), (1, 1), (1, 9), (40, 3)])
def test_ppm_matches_explicit_bin_averages(hw):
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    out = PPM()(x)
    assert out.shape == (2, 3, 35)
    torch.testing.assert_close(out, naive_pyramid_pool(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("hw", [(11, 11), (7, 13), (2, 2), (1, 1), (1, 9), (40, 3), (112, 112)])
@pytest.mark.parametrize("sizes", [(1, 3, 5), (2, 6), (4,)])
def test_pyramid_pool_matches_explicit_bin_averages(hw, sizes):
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    torch.testing.assert_close(pyramid_pool(x, sizes), naive_pyramid_pool(x, sizes), rtol=1e-12, atol=1e-12)


def test_pooling_matrix_by_hand():
    # Length 7, grids 1 and 3: the global mean, then bins [0, 3), [2, 5), [4, 7) (they overlap).
    want = torch.zeros(7, 4, dtype=torch.float64)
    want[:, 0] = 1 / 7
    want[0:3, 1], want[2:5, 2], want[4:7, 3] = 1 / 3, 1 / 3, 1 / 3
    torch.testing.assert_close(pooling_matrix(7, (1, 3), dtype=torch.float64), want, rtol=0, atol=0)


def test_pyramid_pool_gradient():
    x = torch.randn(1, 2, 7, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(pyramid_pool, (x,), fast_mode=True)


def test_first_token_is_the_global_mean_and_grid_is_row_major():
    x = torch.arange(36, dtype=torch.float64).reshape(1, 1, 6, 6)
    out = PPM((1, 3))(x)[0, 0]
    assert out[0] == x.mean()
    # 3x3 grid on 6x6: 2x2 blocks; the block at row 0, col 1 is pixels (0..1, 2..3).
    assert out[1 + 1] == x[0, 0, 0:2, 2:4].mean()
    assert out[1 + 3] == x[0, 0, 2:4, 0:2].mean()


def test_adaptive_bins_hand_cases():
    assert adaptive_bins(6, 3) == [(0, 2), (2, 4), (4, 6)]
    assert adaptive_bins(7, 3) == [(0, 3), (2, 5), (4, 7)]  # overlapping when 3 does not divide 7
    assert adaptive_bins(2, 5) == [(0, 1), (0, 1), (0, 2), (1, 2), (1, 2)]
    assert adaptive_bins(1, 5) == [(0, 1)] * 5


def test_adaptive_bins_agree_with_torch():
    for length in range(1, 20):
        for bins in (1, 3, 5, 6):
            x = torch.randn(1, 1, length, dtype=torch.float64)
            expected = torch.stack([x[..., a:b].mean(-1) for a, b in adaptive_bins(length, bins)], -1)
            torch.testing.assert_close(torch.nn.functional.adaptive_avg_pool1d(x, bins), expected)


def test_num_tokens():
    assert num_tokens((1, 3, 5)) == 35
    assert PPM((1, 2, 3, 6)).num_tokens == 50


@pytest.mark.parametrize("sizes", [(), [], (0, 3), (1, -2), (1.5,), 3, "135", (True,)])
def test_bad_pooling_sizes(sizes):
    with pytest.raises(ValueError, match="pooling_sizes must be a non-empty sequence of positive integers"):
        PPM(sizes)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"PPM expects \(B, C, H, W\), got \(3, 8, 8\)"):
        PPM()(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match=r"non-empty .* got \(1, 3, 0, 5\)"):
        PPM()(torch.randn(1, 3, 0, 5))
    with pytest.raises(TypeError, match="floating-point"):
        PPM()(torch.ones(1, 3, 4, 4, dtype=torch.int64))
