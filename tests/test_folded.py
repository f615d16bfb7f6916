"""ESA's folded form against its literal (reference) form: outputs, gradients, blocks, dropout, dtypes."""

import pytest
import torch

from esa_tutorial import ESA
from esa_tutorial.esa import literal_is_cheaper
from esa_tutorial.folded import CPU_BLOCK_ROWS, block_pixels, folded_attention, softmax_per_head

# (batch, dim, height, width, heads, dim_head)
SHAPES = [
    (1, 8, 1, 1, 2, 4),  # one pixel: every pyramid cell is that pixel
    (2, 8, 2, 2, 2, 4),  # smaller than the 3x3 and 5x5 grids (overlapping bins)
    (2, 16, 7, 9, 4, 8),  # non-square
    (3, 12, 5, 3, 3, 4),  # non-square, taller than wide, batch 3
    (2, 6, 6, 5, 1, 6),  # heads=1 and dim_head=dim: to_out is Identity
    (1, 64, 6, 6, 8, 64),  # LDNet's heads and dim_head
    (1, 4, 70, 70, 2, 4),  # 4900 pixels: more than one CPU block, the last one short
]


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30)).item()


def outputs_and_grads(esa: ESA, x: torch.Tensor, forward) -> list[torch.Tensor]:
    """Output, input gradient and every parameter gradient for a fixed random output gradient."""
    esa.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    out = forward(x)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    out.backward(grad)
    return [out.detach(), x.grad] + [p.grad for p in esa.parameters()]


def unblocked(x, a, vo, bias, heads):
    """The folded formula written out over all pixels at once."""
    b, _, n = x.shape
    probs = torch.softmax((x.transpose(1, 2) @ a).reshape(b, n, heads, -1), dim=-1).reshape(b, n, -1)
    return probs @ vo + (0 if bias is None else bias)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_folded_matches_reference_outputs_and_gradients(shape):
    b, c, h, w, heads, dim_head = shape
    esa = ESA(c, heads, dim_head)
    x = torch.randn(b, c, h, w)
    ref = outputs_and_grads(esa, x, esa.forward_reference)
    fold = outputs_and_grads(esa, x, esa.forward_folded)
    names = ["output", "input grad"] + [n for n, _ in esa.named_parameters()]
    assert len(ref) == len(fold) == len(names)
    for name, r, f in zip(names, ref, fold):
        assert f.shape == r.shape, name
        assert rel_err(f, r) <= 1e-5, f"{name}: relative error {rel_err(f, r):.2e}"


def test_folded_attention_equals_unblocked_formula_for_any_block_size():
    b, c, n, heads, k = 2, 5, 11, 3, 4
    x, a = torch.randn(b, c, n), torch.randn(b, c, heads * k)
    vo, bias = torch.randn(b, heads * k, c), torch.randn(c)
    want = unblocked(x, a, vo, bias, heads)
    for rows in (1, 2, 6, 2 * n, 1000):  # 1 and 2 rows: one pixel per block; 6: blocks of 3, last short
        torch.testing.assert_close(folded_attention(x, a, vo, bias, heads, rows=rows), want)
    torch.testing.assert_close(folded_attention(x, a, vo, None, heads, rows=4), want - bias)


def test_block_pixels():
    cpu = torch.device("cpu")
    assert block_pixels(4, 10_000, cpu) == CPU_BLOCK_ROWS // 4
    assert block_pixels(1, 100, cpu) == 100  # never more than the image
    assert block_pixels(8, 100, cpu, rows=3) == 1  # never less than one pixel
    assert block_pixels(16, 12544, torch.device("meta")) == 12544  # one block off the CPU


@pytest.mark.parametrize("rows", [1, 4, None], ids=["rows1", "rows4", "whole"])
def test_gradcheck_and_gradgradcheck_folded_attention(rows):
    b, c, n, heads, k = 2, 3, 7, 2, 4
    inputs = [
        torch.randn(shape, dtype=torch.float64, requires_grad=True)
        for shape in ((b, c, n), (b, c, heads * k), (b, heads * k, c), (c,))
    ]

    def f(*t):
        return folded_attention(*t, heads, rows=rows)

    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)
    if rows == 4:  # blocks of 2 pixels (batch 2), the last one short
        # The hand-written backward is made of differentiable operations: second derivatives are right too.
        assert torch.autograd.gradgradcheck(f, inputs, fast_mode=True)


