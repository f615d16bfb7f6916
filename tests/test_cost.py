"""FLOP and attention-memory counts against hand formulas, on CPU and on meta tensors."""

import gc
import weakref

import pytest
import torch
from torch import nn

from esa_tutorial import ESA, LCA, MHSA
from esa_tutorial.cost import attention_matrix_bytes, count_flops, flops_by_operator, saved_for_backward_bytes
from esa_tutorial.nn.folded import CPU_BLOCK_ROWS

# Two FLOPs per multiply-add. With C channels, inner = heads * dim_head, N pixels, n_kv tokens:
#   to_qkv (1x1 conv):     2 * N * C * 3 * inner
#   q @ k^T and attn @ v:  2 * (2 * N * n_kv * inner)
#   to_out (Linear):       2 * N * inner * C


def hand_flops(batch, c, heads, dim_head, n, n_kv, project_out=True):
    inner = heads * dim_head
    return {
        "convolution": batch * 2 * n * c * 3 * inner,
        "bmm": batch * 4 * n * n_kv * inner,
        **({"addmm": batch * 2 * n * inner * c} if project_out else {}),
    }


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("cls,hw", [(MHSA, (6, 5)), (ESA, (6, 5)), (ESA, (9, 9))])
def test_flops_match_hand_formula(device, cls, hw):
    kwargs = {"impl": "reference"} if cls is ESA else {}
    with torch.device(device):
        module = cls(12, heads=3, dim_head=4, **kwargs)
        x = torch.randn(2, 12, *hw)
    n = hw[0] * hw[1]
    n_kv = n if cls is MHSA else 35
    expected = hand_flops(2, 12, 3, 4, n, n_kv)
    assert flops_by_operator(module, x) == expected
    assert count_flops(module, x) == sum(expected.values())


def test_identity_output_projection_adds_no_flops():
    module = MHSA(8, heads=1, dim_head=8)
    assert isinstance(module.to_out, nn.Identity)
    assert flops_by_operator(module, torch.randn(1, 8, 4, 4)) == hand_flops(1, 8, 1, 8, 16, 16, False)


def folded_hand_flops(batch, c, heads, dim_head, h, w, n_kv=35, s=9):
    """Folded ESA: pyramid pooling as two products (rows, then columns, of all S = 1+3+5 bins),
    two pixel products (C -> heads*n_kv -> C) and, per image, K, V, A and V'."""
    inner, n = heads * dim_head, h * w
    pooling = 2 * c * (s * h * w + s * s * w)
    return batch * (pooling + 2 * 2 * n * c * heads * n_kv + 4 * 2 * inner * c * n_kv)


@pytest.mark.parametrize("hw", [(10, 10), (64, 64)])
def test_folded_esa_counts_match_hand_count_on_cpu_and_meta(hw):
    # 2 x 64 x 64 = 8192 rows spans two CPU blocks: every block must be seen (issue 12: 18M, not 72k).
    # dim_head 16: the folded form counts fewer FLOPs than the literal one here, so ESA folds.
    assert 2 * 64 * 64 > CPU_BLOCK_ROWS
    cpu = count_flops(ESA(16, heads=2, dim_head=16), torch.randn(2, 16, *hw))
    with torch.device("meta"):
        meta = count_flops(ESA(16, heads=2, dim_head=16), torch.empty(2, 16, *hw))
    assert meta == cpu == folded_hand_flops(2, 16, 2, 16, *hw)
    if hw == (64, 64):
        pooling = 2 * 16 * (9 * 4096 + 81 * 64)
        assert cpu == 2 * (pooling + 4096 * 4 * 16 * 70 + 8 * 32 * 16 * 35) == 39_677_952


def test_folded_esa_falls_back_to_the_cheaper_literal_form():
    # With dim_head 8, per pixel the literal form counts 4,288 FLOPs, the folded one 4,480.
    x = torch.randn(1, 16, 12, 12)
    assert count_flops(ESA(16, heads=2, dim_head=8), x) == sum(hand_flops(1, 16, 2, 8, 144, 35).values())


@pytest.mark.parametrize("dtype,itemsize", [(torch.float32, 4), (torch.float64, 8)])
def test_attention_matrix_bytes(dtype, itemsize):
    x = torch.randn(2, 12, 7, 6, dtype=dtype)
    mhsa = MHSA(12, heads=3, dim_head=4).to(dtype)
    esa = ESA(12, heads=3, dim_head=4).to(dtype)
    assert attention_matrix_bytes(mhsa, x) == 2 * 3 * 42 * 42 * itemsize
    assert attention_matrix_bytes(esa, x) == 2 * 3 * 42 * 35 * itemsize


def test_attention_matrix_bytes_passes_context_to_cross_attention():
    lca = LCA(12, heads=3, dim_head=4)
    x, mask_logits = torch.randn(2, 12, 5, 4), torch.randn(2, 1, 5, 4)
    assert attention_matrix_bytes(lca, x, mask_logits) == 2 * 3 * 20 * 1 * 4


def test_attention_matrix_bytes_at_ldnet_scale_on_meta():
    # 16 x 64 x 112 x 112 would need 75 GiB for MHSA's matrix; on meta it costs nothing.
    with torch.device("meta"):
        x = torch.empty(16, 64, 112, 112)
        assert attention_matrix_bytes(MHSA(64), x) == 16 * 8 * 12544**2 * 4


def test_attention_matrix_bytes_rejects_wrong_channels():
    with pytest.raises(ValueError, match="C=12"):
        attention_matrix_bytes(MHSA(12, heads=3, dim_head=4), torch.randn(1, 5, 4, 4))


_outputs: list = []  # weak references to what the probe's forward made (a global: the probe is a deep copy)


class _Saves(torch.nn.Module):
    """Each op saves its own output for backward (exp, tanh), the case where a pack hook can close a cycle."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.exp(x).tanh()
        _outputs.append(weakref.ref(y))
        return y


def test_saved_for_backward_bytes_frees_the_graph_on_return():
    """Nothing of the measured forward outlives the call, without waiting for Python's cycle collector.

    A pack hook that returned the tensor itself made each output saved by its own node a reference
    cycle: on a GPU the graph of one LDNet.full() step (8 GiB) stayed allocated after the call.
    """
    x = torch.randn(4, 8, requires_grad=True)
    _outputs.clear()
    gc.collect()
    gc.disable()
    try:
        counted = saved_for_backward_bytes(_Saves(), x, weights_and_input=False)
        alive = [r for r in _outputs if r() is not None]
    finally:
        gc.enable()
    assert counted == 2 * 4 * 8 * 4  # exp's output and tanh's output, 32 float32 values each
    assert not alive, "the forward's output is still alive: the saved-tensor graph is a reference cycle"
