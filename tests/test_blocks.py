"""ESA block, mask average pooling and LCA against hand computations; the single-key LCA claim."""

from __future__ import annotations

import math

import pytest
import torch

from esa_tutorial.nn.attention import LCA
from esa_tutorial.nn.blocks import ESABlock, LCABlock
from esa_tutorial.nn.ppm import mask_average_pool
from oracle import naive_attention, naive_esa

DIM, HEADS, DIM_HEAD, MLP = 6, 2, 4, 10


def randomise_norms(block: torch.nn.Module) -> None:
    """LayerNorm starts as the identity affine map; random values make a mis-wiring visible."""
    with torch.no_grad():
        block.ff.norm.weight.uniform_(0.5, 1.5)
        block.ff.norm.bias.uniform_(-0.5, 0.5)


def hand_layer_norm(t: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mean = t.mean(dim=-1, keepdim=True)
    var = ((t - mean) ** 2).mean(dim=-1, keepdim=True)  # biased, as LayerNorm
    return (t - mean) / torch.sqrt(var + eps) * weight + bias


def hand_gelu(t: torch.Tensor) -> torch.Tensor:
    return 0.5 * t * (1 + torch.erf(t / math.sqrt(2)))


def hand_refine(block: torch.nn.Module, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    """out = attended + tokens; out = FFN(LayerNorm(out)) + out; back to (B, C, H, W)."""
    b, c, h, w = x.shape
    sd = {k: v.double() for k, v in block.state_dict().items()}
    tokens = x.double().reshape(b, c, h * w).transpose(1, 2)  # (B, N, C)
    out = attended + tokens
    normed = hand_layer_norm(out, sd["ff.norm.weight"], sd["ff.norm.bias"])
    hidden = hand_gelu(normed @ sd["ff.fn.net.0.weight"].T + sd["ff.fn.net.0.bias"])
    out = hidden @ sd["ff.fn.net.3.weight"].T + sd["ff.fn.net.3.bias"] + out
    return out.transpose(1, 2).reshape(b, c, h, w)


def hand_mask_pool(t: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Pixel by pixel: sum(t * m) / (sum(m) + 5e-4), m = 1 / (1 + exp(-logits)). (B, C, H, W) -> (B, C, 1)."""
    t, logits = t.detach().double(), logits.detach().double()
    b, c, h, w = t.shape
    out = torch.zeros(b, c, 1, dtype=torch.float64)
    for i in range(b):
        m = [[1 / (1 + math.exp(-float(logits[i, 0, y, x]))) for x in range(w)] for y in range(h)]
        area = sum(map(sum, m)) + 5e-4
        for ch in range(c):
            out[i, ch, 0] = sum(float(t[i, ch, y, x]) * m[y][x] for y in range(h) for x in range(w)) / area
    return out


def hand_lca(layer: LCA, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    sd = layer.state_dict()
    w_out = sd.get("to_out.0.weight")
    b_out = sd.get("to_out.0.bias")
    return naive_attention(x, sd["to_qkv.weight"], w_out, b_out, layer.heads, lambda t: hand_mask_pool(t, logits))


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("h, w", [(5, 7), (1, 1), (12, 3)])
def test_block_shapes(h: int, w: int) -> None:
    x = torch.randn(2, DIM, h, w)
    assert ESABlock(DIM, HEADS, DIM_HEAD, MLP)(x).shape == (2, DIM, h, w)
    assert LCABlock(DIM, HEADS, DIM_HEAD, MLP)(x, torch.randn(2, 1, h, w)).shape == (2, DIM, h, w)
    assert LCA(DIM, HEADS, DIM_HEAD)(x, torch.randn(2, 1, h, w)).shape == (2, h * w, DIM)
    assert mask_average_pool(x, torch.randn(2, 1, h, w)).shape == (2, DIM, 1)


# --------------------------------------------------------------------------- structure


def test_esa_block_matches_hand_computation() -> None:
    block = ESABlock(DIM, HEADS, DIM_HEAD, MLP).double().eval()
    randomise_norms(block)
    x = torch.randn(2, DIM, 5, 6, dtype=torch.float64)
    expected = hand_refine(block, x, naive_esa(block.ESAlayer, x))
    torch.testing.assert_close(block(x), expected, rtol=1e-10, atol=1e-10)


def test_lca_block_matches_hand_computation() -> None:
    block = LCABlock(DIM, HEADS, DIM_HEAD, MLP).double().eval()
    randomise_norms(block)
    x = torch.randn(2, DIM, 4, 3, dtype=torch.float64)
    logits = torch.randn(2, 1, 4, 3, dtype=torch.float64) * 3
    expected = hand_refine(block, x, hand_lca(block.LCAlayer, x, logits))
    torch.testing.assert_close(block(x, logits), expected, rtol=1e-10, atol=1e-10)


def test_block_is_identity_when_both_branches_output_zero() -> None:
    """The residual paths: with the attention's and the FFN's last layers zeroed, x passes through."""
    block = ESABlock(DIM, HEADS, DIM_HEAD, MLP).eval()
    with torch.no_grad():
        for layer in (block.ESAlayer.to_out[0], block.ff.fn.net[3]):
            layer.weight.zero_()
            layer.bias.zero_()
    x = torch.randn(2, DIM, 4, 5)
    torch.testing.assert_close(block(x), x, rtol=0, atol=0)


# --------------------------------------------------------------------------- mask pooling


def test_mask_average_pool_matches_hand_computation() -> None:
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    logits = torch.randn(2, 1, 4, 5, dtype=torch.float64) * 4
    torch.testing.assert_close(mask_average_pool(x, logits), hand_mask_pool(x, logits), rtol=1e-12, atol=1e-12)


def test_mask_average_pool_confident_mask_is_region_mean() -> None:
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    region = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    region[..., 1:3, :] = True  # 8 pixels
    logits = torch.where(region, 50.0, -50.0).double()
    expected = x[..., 1:3, :].sum(dim=(-2, -1), keepdim=False).unsqueeze(-1) / (8 + 5e-4)
    torch.testing.assert_close(mask_average_pool(x, logits), expected, rtol=1e-12, atol=1e-12)


def test_mask_average_pool_all_background_is_zero_and_finite() -> None:
    """sigmoid(-1000) is exactly 0 in float64: the epsilon keeps 0 / 0 away, giving a zero token."""
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    logits = torch.full((2, 1, 4, 4), -1000.0, dtype=torch.float64, requires_grad=True)
    pooled = mask_average_pool(x, logits)
    assert torch.equal(pooled, torch.zeros(2, 3, 1, dtype=torch.float64))
    pooled.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(logits.grad).all()


# --------------------------------------------------------------------------- errors


def test_shape_errors() -> None:
    x = torch.randn(2, DIM, 4, 4)
    with pytest.raises(ValueError, match=r"mask logits of shape \(2, 1, 4, 4\), got \(2, 1, 4, 5\)"):
        mask_average_pool(x, torch.randn(2, 1, 4, 5))
    with pytest.raises(ValueError, match=r"mask logits of shape \(2, 1, 4, 4\), got \(2, 4, 4\)"):
        LCABlock(DIM, HEADS, DIM_HEAD, MLP)(x, torch.randn(2, 4, 4))
    with pytest.raises(ValueError, match=f"C={DIM}"):
        ESABlock(DIM, HEADS, DIM_HEAD, MLP)(torch.randn(2, DIM + 1, 4, 4))
    with pytest.raises(ValueError, match=r"ESA expects \(B, C, H, W\) with C=6, got \(6, 4, 4\)"):
        ESABlock(DIM, HEADS, DIM_HEAD, MLP)(torch.randn(DIM, 4, 4))
    with pytest.raises(ValueError, match="mlp_dim must be a positive integer"):
        ESABlock(DIM, mlp_dim=0)
    with pytest.raises(ValueError, match="dropout must be a probability"):
        LCABlock(DIM, dropout=1.5)


# --------------------------------------------------------------------------- gradients


def test_gradcheck_blocks_and_pooling() -> None:
    esa_block = ESABlock(4, heads=2, dim_head=3, mlp_dim=5).double().eval()
    lca_block = LCABlock(4, heads=2, dim_head=3, mlp_dim=5).double().eval()
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(1, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    # fast_mode checks random projections of the Jacobian: the same test, seconds instead of tens of seconds
    assert torch.autograd.gradcheck(esa_block, (x,), fast_mode=True)
    assert torch.autograd.gradcheck(lca_block, (x, logits), fast_mode=True)
    assert torch.autograd.gradcheck(mask_average_pool, (x, logits))


# --------------------------------------------------------------------------- the single-key claim


def lca_setup():
    layer = LCA(DIM, HEADS, DIM_HEAD).double().eval()
    x = torch.randn(2, DIM, 5, 4, dtype=torch.float64)
    logits = torch.randn(2, 1, 5, 4, dtype=torch.float64)
    return layer, x, logits


def test_lca_attention_weights_are_exactly_one() -> None:
    layer, x, logits = lca_setup()
    attn, v = layer.attention(x, logits)
    assert attn.shape == (2, HEADS, 20, 1) and v.shape == (2, HEADS, 1, DIM_HEAD)
    assert torch.equal(attn, torch.ones_like(attn))


def test_lca_output_ignores_the_query_weights() -> None:
    """A softmax over one key is 1 whatever the score, so new query rows leave the output bit for bit."""
    layer, x, logits = lca_setup()
    before = layer(x, logits)
    with torch.no_grad():
        layer.to_qkv.weight[: layer.inner_dim].normal_(std=100.0)  # rows of W_q
    assert torch.equal(layer(x, logits), before)
    with torch.no_grad():
        layer.to_qkv.weight[2 * layer.inner_dim :].normal_()  # rows of W_v: these do matter
    assert not torch.allclose(layer(x, logits), before)


def test_lca_query_and_key_weights_get_exactly_zero_gradient() -> None:
    layer, x, logits = lca_setup()
    layer(x, logits).square().sum().backward()
    w_q, w_k, w_v = layer.to_qkv.weight.grad.chunk(3, dim=0)
    assert torch.equal(w_q, torch.zeros_like(w_q))
    assert torch.equal(w_k, torch.zeros_like(w_k))
    assert w_v.abs().max() > 0


def test_lca_is_a_broadcast_lesion_vector() -> None:
    """Every pixel of an image gets the same vector: W_out v_pool + b_out."""
    layer, x, logits = lca_setup()
    out = layer(x, logits)  # (B, N, C)
    w_v = layer.to_qkv.weight[2 * layer.inner_dim :].flatten(1)  # (inner, C)
    v_pool = hand_mask_pool(torch.einsum("oc,bchw->bohw", w_v, x), logits)[..., 0]  # (B, inner)
    lesion_vector = v_pool @ layer.to_out[0].weight.T + layer.to_out[0].bias  # (B, C)
    torch.testing.assert_close(out, lesion_vector[:, None, :].expand_as(out), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- mask dtypes and modes


@pytest.mark.parametrize("dtype", [torch.bool, torch.int64, torch.uint8])
def test_bool_and_integer_masks_are_refused_with_the_rule(dtype: torch.dtype) -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    mask = torch.zeros(1, 1, 4, 4, dtype=dtype)
    with pytest.raises(TypeError, match=rf"floating-point mask logits.*got {dtype}.*torch.where\(mask, 10.0"):
        mask_average_pool(x, mask)
    with pytest.raises(TypeError, match="LCA expects floating-point mask logits"):
        LCA(1, heads=1, dim_head=2)(x, mask)
    # The rule's suggestion does what a 0/1 mask means: the pooled token is the lesion's mean.
    lesion = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    lesion[..., 0, :2] = True
    token = mask_average_pool(x, torch.where(lesion, 20.0, -20.0))
    torch.testing.assert_close(token.item(), (0 + 1) / (2 + 5e-4), rtol=0, atol=1e-6)


def test_float64_mask_with_float32_features_gets_a_clear_error() -> None:
    x = torch.rand(2, 8, 4, 4)
    mask = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"LCA: the features are torch.float32 but the mask logits are torch.float64"):
        LCABlock(8, heads=2, dim_head=4, mlp_dim=16)(x, mask)
    with pytest.raises(TypeError, match=r"mask_average_pool: the features are torch.float32"):
        mask_average_pool(x, mask)


def test_lca_block_under_inference_mode_and_autocast() -> None:
    block = LCABlock(8, heads=2, dim_head=4, mlp_dim=16).eval()
    x, mask = torch.rand(2, 8, 4, 4), torch.randn(2, 1, 4, 4)
    with torch.no_grad():
        expected = block(x, mask)
    with torch.inference_mode():
        torch.testing.assert_close(block(x, mask), expected)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        # bfloat16 features with float32 mask logits and weights: allowed under autocast only.
        got = block(x.bfloat16(), mask)
    torch.testing.assert_close(got.float(), expected, rtol=0.05, atol=0.05)
    with pytest.raises(TypeError, match="LCA parameters are torch.float32 but the input is torch.bfloat16"):
        block(x.bfloat16(), mask.bfloat16())