@pytest.mark.parametrize("impl", ["folded", "reference", "sdpa"])
def test_gradcheck_float64_module(impl):
    esa = ESA(6, 2, 3, impl=impl).double()
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64, requires_grad=True)
    forward = esa.forward_folded if impl == "folded" else esa
    assert torch.autograd.gradcheck(forward, (x,), fast_mode=True)


def test_dropout_eval_mode_equal_and_train_mode_same_mask():
    esa = ESA(16, 4, 8, dropout=0.5)
    x = torch.randn(2, 16, 5, 6)
    esa.eval()
    ref_eval = esa.forward_reference(x)
    assert rel_err(esa.forward_folded(x), ref_eval) <= 1e-5
    # In training, dropout is the only random draw of either form and acts on a same-shaped
    # (B, N, C) output, so the same seed gives both the same mask: outputs and gradients agree.
    esa.train()
    results = {}
    for name, forward in (("reference", esa.forward_reference), ("folded", esa.forward_folded)):
        with torch.random.fork_rng():
            torch.manual_seed(123)
            results[name] = outputs_and_grads(esa, x, forward)
    for r, f in zip(results["reference"], results["folded"]):
        assert rel_err(f, r) <= 1e-5
    out = results["folded"][0]
    zeros = (out == 0).float().mean().item()
    assert 0.4 < zeros < 0.6, f"dropout 0.5 zeroed a fraction {zeros:.2f}"
    kept = out != 0
    torch.testing.assert_close(out[kept], 2 * ref_eval.detach()[kept], rtol=1e-4, atol=1e-5)


def test_bfloat16_module_close_to_float32():
    esa = ESA(32, 4, 16)
    x = torch.randn(2, 32, 6, 7)
    want = esa.forward_folded(x)
    got = esa.to(torch.bfloat16).forward_folded(x.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16
    assert rel_err(got, want) < 3e-2
    got.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in esa.parameters())


def test_state_dicts_interchangeable():
    folded_esa = ESA(16, 4, 8, impl="folded")
    reference_esa = ESA(16, 4, 8, impl="reference")
    assert folded_esa.state_dict().keys() == reference_esa.state_dict().keys()
    reference_esa.load_state_dict(folded_esa.state_dict(), strict=True)
    x = torch.randn(2, 16, 4, 5)
    assert rel_err(folded_esa.forward_folded(x), reference_esa(x)) <= 1e-5


def test_channels_last_and_frozen_input():
    esa = ESA(16, 4, 8)
    x = torch.randn(2, 16, 5, 7)
    want = esa.forward_reference(x).detach()
    assert rel_err(esa.forward_folded(x.to(memory_format=torch.channels_last)), want) <= 1e-5
    esa.forward_folded(x).sum().backward()  # input without requires_grad: only parameter gradients
    assert all(p.grad is not None for p in esa.parameters())


def test_softmax_per_head_normalises_each_head_separately():
    s = torch.randn(3, 5, 4 * 7)
    p = softmax_per_head(s, 4)
    torch.testing.assert_close(p.unflatten(-1, (4, 7)).sum(-1), torch.ones(3, 5, 4))
    torch.testing.assert_close(p[..., 7:14], torch.softmax(s[..., 7:14], -1))


def test_literal_is_cheaper_by_hand_count():
    # LDNet's sizes, C = 256: literal 8*512*256 + 140*512 = 1,120,256 FLOPs per pixel; folded 140*8*256
    # = 286,720 per pixel plus 8*512*256*35 = 36,700,160 per image: the folded form wins from 45 pixels on.
    assert literal_is_cheaper(44, 256, 8, 64, 35)
    assert not literal_is_cheaper(45, 256, 8, 64, 35)
    assert not literal_is_cheaper(121, 256, 8, 64, 35)  # the post's 11x11 demo folds
    esa = ESA(256)
    assert esa.literal_is_cheaper(torch.empty(1, 256, 5, 5, device="meta"))
