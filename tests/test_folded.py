"""ESA's folded form against its literal (reference) form: outputs, gradients, dropout, dtypes."""

import pytest
import torch

import esa_tutorial.folded as folded
from esa_tutorial import ESA
from esa_tutorial.folded import _blocks, folded_attention

# (batch, dim, height, width, heads, dim_head)
SHAPES = [
    (1, 8, 1, 1, 2, 4),  # one pixel: every pyramid cell is that pixel
    (2, 8, 2, 2, 2, 4),  # smaller than the 3x3 and 5x5 grids (overlapping bins)
    (2, 16, 7, 9, 4, 8),  # non-square
    (3, 12, 5, 3, 3, 4),  # non-square, taller than wide, batch 3
    (2, 6, 6, 5, 1, 6),  # heads=1 and dim_head=dim: to_out is Identity
    (1, 64, 6, 6, 8, 64),  # LDNet's heads and dim_head
]


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30)).item()


def outputs_and_grads(esa: ESA, x: torch.Tensor, impl: str) -> list[torch.Tensor]:
    """Output, input gradient and every parameter gradient for a fixed random output gradient."""
    esa.impl = impl
    esa.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    out = esa(x)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    out.backward(grad)
    return [out.detach(), x.grad] + [p.grad for p in esa.parameters()]


@pytest.fixture(params=[3, 256], ids=["rows3", "rows256"])
def block_rows(request, monkeypatch):
    """Run the folded form with tiny blocks (many, with a ragged last one) and with the default."""
    monkeypatch.setattr(folded, "CPU_BLOCK_ROWS", request.param)
    return request.param


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_folded_matches_reference_outputs_and_gradients(shape, block_rows):
    b, c, h, w, heads, dim_head = shape
    esa = ESA(c, heads, dim_head)
    x = torch.randn(b, c, h, w)
    ref = outputs_and_grads(esa, x, "reference")
    fold = outputs_and_grads(esa, x, "folded")
    names = ["output", "input grad"] + [n for n, _ in esa.named_parameters()]
    assert len(ref) == len(fold) == len(names)
    for name, r, f in zip(names, ref, fold):
        assert f.shape == r.shape, name
        assert rel_err(f, r) <= 1e-5, f"{name}: relative error {rel_err(f, r):.2e}"


def test_identity_case_has_no_output_projection():
    esa = ESA(6, heads=1, dim_head=6)
    assert isinstance(esa.to_out, torch.nn.Identity)
    assert sorted(esa.state_dict()) == ["to_qkv.weight"]


def test_gradcheck_float64_folded(monkeypatch):
    # Blocks of 5 pixels on 3x4 images: blocks end mid-image and the last one is short.
    monkeypatch.setattr(folded, "CPU_BLOCK_ROWS", 5)
    esa = ESA(6, 2, 3).double()
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(esa, (x,))


@pytest.mark.parametrize("rows", [1, 4, None], ids=["rows1", "rows4", "whole"])
def test_gradcheck_folded_attention_all_inputs(rows):
    b, c, n, heads, k = 2, 3, 7, 2, 4
    x = torch.randn(b, c, n, dtype=torch.float64, requires_grad=True)
    a = torch.randn(b, c, heads * k, dtype=torch.float64, requires_grad=True)
    vo = torch.randn(b, heads * k, c, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(c, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *t: folded_attention(*t, heads, rows=rows if rows else n), (x, a, vo, bias)
    )


def test_folded_attention_equals_unblocked_formula():
    b, c, n, heads, k = 2, 5, 11, 3, 4
    x, a = torch.randn(b, c, n), torch.randn(b, c, heads * k)
    vo, bias = torch.randn(b, heads * k, c), torch.randn(c)
    probs = torch.softmax((x.transpose(1, 2) @ a).reshape(b, n, heads, k), dim=-1).reshape(b, n, heads * k)
    want = probs @ vo + bias
    for rows in (1, 3, n, 100):
        torch.testing.assert_close(folded_attention(x, a, vo, bias, heads, rows=rows), want)
    torch.testing.assert_close(folded_attention(x, a, vo, None, heads, rows=4), want - bias)


def test_blocks_cover_every_pixel_once():
    seen = torch.zeros(3, 10, dtype=torch.int64)
    for bs, ps in _blocks(3, 10, 4):
        seen[bs, ps] += 1
    assert torch.equal(seen, torch.ones_like(seen))
    assert list(_blocks(3, 10, None)) == [(slice(None), slice(None))]
    assert list(_blocks(3, 10, 10)) == [(slice(None), slice(None))]


def test_dropout_eval_mode_equal_and_train_mode_same_mask():
    esa = ESA(16, 4, 8, dropout=0.5)
    x = torch.randn(2, 16, 5, 6)
    esa.eval()
    esa.impl = "reference"
    ref_eval = esa(x)
    esa.impl = "folded"
    assert rel_err(esa(x), ref_eval) <= 1e-5
    # In training, dropout is the only random draw of either form and acts on a same-shaped
    # (B, N, C) output, so the same seed gives both the same mask: outputs and gradients agree.
    esa.train()
    results = {}
    for impl in ("reference", "folded"):
        with torch.random.fork_rng():
            torch.manual_seed(123)
            results[impl] = outputs_and_grads(esa, x, impl)
    for r, f in zip(results["reference"], results["folded"]):
        assert rel_err(f, r) <= 1e-5
    out = results["folded"][0]
    zeros = (out == 0).float().mean().item()
    assert 0.4 < zeros < 0.6, f"dropout 0.5 zeroed a fraction {zeros:.2f}"
    kept = out != 0
    torch.testing.assert_close(out[kept], 2 * ref_eval.detach()[kept], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["reference", "folded"])
def test_bfloat16_close_to_float32(impl):
    esa = ESA(32, 4, 16, impl=impl)
    x = torch.randn(2, 32, 6, 7)
    want = esa(x)
    got = esa.to(torch.bfloat16)(x.to(torch.bfloat16))
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
    assert rel_err(folded_esa(x), reference_esa(x)) <= 1e-5


def test_inference_mode_channels_last_and_frozen_input():
    esa = ESA(16, 4, 8)
    x = torch.randn(2, 16, 5, 7)
    esa.impl = "reference"
    want = esa(x).detach()
    esa.impl = "folded"
    with torch.inference_mode():
        assert rel_err(esa(x), want) <= 1e-5
    assert rel_err(esa(x.to(memory_format=torch.channels_last)), want) <= 1e-5
    esa(x).sum().backward()  # input without requires_grad: only parameter gradients
    assert all(p.grad is not None for p in esa.parameters())


def test_folded_backward_is_first_order_only():
    esa = ESA(8, 2, 4)
    x = torch.randn(1, 8, 3, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match="first-order gradients only.*impl='reference'"):
        torch.autograd.grad(esa(x).sum(), x, create_graph=True)
