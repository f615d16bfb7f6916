"""Count what an attention module costs: floating-point operations and attention-matrix bytes.

Both counts work on ``meta`` tensors, which carry shapes and dtypes but no
data, so a module can be "run" at sizes that would never fit in memory::

    with torch.device("meta"):
        mhsa = MHSA(64)
        x = torch.empty(16, 64, 112, 112)
    count_flops(mhsa, x)             # no arithmetic is done, no memory is used
    attention_matrix_bytes(mhsa, x)  # bytes the (B, heads, N, n_kv) matrix would take

FLOPs are those :class:`torch.utils.flop_counter.FlopCounterMode` counts:
matrix products and convolutions, two FLOPs per multiply-add. Softmax,
pooling and elementwise work are not counted: they do a few operations per
element, little arithmetic next to the products, although their memory
traffic can still cost real time (chapter 9 measures how much).

The counter sees every operation of a forward pass, on any device: the
package runs no work on threads of its own, whose operations a dispatch mode
such as ``FlopCounterMode`` would not see.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .nn.attention import PixelAttention


def flops_by_operator(module: nn.Module, *inputs: torch.Tensor) -> dict[str, int]:
    """FLOPs of one forward pass ``module(*inputs)``, per aten operator.

    Returns e.g. ``{"convolution": ..., "bmm": ..., "addmm": ...}`` (the ``aten.``
    prefix dropped). Runs without autograd; works on CPU, CUDA and meta tensors
    and gives the same counts on each.
    """
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    counts = counter.get_flop_counts().get("Global", {})
    return {str(op).removeprefix("aten.").split(".")[0]: int(n) for op, n in counts.items()}


def count_flops(module: nn.Module, *inputs: torch.Tensor) -> int:
    """Total FLOPs of one forward pass ``module(*inputs)`` (see :func:`~esa_tutorial.cost.flops_by_operator`)."""
    return sum(flops_by_operator(module, *inputs).values())


def attention_matrix_bytes(module: PixelAttention, x: torch.Tensor, *context: torch.Tensor) -> int:
    """Bytes of the attention matrix (B, heads, H*W, n_kv) that ``module`` builds for ``x``.

    Measured from the tensor ``module.attention(x, *context)`` returns (its
    number of elements times the element size), not from a formula, so it is
    right for any :class:`~esa_tutorial.PixelAttention` (MHSA:
    n_kv = H*W; ESA: n_kv = 35; LCA, given its mask logits as ``context``:
    n_kv = 1). Pass meta tensors for sizes that would not fit in memory.
    """
    module.check_input(x)
    with torch.no_grad():
        attn, _ = module.attention(x, *context)
    return attn.numel() * attn.element_size()


def saved_for_backward_bytes(module: nn.Module, x: torch.Tensor, *, weights_and_input: bool = True) -> int:
    """Bytes the autograd graph keeps for backward after one training forward of ``x``.

    Each storage is counted once (tensors saved twice, or as views, share one).
    ``weights_and_input=False`` leaves out the parameters' and the input's
    storages, which exist whether or not one trains: what is left is the
    activations memory that grows with batch and image size. This is what
    dominates training memory; unlike the process's peak memory it can be
    measured the same way on a CPU and repeats exactly. Runs on a copy of
    ``module`` in training mode, so batch-norm statistics stay untouched.
    """
    probe = copy.deepcopy(module).train()
    skip = set() if weights_and_input else {p.untyped_storage().data_ptr() for p in probe.parameters()} | {
        x.untyped_storage().data_ptr()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            storages[s.data_ptr()] = s.nbytes()
        # Detached: the same storage, held until the graph goes (so no later tensor reuses its address and
        # escapes the count), but no grad_fn. Returning ``t`` itself would make an output saved by its own
        # node a reference cycle: the whole graph would outlive this call until Python's cycle collector
        # ran, holding a training step's activations (8 GiB for LDNet.full() at batch 16, 224x224).
        return t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outputs = probe(x)
    del outputs
    return sum(storages.values())

