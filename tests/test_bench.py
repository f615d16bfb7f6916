"""The benchmark's pieces on tiny shapes: FLOP counts against formulas, well-formed records and files.

No timing is asserted: only that times are measured, recorded and reported.
"""

import json

import pytest
import torch

from esa_tutorial import ESA, folded
from esa_tutorial.bench import (
    BREAKDOWN_PARTS, DIM_HEAD, HEADS, LDNET_SHAPES, VARIANTS, Record, attention_matrix_gb, build, format_speedup_table,
    StepResult, format_table, forward_breakdown, ldnet_training_step, pixel_product_flops, run_benchmark,
    saved_for_backward_mb, speedup_table, variant_flops,
)
from esa_tutorial.bench.__main__ import main
from esa_tutorial.book.plotting import plot_shares, plot_times as plot

count_flops = variant_flops

SHAPE = (2, 8, 5, 6)  # batch, channels, height, width


def formula_flops(variant: str, shape) -> dict[str, int]:
    """FLOPs of the matrix products, 2 per multiply-add, written out by hand."""
    b, c, h, w = shape
    n, inner, m = h * w, HEADS * DIM_HEAD, HEADS * 35
    if variant == "esa_folded":
        pixels = 2 * b * n * c * m  # one (N, C) @ (C, heads*35) product per image
        weights = 2 * b * inner * c * 35  # one small product making a, vo (4 of them)
        pooling = 2 * b * c * (9 * n + 9 * 9 * w)  # rows of all 1+3+5 bins, then their columns
        # backward: recompute the scores, then d(vo), d(probs), d(a), d(x): 5 pixel products;
        # each small product has two operands needing gradients: 8. (The hand-written backward
        # recomputes rather than stores the probabilities, hence 5 and not 4.) The pooling
        # matrices are constants: one gradient product per pooling product.
        return {"forward": 2 * pixels + 4 * weights + pooling,
                "forward_backward": 7 * pixels + 12 * weights + 2 * pooling}
    n_kv = n if variant == "mhsa" else 35
    forward = 2 * b * n * c * 3 * inner + 2 * 2 * b * n * inner * n_kv + 2 * b * n * inner * c
    return {"forward": forward, "forward_backward": 3 * forward}  # every product: 2 more in backward


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", [SHAPE, (1, 16, 6, 7)])
def test_flop_counts_match_formula(variant, shape):
    assert count_flops(variant, shape) == formula_flops(variant, shape)


def test_folded_saves_flops_at_ldnet_first_stage():
    shape = (16, 64, 112, 112)  # counted on meta tensors: no memory, no arithmetic
    ref, fold = count_flops("esa_reference", shape), count_flops("esa_folded", shape)
    assert ref == formula_flops("esa_reference", shape)
    assert fold == formula_flops("esa_folded", shape)
    assert ref["forward"] > 4 * fold["forward"]
    assert fold["forward_backward"] < ref["forward_backward"] / 3


def test_build_rejects_unknown_variant():
    with pytest.raises(ValueError, match="variant must be one of .* got 'flash'"):
        build("flash", 8, torch.float32, "cpu")


def test_variants_are_the_package_modules_and_compute_the_same_function():
    x = torch.randn(SHAPE)
    modules = {v: build(v, SHAPE[1], torch.float32, "cpu") for v in ("esa_reference", "esa_folded", "esa_sdpa")}
    assert {v: (type(m), m.impl) for v, m in modules.items()} == {
        "esa_reference": (ESA, "reference"), "esa_folded": (ESA, "folded"), "esa_sdpa": (ESA, "sdpa")}
    outs = {v: m(x) for v, m in modules.items()}
    for v in ("esa_folded", "esa_sdpa"):
        torch.testing.assert_close(outs[v], outs["esa_reference"], rtol=1e-4, atol=1e-5)


