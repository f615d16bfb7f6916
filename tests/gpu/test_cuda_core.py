"""ESA's folded form on CUDA against the literal form, and the benchmark's CUDA path.

Marked ``gpu`` and skipped without CUDA: ``make test-gpu`` (or ``tools/gpu_numbers.sh``)
on a machine that has one. Last run: passed on an NVIDIA H200, torch 2.11.0+cu130.
"""

import json

import pytest
import torch

from esa_tutorial import ESA
from esa_tutorial.bench.__main__ import main as bench_main

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# Relative error allowed against a float64 run of the literal form, per dtype (bfloat16 keeps 8 bits).
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}


@pytest.fixture(autouse=True)
def no_tf32():
    """Exactness is the point here: TF32 (cuDNN's default for convolutions) would add ~1e-3 errors."""
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def outputs_and_grads(esa: ESA, x: torch.Tensor, forward, autocast_dtype=None) -> list[torch.Tensor]:
    esa.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    with torch.autocast("cuda", dtype=autocast_dtype or torch.float16, enabled=autocast_dtype is not None):
        out = forward(x)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out.device, out.dtype)
    out.backward(grad)
    return [out.detach(), x.grad] + [p.grad for p in esa.parameters()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(2, 64, 56, 56), (1, 256, 11, 11)], ids=lambda s: "x".join(map(str, s)))
def test_folded_matches_reference_forward_and_backward(dtype, shape):
    torch.manual_seed(0)
    esa = ESA(shape[1]).double().cuda()
    x = torch.randn(shape, dtype=torch.float64, device="cuda")
    want = outputs_and_grads(esa, x, esa.forward_reference)
    esa = esa.to(dtype)
    got = outputs_and_grads(esa, x.to(dtype), esa.forward_folded)
    for name, g, w in zip(["output", "input grad"] + [n for n, _ in esa.named_parameters()], got, want):
        assert g.dtype == dtype, name
        assert rel_err(g, w) < TOLERANCE[dtype], f"{name}: {rel_err(g, w):.2e}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_folded_under_autocast_matches_reference_under_autocast(dtype):
    torch.manual_seed(0)
    esa = ESA(64).cuda()
    x = torch.randn(2, 64, 40, 40, device="cuda")
    ref = outputs_and_grads(esa, x, esa.forward_reference, dtype)
    fold = outputs_and_grads(esa, x, esa.forward_folded, dtype)
    assert fold[0].dtype == ref[0].dtype == dtype
    for r, f in zip(ref, fold):
        assert rel_err(f, r) < 5 * TOLERANCE[dtype]
    assert all(p.grad.dtype == torch.float32 for p in esa.parameters())


def test_sdpa_matches_reference():
    esa = ESA(64).cuda()
    x = torch.randn(2, 64, 28, 28, device="cuda")
    esa.impl = "sdpa"
    assert rel_err(esa(x), esa.forward_reference(x)) < 1e-4


def test_inference_mode_and_thread_count_on_cuda():
    esa = ESA(64).cuda().eval()
    x = torch.randn(2, 64, 56, 56, device="cuda")
    threads = torch.get_num_threads()
    with torch.inference_mode():
        out = esa(x)
    assert out.is_inference() and torch.get_num_threads() == threads
    assert rel_err(out, esa.forward_reference(x)) < 1e-4


def test_benchmark_cuda_path(tmp_path):
    records = bench_main(["--device", "cuda", "--shape", "2", "64", "28", "28", "--repeats", "1",
                          "--min-run-time", "0.01", "--dtype", "float16", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["device"].startswith("cuda") and "gpu" in result["machine"]
    live = [r for r in records if r.skipped is None]
    assert {r.variant for r in live} >= {"esa_reference", "esa_folded", "esa_sdpa"}
    for r in live:
        assert set(r.peak_mb) == {"forward", "forward_backward"} and r.peak_mb["forward"] > 0
        assert all(t > 0 for t in r.seconds.values())
