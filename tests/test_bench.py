"""The benchmark's pieces on tiny shapes: FLOP counts against formulas, well-formed records and files.

No timing is asserted: only that times are measured, recorded and reported.
"""

import json

import pytest
import torch

from esa_tutorial import ESA
from esa_tutorial.bench import (
    DIM_HEAD, HEADS, VARIANTS, Record, attention_matrix_gb, build, count_flops, esa_sdpa,
    format_table, main, peak_memory_mb, plot, run_benchmark,
)

SHAPE = (2, 8, 5, 6)  # batch, channels, height, width


def formula_flops(variant: str, shape) -> dict[str, int]:
    """FLOPs of the matrix products, 2 per multiply-add, written out by hand."""
    b, c, h, w = shape
    n, inner, m = h * w, HEADS * DIM_HEAD, HEADS * 35
    if variant == "esa_folded":
        pixels = 2 * b * n * c * m  # one (N, C) @ (C, heads*35) product per image
        weights = 2 * b * inner * c * 35  # one small product making a, vo (4 of them)
        # backward: recompute the scores, then d(vo), d(probs), d(a), d(x): 5 pixel products;
        # each small product has two operands needing gradients: 8.
        return {"forward": 2 * pixels + 4 * weights, "forward_backward": 7 * pixels + 12 * weights}
    n_kv = n if variant == "mhsa" else 35
    forward = 2 * b * n * c * 3 * inner + 2 * 2 * b * n * inner * n_kv + 2 * b * n * inner * c
    return {"forward": forward, "forward_backward": 3 * forward}  # every product: 2 more in backward


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", [SHAPE, (1, 16, 3, 7)])
def test_flop_counts_match_formula(variant, shape):
    assert count_flops(variant, shape) == formula_flops(variant, shape)


def test_folded_saves_flops_at_ldnet_first_stage():
    shape = (16, 64, 112, 112)  # counted on meta tensors: no memory, no arithmetic
    ref, fold = count_flops("esa_reference", shape), count_flops("esa_folded", shape)
    assert ref == formula_flops("esa_reference", shape)
    assert fold == formula_flops("esa_folded", shape)
    assert ref["forward"] > 4 * fold["forward"]


def test_build_rejects_unknown_variant():
    with pytest.raises(ValueError, match="variant must be one of .* got 'flash'"):
        build("flash", 8, torch.float32, "cpu")


def test_variants_compute_the_same_function():
    x = torch.randn(SHAPE)
    outs = {v: build(v, SHAPE[1], torch.float32, "cpu")(x) for v in ("esa_reference", "esa_folded", "esa_sdpa")}
    for v in ("esa_folded", "esa_sdpa"):
        torch.testing.assert_close(outs[v], outs["esa_reference"], rtol=1e-4, atol=1e-5)
    esa = ESA(8, 2, 4)
    torch.testing.assert_close(esa_sdpa(esa, x), esa.forward_reference(x), rtol=1e-4, atol=1e-5)


def test_attention_matrix_size():
    b, c, h, w = 16, 64, 112, 112
    assert attention_matrix_gb("mhsa", (b, c, h, w), torch.float32) == pytest.approx(b * 8 * (h * w) ** 2 * 4 / 1e9)
    assert attention_matrix_gb("esa_reference", (b, c, h, w), torch.bfloat16) == pytest.approx(b * 8 * h * w * 35 * 2 / 1e9)


def test_run_benchmark_records_are_well_formed(tmp_path):
    records = run_benchmark([SHAPE], repeats=2, min_run_time=0.001, memory=False, mhsa_limit_gb=1e-9, device="cpu")
    assert [r.variant for r in records] == list(VARIANTS)
    mhsa, *esa = records
    assert mhsa.skipped and not mhsa.seconds and not mhsa.flops
    for r in esa:
        assert r.skipped is None and r.shape == SHAPE
        assert r.flops == formula_flops(r.variant, SHAPE)
        assert set(r.seconds) == {"forward", "forward_backward"}
        assert all(len(v) == 2 and min(v) > 0 for v in r.all_seconds.values())
        assert r.gflops_per_s("forward") == pytest.approx(r.flops["forward"] / r.seconds["forward"] / 1e9)
    table = format_table(records, matmul=10.0)
    assert "skipped" in table and all(v in table for v in VARIANTS)
    assert len(table.splitlines()) == 2 + len(records)
    paths = plot(records, tmp_path)
    assert [p.name for p in paths] == ["time.png"]  # no memory figure without memory numbers
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_peak_memory_cpu_in_a_fresh_process():
    # (1, 64, 32, 32): the reference keeps q, k, v of 3*512 channels per pixel, > 6 MB.
    peaks = peak_memory_mb("esa_reference", (1, 64, 32, 32), torch.float32, "cpu")
    assert set(peaks) == {"forward", "forward_backward"}
    assert peaks["forward"] > 1024 * 3 * 512 * 4 / 2**20
    assert peaks["forward_backward"] >= peaks["forward"]


def test_main_writes_json_and_plots(tmp_path, capsys):
    records = main(["--quick", "--shape", "1", "8", "3", "3", "--variants", "esa_reference", "esa_folded",
                    "--no-memory", "--out", str(tmp_path)])
    assert all(isinstance(r, Record) for r in records)
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["dtype"] == "float32" and result["matmul_gflops"] > 0
    assert [r["variant"] for r in result["records"]] == ["esa_reference", "esa_folded"]
    assert (tmp_path / "time.png").exists() and not (tmp_path / "memory.png").exists()
    assert "esa_folded" in capsys.readouterr().out