def test_attention_matrix_size():
    b, c, h, w = 16, 64, 112, 112
    assert attention_matrix_gb("mhsa", (b, c, h, w), torch.float32) == pytest.approx(b * 8 * (h * w) ** 2 * 4 / 1e9)
    assert attention_matrix_gb("esa_reference", (b, c, h, w), torch.bfloat16) == pytest.approx(b * 8 * h * w * 35 * 2 / 1e9)


def test_run_benchmark_records_are_well_formed(tmp_path):
    variants = ["mhsa", "esa_reference", "esa_folded"]
    records = run_benchmark([SHAPE], variants, repeats=2, min_run_time=0.001, memory=True, mhsa_limit_gb=1e-9,
                            device="cpu")
    assert [r.variant for r in records] == variants
    mhsa, *esa = records
    assert mhsa.skipped and not mhsa.seconds and not mhsa.flops
    for r in esa:
        assert r.skipped is None and r.shape == SHAPE
        assert r.flops == formula_flops(r.variant, SHAPE)
        assert set(r.seconds) == {"forward", "forward_backward"}
        assert all(len(v) == 2 and min(v) > 0 for v in r.all_seconds.values())
        assert r.seconds == {m: min(v) for m, v in r.all_seconds.items()}  # the least disturbed round
        assert r.gflops_per_s("forward") == pytest.approx(r.flops["forward"] / r.seconds["forward"] / 1e9)
        assert r.saved_mb > 0 and r.peak_mb == {}  # peak memory only on CUDA
    table = format_table(records, matmul=10.0)
    assert "skipped" in table and all(v in table for v in variants)
    assert len(table.splitlines()) == 2 + len(records)
    (row,) = speedup_table(records, matmul=10.0)
    ref, fold = records[1], records[2]
    assert row["speedup_forward"] == ref.seconds["forward"] / fold.seconds["forward"]
    assert row["share_of_matmul"] == pixel_product_flops(SHAPE) / fold.seconds["forward"] / 1e9 / 10.0
    # The ceiling: the pixel products' part of the folded forward's FLOPs, by the hand formula.
    b, c, h, w = SHAPE
    pixels, folding = 2 * b * h * w * c * 280 * 2, 4 * 2 * b * 512 * c * 35
    pooling = 2 * b * c * (9 * h * w + 81 * w)
    assert row["share_ceiling"] == pytest.approx(pixels / (pixels + folding + pooling), rel=1e-12)
    assert format_speedup_table([row]).count("\n") == 2
    ax = plot_shares([row, {"shape": [1, 2, 3, 4]}])  # a row without shares is left out
    heights = sorted(round(p.get_height(), 9) for p in ax.patches)
    assert heights == sorted([round(100 * row["share_ceiling"], 9), round(100 * row["share_of_matmul"], 9)])
    paths = plot(records, tmp_path)
    assert [p.name for p in paths] == ["time.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_saved_for_backward_folded_keeps_no_scores():
    # (1, 64, 32, 32): the literal form keeps q (512 channels per pixel) and its (8, 1024, 35) attention;
    # the folded form keeps x, a and vo only: no (N, 280) scores or probabilities.
    shape = (1, 64, 32, 32)
    ref = saved_for_backward_mb("esa_reference", shape, torch.float32, "cpu")
    fold = saved_for_backward_mb("esa_folded", shape, torch.float32, "cpu")
    assert ref > 1024 * 512 * 4 / 2**20
    assert fold < 1024 * 280 * 4 / 2**20
    assert fold < ref / 10


def test_forward_breakdown_times_the_pieces_the_forward_runs():
    """The timed block functions, run over every block, give the folded forward's output."""
    shape = (2, 16, 12, 12)
    parts = forward_breakdown(shape, min_run_time=0.001)
    assert set(parts) == set(BREAKDOWN_PARTS) | {"whole"}
    assert all(parts[p] > 0 for p in BREAKDOWN_PARTS[:-1])
    torch.manual_seed(0)
    esa = ESA(16, heads=2, dim_head=8).eval()
    x = torch.randn(shape)
    pixels = x.flatten(2)
    with torch.no_grad():
        a, vo = esa.folded_weights(x)
        keys, exp2 = folded.score_keys(a)
        out = torch.empty(shape[0], pixels.shape[-1], 16)
        for imgs, px in folded.blocks(shape[0], pixels.shape[-1], x.device, rows=50):  # several blocks
            p = folded.block_probabilities(pixels[imgs, :, px], keys[imgs], esa.heads, exp2)
            out[imgs, px] = folded.block_output(p, vo[imgs], esa.to_out[0].bias)
        torch.testing.assert_close(out, esa.forward_folded(x), rtol=1e-5, atol=1e-6)
        esa.impl = "reference"
        torch.testing.assert_close(out, esa(x), rtol=1e-4, atol=1e-5)


def test_main_writes_json_and_plots(tmp_path, capsys):
    records = main(["--quick", "--shape", "1", "8", "3", "3", "--variants", "esa_reference", "esa_folded",
                    "--no-memory", "--device", "cpu", "--out", str(tmp_path)])
    assert all(isinstance(r, Record) for r in records)
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["dtype"] == "float32" and result["matmul_gflops"] > 0
    assert [r["variant"] for r in result["records"]] == ["esa_reference", "esa_folded"]
    assert result["speedup"][0]["shape"] == [1, 8, 3, 3]
    assert "load_average_1_5_15" in result["machine"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "time.png"]  # no temporary files left
    assert "esa_folded" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--device", "meta"], "--device must be cpu or cuda"),
    (["--device", "nonexistent"], "--device"),
    (["--repeats", "0"], "--repeats: must be an integer from 1 to 100000, got 0"),
    (["--repeats", "-2"], "--repeats: must be an integer from 1 to 100000, got -2"),
    (["--mhsa-limit-gb", "0"], "--mhsa-limit-gb: must be a finite number in (0, 1e+06], got 0"),
    (["--mhsa-limit-gb", "nan"], "--mhsa-limit-gb: must be a finite number in (0, 1e+06], got nan"),
    (["--min-run-time", "inf"], "--min-run-time: must be a finite number in (0, 1e+06], got inf"),
    (["--min-run-time", "1e308"], "--min-run-time: must be a finite number in (0, 1e+06], got 1e308"),
    (["--shape", "1", "8", "0", "3"], "--shape: must be an integer from 1 to 100000, got 0"),
    (["--shape", "99999999999999999999", "8", "3", "3"], "--shape: must be an integer from 1 to 100000"),
    (["--repeats", "1e5"], "--repeats: must be a whole number, got '1e5'"),
    (["--ldnet-step", "--ldnet-size", "100"], "--ldnet-size must be a multiple of 32, got 100"),
])
def test_bad_options_are_rejected_before_any_work(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_unwritable_out_is_rejected_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    for out in (a_file, a_file / "below"):
        with pytest.raises(SystemExit):
            main(["--quick", "--device", "cpu", "--out", str(out)])
        assert "is not a writable directory" in capsys.readouterr().err
    assert a_file.read_text() == "not a directory"


def test_shipped_results_load_and_describe():
    from esa_tutorial.bench import results

    assert "cpu" in results.available()
    run = results.load("cpu")
    assert [r["shape"] for r in run["speedup"]] == [list(s) for s in LDNET_SHAPES]
    for row in run["speedup"]:  # the table chapter 7 prints is consistent with the records it came from
        ref = next(r for r in run["records"] if r["shape"] == row["shape"] and r["variant"] == "esa_reference")
        assert row["esa_reference_forward_ms"] == pytest.approx(1e3 * ref["seconds"]["forward"])
    assert results.describe(run).startswith("cpu (")
    assert "GEMM1 (scores)" in results.describe_breakdown(run)
    assert "batch 16 at 224x224" in results.describe_ldnet_step(run)
    # the shipped stand-in run (from before --model) is labelled as what it timed
    assert "of the paper-sized stand-in (small encoder)" in results.describe_ldnet_step(results.load("cpu"))
    full = results.describe_ldnet_step(results.load("cpu-full"))
    assert "of the full network (Res2Net-50)" in full and "batch 16 at 224x224" in full
    with pytest.raises(FileNotFoundError, match="no shipped benchmark result 'tpu'"):
        results.load("tpu")


def test_softmax_costs_time_every_operation_on_a_small_block():
    from esa_tutorial.bench.softmax import SOFTMAX_COSTS, format_softmax_costs, softmax_costs

    costs = softmax_costs(batch=2, pixels=8, min_run_time=0.01)
    assert list(costs) == [name for name, _ in SOFTMAX_COSTS]
    assert all(ns >= 0 and ns == ns for ns in costs.values())  # measured, finite, not NaN
    assert costs["copy"] > 0
    lines = format_softmax_costs(costs).splitlines()
    assert len(lines) == len(SOFTMAX_COSTS) and all("ns per score" in line for line in lines)


@pytest.mark.slow
def test_ldnet_step_times_the_full_network():
    """ldnet_training_step(model="full") builds LDNet.full() (Res2Net-50) and times its step; one thread, tiny input."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two busy cores: OpenMP threads waiting on each other cost far more than they gain
    try:
        step = ldnet_training_step("folded", batch=2, size=32, device="cpu", steps=1, model="full")
    finally:
        torch.set_num_threads(threads)
    assert step.seconds > 0 and step.peak_mib is None and step.reserved_mib is None  # no CUDA peak on the CPU
    with pytest.raises(ValueError, match="model must be one of"):
        ldnet_training_step("folded", 1, 32, "cpu", 1, model="res2net")
    with pytest.raises(ValueError, match="amp='fp16' .mixed precision. needs a CUDA device, got 'cpu'"):
        ldnet_training_step("folded", 1, 32, "cpu", 1, model="full", amp="fp16")


@pytest.mark.slow
def test_ldnet_step_option_model_reaches_the_step(tmp_path, capsys, monkeypatch):
    """--model full is passed to every timed step and recorded (the steps themselves are stubbed: see above)."""
    import esa_tutorial.bench.__main__ as cli

    calls = []
    monkeypatch.setattr(cli, "ldnet_training_step",
                        lambda impl, *args: calls.append((impl, *args)) or StepResult(2.0 if impl == "reference" else 1.0))
    main(["--quick", "--shape", "1", "8", "3", "3", "--variants", "esa_folded", "--no-memory", "--device", "cpu",
          "--ldnet-step", "--model", "full", "--ldnet-batch", "2", "--ldnet-size", "64", "--ldnet-steps", "1",
          "--min-run-time", "0.01", "--out", str(tmp_path)])
    assert [c[0] for c in calls] == ["reference", "folded"] and all(c[-2:] == ("full", None) for c in calls)
    step = json.loads((tmp_path / "bench.json").read_text())["ldnet_step"]
    assert step["model"] == "full" and step["batch"] == 2 and step["size"] == 64 and step["amp"] is None
    assert step["seconds"] == {"reference": 2.0, "folded": 1.0} and "peak_mib" not in step  # no peak on the CPU
    assert ("LDNet training step of the full network (Res2Net-50), batch 2 at 64x64: literal ESA 2.00 s, "
            "folded ESA 1.00 s (2.00x)") in capsys.readouterr().out
    from esa_tutorial.bench import results

    assert "of the full network (Res2Net-50)" in results.describe_ldnet_step({"ldnet_step": step})
    with pytest.raises(SystemExit):
        main(["--ldnet-step", "--model", "tiny", "--out", str(tmp_path)])
    assert "invalid choice: 'tiny'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--ldnet-step", "--amp", "fp16", "--device", "cpu", "--out", str(tmp_path)])
    assert "--amp fp16 (mixed precision) needs a CUDA device, got cpu" in capsys.readouterr().err
