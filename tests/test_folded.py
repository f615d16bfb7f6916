"""ESA's folded form against its literal (reference) form: outputs, gradients, blocks, dropout, dtypes."""

import pytest
import torch

from esa_tutorial import ESA
from esa_tutorial.nn.esa import FOLDING_MARGIN, literal_is_cheaper
from esa_tutorial.nn.folded import (
    CPU_BLOCK_ROWS, LOG2E, block_probabilities, block_shape, blocks, folded_attention, softmax2_per_head_, softmax_per_head,
    uses_exp2,
)

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


def test_block_shape_and_blocks():
    cpu = torch.device("cpu")
    # A map larger than a block: one image's pixels per block, evened out.
    assert block_shape(4, 10_000, cpu, rows=1536) == (1, 1429)  # 7 blocks per image, the fewest of <= 1536
    assert block_shape(16, 784, cpu, rows=128) == (1, 112)  # 7 even blocks, not 6 of 128 and one of 16
    # A map that fits: whole images, as many as fit, evened out over the batch.
    assert block_shape(16, 196, cpu, rows=1536) == (6, 196)  # 7 fit; blocks of 6, 6, 4 rather than 7, 7, 2
    assert block_shape(16, 784, cpu, rows=1536) == (1, 784)
    assert block_shape(2, 10, cpu, rows=8) == (1, 5)  # never more rows than asked, never less than a pixel
    assert block_shape(8, 100, cpu, rows=3) == (1, 3)
    assert block_shape(16, 12544, torch.device("meta")) == (16, 12544)  # one block off the CPU
    assert block_shape(4, 10_000, cpu)[1] <= CPU_BLOCK_ROWS
    # Every (image, pixel) pair is in exactly one block.
    covered = torch.zeros(5, 13, dtype=torch.int64)
    for imgs, px in blocks(5, 13, cpu, rows=4):
        covered[imgs, px] += 1
    assert bool((covered == 1).all())


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
    s = torch.randn(3, 4 * 7, 5)  # the package's layout: (B, heads*k, pixels)
    p = softmax_per_head(s, 4)
    torch.testing.assert_close(p.unflatten(1, (4, 7)).sum(2), torch.ones(3, 4, 5))
    torch.testing.assert_close(p[:, 7:14], torch.softmax(s[:, 7:14], 1))
    last = softmax_per_head(s.transpose(1, 2), 4, dim=-1)  # any axis, pixels-first too
    torch.testing.assert_close(last, p.transpose(1, 2))


def test_literal_is_cheaper_by_hand_count():
    # LDNet's sizes, C = 256, square maps of side w (N = w*w pixels):
    #   literal: (6*512*256 + 4*35*512 + 2*512*256) N = 1,120,256 N
    #   folded:  4*35*8*256 N + 2*256*(9 N + 81 w) + 8*35*512*256 = 291,328 N + 41,472 w + 36,700,160
    # 6x6: 40,329,216 < 47,436,800; 7x7: 54,892,544 > 51,265,536 FLOPs, but < 1.15 x 51,265,536 = 58,955,366;
    # 8x8: 71,696,384 > 1.15 x (18,644,992 + 331,776 + 36,700,160) = 64,028,467.
    assert literal_is_cheaper(6, 6, 256, 8, 64, margin=1.0)
    assert not literal_is_cheaper(7, 7, 256, 8, 64, margin=1.0)
    assert literal_is_cheaper(7, 7, 256, 8, 64, margin=1.15)
    assert not literal_is_cheaper(8, 8, 256, 8, 64, margin=1.15)
    assert not literal_is_cheaper(11, 11, 256, 8, 64)  # the post's 11x11 demo folds
    # C = 64: literal 333,824 N; folded 72,832 N + 10,368 w + 9,175,040.
    # 5x5 literal; 6x6: 12,017,664 > 11,859,200 but < 1.15 x that (13,638,080); 7x7: 16,357,376 > 14,738,842.
    assert literal_is_cheaper(5, 5, 64, 8, 64, margin=1.0)
    assert not literal_is_cheaper(6, 6, 64, 8, 64, margin=1.0)
    assert literal_is_cheaper(6, 6, 64, 8, 64, margin=1.15)
    assert not literal_is_cheaper(7, 7, 64, 8, 64, margin=1.15)
    assert FOLDING_MARGIN == 1.15  # the default the counts above use
    esa = ESA(256)
    assert esa.literal_is_cheaper(torch.empty(1, 256, 7, 7, device="meta"))
    assert not esa.literal_is_cheaper(torch.empty(1, 256, 8, 8, device="meta"))


def test_vmap_over_one_input_only_with_several_blocks():
    # The blocked forward writes blocks into one output; under vmap that output must be batched
    # whichever input carries the vmapped dimension, not only x.
    b, c, n, heads, k = 2, 3, 9, 2, 4
    x, vo, bias = torch.randn(b, c, n), torch.randn(b, heads * k, c), torch.randn(c)
    keys = torch.randn(5, b, c, heads * k)
    got = torch.func.vmap(lambda a: folded_attention(x, a, vo, bias, heads, rows=4))(keys)
    want = torch.stack([unblocked(x, a, vo, bias, heads) for a in keys])
    torch.testing.assert_close(got, want)
    biases = torch.randn(3, c)
    got = torch.func.vmap(lambda bb: folded_attention(x, keys[0], vo, bb, heads, rows=4))(biases)
    torch.testing.assert_close(got, torch.stack([unblocked(x, keys[0], vo, bb, heads) for bb in biases]))


def test_base2_softmax_equals_the_natural_one():
    s = torch.randn(3, 4 * 7, 5, dtype=torch.float64) * 20  # large scores: the max shift matters
    want = softmax_per_head(s, 4)
    got = softmax2_per_head_(s * LOG2E, 4)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    xs, a = torch.randn(2, 6, 9, dtype=torch.float64), torch.randn(2, 6, 4 * 7, dtype=torch.float64)
    natural = block_probabilities(xs, a, 4, exp2=False)
    with torch.no_grad():  # in place
        torch.testing.assert_close(block_probabilities(xs, a * LOG2E, 4, exp2=True), natural)
    with torch.enable_grad():  # out of place, as in a backward recorded for second derivatives
        torch.testing.assert_close(block_probabilities(xs, a * LOG2E, 4, exp2=True), natural)


def test_which_blocks_use_exp2():
    assert uses_exp2(torch.empty(1)) and uses_exp2(torch.empty(1, dtype=torch.float64))
    assert not uses_exp2(torch.empty(1, dtype=torch.bfloat16))  # torch.softmax accumulates in float32
    assert not uses_exp2(torch.empty(1, device="meta"))
