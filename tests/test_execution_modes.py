"""Every attention module under every way torch runs a model (timm-style execution-mode matrix).

Each mode is checked against plain eager float32: no_grad, inference_mode on maps
larger than one CPU block, several Python threads at once, autocast (CPU bfloat16),
torch.compile(fullgraph=True), torch.func.grad and vmap, and meta tensors. The
thread count must be left as it was.
"""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch.func import functional_call, grad, vmap

from esa_tutorial import ESA, MHSA, PPM, ESABlock
from esa_tutorial.nn.folded import CPU_BLOCK_ROWS

DIM = 8


def make(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name in ("esa_folded", "esa_reference", "esa_sdpa"):
        return ESA(DIM, heads=2, dim_head=4, impl=name.removeprefix("esa_"))
    if name == "mhsa":
        return MHSA(DIM, heads=2, dim_head=4)
    if name == "esa_block":
        return ESABlock(DIM, heads=2, dim_head=4, mlp_dim=16)
    return PPM()


MODULES = ["esa_folded", "esa_reference", "esa_sdpa", "mhsa", "esa_block", "ppm"]
# 2 x 80 x 80 = 12800 rows: several CPU blocks of the folded form (the crash of issue 12 needed that).
BIG = (2, DIM, 80, 80)
SMALL = (2, DIM, 6, 7)


def test_big_map_spans_several_blocks():
    assert BIG[0] * BIG[2] * BIG[3] > 2 * CPU_BLOCK_ROWS


@pytest.fixture
def threads_unchanged():
    before = torch.get_num_threads()
    yield
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("name", MODULES)
def test_no_grad_and_inference_mode_on_a_big_map(name, threads_unchanged):
    module = make(name).eval()
    x = torch.randn(BIG if name in ("esa_folded", "esa_block") else SMALL)
    want = module(x)
    with torch.no_grad():
        torch.testing.assert_close(module(x), want)
    with torch.inference_mode():
        got = module(x)
    assert got.is_inference()
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", ["esa_folded"])
def test_several_python_threads_at_once(name, threads_unchanged):
    module = make(name).eval()
    inputs = [torch.randn(BIG, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    with torch.no_grad():
        want = [module(x) for x in inputs]

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(x)

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(run, inputs))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("name", MODULES)
def test_autocast_bfloat16_cpu(name, threads_unchanged):
    module = make(name)
    # The folded form over several blocks; the others, whose code has no blocks, on a small map.
    x = torch.randn((2, DIM, 60, 70) if name == "esa_folded" else SMALL)
    want = module(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = module(x)
        # What an autocast network hands on: a bfloat16 map meeting float32 weights.
        got_from_bf16 = module(x.to(torch.bfloat16))
    for out in (got, got_from_bf16):
        rel = ((out.float() - want).norm() / want.norm()).item()
        assert rel < 3e-2, rel
    if name not in ("ppm", "esa_block"):  # the block's LayerNorm and residual sum run in float32
        assert got.dtype == torch.bfloat16
    if name != "ppm":
        got.float().square().mean().backward()
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in module.parameters())


def test_dtype_mismatch_outside_autocast_is_a_clear_error():
    module = make("esa_folded")
    with pytest.raises(TypeError, match="parameters are torch.float32 but the input is torch.bfloat16"):
        module(torch.randn(SMALL, dtype=torch.bfloat16))


@pytest.mark.parametrize("name", [
    "esa_folded",
    pytest.param("esa_reference", marks=pytest.mark.slow),  # 3 s each: compile time, not run time
    pytest.param("esa_sdpa", marks=pytest.mark.slow),
])
def test_compile_fullgraph_forward_and_backward(name, threads_unchanged):
    module = make(name)
    x = torch.randn(1, DIM, 80, 60, requires_grad=True)  # 4800 pixels: two blocks of the folded form
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    (gx,) = torch.autograd.grad(out.square().sum(), x)
    want = module(x)
    (want_gx,) = torch.autograd.grad(want.square().sum(), x)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(gx, want_gx)


@pytest.mark.parametrize("name", ["esa_folded", "esa_reference", "esa_sdpa", "mhsa"])
def test_torch_func_grad_and_vmap(name, threads_unchanged):
    module = make(name)
    x = torch.randn(SMALL if name == "mhsa" else (1, DIM, 80, 60))
    params = {k: v.detach() for k, v in module.named_parameters()}

    def loss(p, t):
        return functional_call(module, p, (t,)).square().mean()

    g_params, g_x = grad(loss, argnums=(0, 1))(params, x)
    x_req = x.clone().requires_grad_(True)
    module.zero_grad()
    loss(dict(module.named_parameters()), x_req).backward()
    torch.testing.assert_close(g_x, x_req.grad)
    for k, p in module.named_parameters():
        torch.testing.assert_close(g_params[k], p.grad, msg=k)

    stack = torch.randn(3, *SMALL)
    batched = vmap(module)(stack)
    torch.testing.assert_close(batched, torch.stack([module(s) for s in stack]))


@pytest.mark.parametrize("name", ["esa_folded", "esa_reference", "esa_sdpa", "mhsa", "esa_block"])
def test_meta_tensors_forward_and_backward(name):
    with torch.device("meta"):
        module = make(name)
        x = torch.empty(2, DIM, 64, 64, requires_grad=True)
    out = module(x)
    assert out.device.type == "meta"
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert all(p.grad is not None and p.grad.shape == p.shape for p in module.parameters())
