"""Benchmark the package's attention layers: ESA's three forms, full attention, and LDNet end to end.

The command line is ``python -m esa_tutorial.bench`` (:mod:`esa_tutorial.bench.__main__`);
this module is the library behind it, also used by chapter 9 (notebooks/09_making_esa_fast.ipynb).

Variants (all with LDNet's heads=8, dim_head=64 and the same weights), each the
package's own module, never a copy of it:

* ``mhsa``: :class:`~esa_tutorial.MHSA`, full self-attention over the H*W
  pixels (skipped where its attention matrix would exceed a limit);
* ``esa_reference``: ``ESA(impl="reference")``, the literal form, the same
  computation as the original post's module;
* ``esa_folded``: ``ESA(impl="folded")``, the package default;
* ``esa_sdpa``: ``ESA(impl="sdpa")``, the literal form with PyTorch's fused
  attention over the 35 pooled tokens.

What is measured, per variant and shape:

* time of the forward pass (under ``torch.no_grad``) and of forward+backward
  (gradients of the input and all parameters), with
  :class:`torch.utils.benchmark.Timer` (``blocked_autorange``; CUDA is
  synchronised by the timer). Variants are timed interleaved and the whole
  round repeated; the fastest round is reported (on a shared machine other
  programs only ever add time, so the fastest round is the least disturbed),
  and every round is kept in the record;
* memory: the bytes autograd saves for the backward pass (any device, exact),
  and on CUDA the peak allocated above what inputs and weights hold;
* floating-point operations, counted by
  :class:`torch.utils.flop_counter.FlopCounterMode` on ``meta`` tensors
  (matrix products only, 2 per multiply-add; the backward pass as executed,
  including the folded form's recomputation);
* the share of the machine's dense matmul rate, measured in the same run.

On top: :func:`speedup_table` (the folded form beside the literal one),
:func:`forward_breakdown` (where the folded forward's time goes) and
:func:`ldnet_training_step` (an LDNet training step with either ESA form).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import platform
import sys
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence, get_args

import torch
from torch import nn
from torch.utils import benchmark
from torch.utils.flop_counter import FlopCounterMode

from ..nn.attention import MHSA
from ..cost import attention_matrix_bytes, saved_for_backward_bytes
from ..nn.esa import ESA
from ..nn import folded

Variant = Literal["mhsa", "esa_reference", "esa_folded", "esa_sdpa"]
VARIANTS: tuple[str, ...] = get_args(Variant)
Mode = Literal["forward", "forward_backward"]
MODES: tuple[str, ...] = get_args(Mode)
# (batch, channels, height, width): LDNet's four ESA stages at 224x224 input, batch 16,
# and the 256x11x11 map of the original post, at batch 16 and at its own batch 1.
LDNET_SHAPES = ((16, 64, 112, 112), (16, 64, 56, 56), (16, 128, 28, 28), (16, 256, 14, 14),
                (1, 256, 11, 11))
QUICK_SHAPES = ((2, 64, 56, 56), (2, 128, 28, 28), (2, 256, 14, 14), (1, 256, 11, 11))
HEADS, DIM_HEAD, TOKENS = 8, 64, 35
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}


def build(variant: Variant, dim: int, dtype: torch.dtype, device: torch.device | str) -> nn.Module:
    """The package's module for one variant, weights seeded identically for all variants."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(0)  # the CPU generator only, restored by fork_rng
        if variant == "mhsa":
            module = MHSA(dim, HEADS, DIM_HEAD)
        else:
            module = ESA(dim, HEADS, DIM_HEAD, impl=variant.removeprefix("esa_"))
    return module.to(device=device, dtype=dtype)


def attention_matrix_gb(variant: Variant, shape: Sequence[int], dtype: torch.dtype) -> float:
    """GB of the (B, heads, N, n_kv) attention matrix the variant's literal form builds (counted on meta)."""
    module = build(variant, shape[1], dtype, "meta")
    return attention_matrix_bytes(module, torch.empty(shape, dtype=dtype, device="meta")) / 1e9


def variant_flops(variant: Variant, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> dict[str, int]:
    """FLOPs of the forward pass and of forward+backward, counted on meta tensors (no arithmetic)."""
    counts = {}
    for mode in MODES:
        module = build(variant, shape[1], dtype, "meta")
        x = torch.empty(shape, dtype=dtype, device="meta", requires_grad=mode != "forward")
        with FlopCounterMode(display=False) as counter:
            run_pass(module, x, mode)
        counts[mode] = counter.get_total_flops()
    return counts


def pixel_product_flops(shape: Sequence[int]) -> int:
    """FLOPs of the folded form's two pixel-side products, ``2 * B*N*C*heads*35 * 2`` (issue 15's share)."""
    b, c, h, w = shape
    return 2 * b * h * w * c * HEADS * TOKENS * 2


def run_pass(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: Mode,
             grad: torch.Tensor | None = None) -> None:
    """One forward pass (no autograd) or one forward+backward pass."""
    if mode == "forward":
        with torch.no_grad():
            f(x)
        return
    out = f(x)
    out.backward(torch.ones_like(out) if grad is None else grad)


def make_inputs(shape: Sequence[int], dtype: torch.dtype, device: torch.device | str,
                mode: Mode) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded input (B, C, H, W) and output gradient (B, H*W, C) on ``device``."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    b, c, h, w = shape
    grad = torch.randn(b, h * w, c, generator=gen).to(device=device, dtype=dtype)
    return x.requires_grad_(mode != "forward"), grad


def time_call(fn: Callable[[], object], min_run_time: float = 0.2, device: torch.device | str = "cpu") -> float:
    """Median seconds of ``fn()``, by ``torch.utils.benchmark.Timer.blocked_autorange``.

    On CUDA the timer synchronises the current device; ``device`` is made
    current while timing, so work on ``cuda:1`` is waited for too.
    """
    device = torch.device(device)
    timer = benchmark.Timer(stmt="fn()", globals=dict(fn=fn), num_threads=torch.get_num_threads())
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        return timer.blocked_autorange(min_run_time=min_run_time).median


def time_once(variant: Variant, shape: Sequence[int], mode: Mode, dtype: torch.dtype,
              device: torch.device | str, min_run_time: float = 0.2) -> float:
    """Median seconds of one pass of one variant."""
    module = build(variant, shape[1], dtype, device)
    x, grad = make_inputs(shape, dtype, device, mode)
    return time_call(lambda: run_pass(module, x, mode, grad), min_run_time, device)


def saved_for_backward_mb(variant: Variant, shape: Sequence[int], dtype: torch.dtype,
                          device: torch.device | str) -> float:
    """MiB that autograd keeps from the forward pass for the backward pass, weights and input left out
    (:func:`esa_tutorial.cost.saved_for_backward_bytes`)."""
    module = build(variant, shape[1], dtype, device)
    x, _ = make_inputs(shape, dtype, device, "forward_backward")
    return saved_for_backward_bytes(module, x, weights_and_input=False) / 2**20


def cuda_peak_mb(variant: Variant, shape: Sequence[int], mode: Mode, dtype: torch.dtype,
                 device: torch.device | str) -> float:
    """Peak CUDA memory (MB) of one pass above what the inputs and weights already hold."""
    module = build(variant, shape[1], dtype, device)
    x, grad = make_inputs(shape, dtype, device, mode)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run_pass(module, x, mode, grad)
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def matmul_gflops(dtype: torch.dtype, device: torch.device | str, size: int = 2048,
                  min_run_time: float = 0.5) -> float:
    """Measured dense matmul throughput (GFLOP/s) of square ``size`` x ``size`` matrices."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=gen).to(device=device, dtype=dtype) for _ in range(2))
    return 2 * size**3 / time_call(lambda: a @ b, min_run_time, device) / 1e9


@dataclass
class Record:
    """One variant at one shape: times (s), memory (MB), FLOPs."""

    variant: str
    shape: tuple[int, ...]
    flops: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    all_seconds: dict[str, list[float]] = field(default_factory=dict)
    saved_mb: float | None = None
    peak_mb: dict[str, float] = field(default_factory=dict)
    skipped: str | None = None

    def gflops_per_s(self, mode: Mode) -> float:
        return self.flops[mode] / self.seconds[mode] / 1e9


def run_benchmark(
    shapes: Sequence[Sequence[int]] = LDNET_SHAPES,
    variants: Sequence[Variant] = VARIANTS,
    modes: Sequence[Mode] = MODES,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    repeats: int = 3,
    min_run_time: float = 0.2,
    memory: bool = True,
    mhsa_limit_gb: float = 2.0,
    progress: Callable[[str], None] | None = None,
) -> list[Record]:
    """Count, time (interleaved, ``repeats`` rounds) and measure every variant at every shape."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    device = torch.device(device)
    records = []
    for shape in shapes:
        row = []
        for variant in variants:
            rec = Record(variant, tuple(shape))
            if variant == "mhsa" and attention_matrix_gb(variant, shape, dtype) > mhsa_limit_gb:
                rec.skipped = f"attention matrix over {mhsa_limit_gb:g} GB"
            else:
                rec.flops = variant_flops(variant, shape, dtype)
            row.append(rec)
        live = [r for r in row if r.skipped is None]
        for _ in range(repeats):
            for mode in modes:
                for rec in live:
                    secs = time_once(rec.variant, shape, mode, dtype, device, min_run_time)
                    rec.all_seconds.setdefault(mode, []).append(secs)
        for rec in live:
            rec.seconds = {m: min(v) for m, v in rec.all_seconds.items()}
            if memory:
                rec.saved_mb = saved_for_backward_mb(rec.variant, shape, dtype, device)
                if device.type == "cuda":
                    rec.peak_mb = {m: cuda_peak_mb(rec.variant, shape, m, dtype, device) for m in modes}
        if progress:
            progress(f"{'x'.join(map(str, shape))} done")
        records.extend(row)
    return records


def speedup_table(records: Sequence[Record], matmul: float, baseline: str = "esa_reference",
                  variant: str = "esa_folded") -> list[dict[str, object]]:
    """Issue 15's table: per shape, the literal form beside ``variant``, measured in the same run.

    ``share`` is the two pixel-side products' FLOPs over the forward time, over
    the measured dense matmul rate ``matmul`` (GFLOP/s). ``share_ceiling`` is
    the share the folded forward would reach if all of its counted FLOPs (the
    pooling and the per-image folding besides the pixel products) ran at
    exactly that rate: the pixel products' part of its FLOPs.
    """
    rows = []
    by_key = {(r.shape, r.variant): r for r in records if r.seconds}
    for shape in dict.fromkeys(r.shape for r in records):
        base, new = by_key.get((shape, baseline)), by_key.get((shape, variant))
        if base is None or new is None:
            continue
        row: dict[str, object] = dict(shape=list(shape))
        for mode in MODES:
            if mode in base.seconds and mode in new.seconds:
                row[f"{baseline}_{mode}_ms"] = 1e3 * base.seconds[mode]
                row[f"{variant}_{mode}_ms"] = 1e3 * new.seconds[mode]
                row[f"speedup_{mode}"] = base.seconds[mode] / new.seconds[mode]
        if "forward" in new.seconds:
            row["share_of_matmul"] = pixel_product_flops(shape) / new.seconds["forward"] / 1e9 / matmul
        if "forward" in new.flops:
            # The share if every counted FLOP (pooling and folding too) ran at the matmul rate.
            row["share_ceiling"] = pixel_product_flops(shape) / new.flops["forward"]
        rows.append(row)
    return rows


def format_speedup_table(rows: Sequence[dict[str, object]]) -> str:
    """Markdown table of :func:`speedup_table` rows."""

    def cell(row: dict[str, object], key: str, fmt: str) -> str:
        return format(row[key], fmt) if key in row else "-"

    def percent(row: dict[str, object], key: str) -> str:
        return f"{100 * row[key]:.0f}%" if key in row else "-"

    lines = ["| map (B, C, H, W) | literal fwd ms | folded fwd ms | speed-up fwd | speed-up fwd+bwd "
             "| share of matmul rate | ceiling |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {'x'.join(map(str, r['shape']))} | {cell(r, 'esa_reference_forward_ms', '.1f')} "
            f"| {cell(r, 'esa_folded_forward_ms', '.1f')} | {cell(r, 'speedup_forward', '.1f')}x "
            f"| {cell(r, 'speedup_forward_backward', '.1f')}x | {percent(r, 'share_of_matmul')} "
            f"| {percent(r, 'share_ceiling')} |"
        )
    return "\n".join(lines)


def format_table(records: Sequence[Record], matmul: float) -> str:
    """A text table of every record: ms, speed-up over the literal form, saved MB, GFLOP/s, share of matmul."""
    head = (f"{'shape':>18s} {'variant':14s} {'fwd ms':>9s} {'x ref':>6s} {'f+b ms':>9s} {'x ref':>6s} "
            f"{'saved MB':>8s} {'GFLOP':>8s} {'GFLOP/s':>8s} {'% mm':>5s}")
    lines = [head, "-" * len(head)]
    refs = {r.shape: r for r in records if r.variant == "esa_reference" and r.seconds}
    for r in records:
        shape = "x".join(map(str, r.shape))
        if r.skipped:
            lines.append(f"{shape:>18s} {r.variant:14s} skipped: {r.skipped}")
            continue
        ref = refs.get(r.shape)
        cells = []
        for mode in MODES:
            if mode in r.seconds:
                ratio = ref.seconds[mode] / r.seconds[mode] if ref and mode in ref.seconds else math.nan
                cells.append(f"{r.seconds[mode] * 1e3:9.1f} {ratio:6.2f}")
            else:
                cells.append(f"{'-':>9s} {'-':>6s}")
        saved = f"{r.saved_mb:8.1f}" if r.saved_mb is not None else f"{'-':>8s}"
        rate = r.gflops_per_s("forward") if "forward" in r.seconds else math.nan
        lines.append(f"{shape:>18s} {r.variant:14s} {cells[0]} {cells[1]} {saved} "
                     f"{r.flops['forward'] / 1e9:8.3f} {rate:8.1f} {100 * rate / matmul:5.0f}")
    return "\n".join(lines)


BREAKDOWN_PARTS = ("pooling + folding", "GEMM1 (scores)", "softmax", "GEMM2 (output)", "overhead")


def forward_breakdown(shape: Sequence[int], dtype: torch.dtype = torch.float32,
                      device: torch.device | str = "cpu", min_run_time: float = 0.2) -> dict[str, float]:
    """Seconds of the folded forward (no_grad) and of its parts, with the package's own blocks.

    The pyramid pooling with the weight folding
    (:meth:`~esa_tutorial.ESA.folded_weights`) is timed on the whole input.
    The three block steps are timed on the first block the package uses
    (:func:`~esa_tutorial.nn.folded.block_shape`), with the package's block
    functions, over and over, so that the block stays in the cache, and scaled
    to all the pixels: the score product, the softmax per head (in place, in base
    2, where :func:`~esa_tutorial.nn.folded.uses_exp2`) and the output product.
    ``overhead`` is the whole forward minus the four parts: what the blocked
    forward pays beyond computing on cached blocks (reading each block of the
    input from memory, writing its output, the Python loop). Returns the parts
    and ``"whole"``.
    """
    device = torch.device(device)
    esa = build("esa_folded", shape[1], dtype, device).eval()
    x, _ = make_inputs(shape, dtype, device, "forward")
    pixels = x.flatten(2)
    with torch.no_grad():
        a, vo = esa.folded_weights(x)
        keys, exp2 = folded.score_keys(a)
        bias = esa.to_out[0].bias
        imgs, px = folded.blocks(shape[0], pixels.shape[-1], device)[0]
        xs, keys, vo = pixels[imgs, :, px], keys[imgs], vo[imgs]
        blocks = pixels[:, 0].numel() / xs[:, 0].numel()  # the block is timed alone and scaled to all the rows
        scores = folded.block_scores(xs, keys)
        probs = folded.block_probabilities(xs, keys, esa.heads, exp2)
        softmax = folded.softmax2_per_head_ if exp2 else folded.softmax_per_head
        parts = {
            "pooling + folding": (lambda: esa.folded_weights(x), 1.0),
            "GEMM1 (scores)": (lambda: folded.block_scores(xs, keys), blocks),
            "softmax": (lambda: softmax(scores, esa.heads), blocks),
            "GEMM2 (output)": (lambda: folded.block_output(probs, vo, bias), blocks),
            "whole": (lambda: esa.forward_folded(x), 1.0),
        }
        # Fastest of three interleaved rounds, as in run_benchmark.
        seconds = {name: math.inf for name in parts}
        for _ in range(3):
            for name, (fn, times) in parts.items():
                seconds[name] = min(seconds[name], times * time_call(fn, min_run_time, device))
    seconds["overhead"] = seconds["whole"] - sum(seconds[p] for p in BREAKDOWN_PARTS[:-1])
    return seconds


LDNET_MODELS = ("paper-sized", "full")


@dataclass
class StepResult:
    """One LDNet training-step measurement: the fastest timed step, and on CUDA the memory peak.

    ``peak_mib``: ``torch.cuda.max_memory_allocated`` over the warm-up and
    timed steps, in MiB: weights, gradients, SGD momentum and activations,
    all that the step needs (``None`` on the CPU). ``reserved_mib``: what
    torch's caching allocator held from the driver at its peak, the number
    closest to what ``nvidia-smi`` shows.
    """

    seconds: float
    peak_mib: float | None = None
    reserved_mib: float | None = None


def ldnet_training_step(impl: Literal["folded", "reference"], batch: int = 16, size: int = 224,
                        device: torch.device | str = "cpu", steps: int = 2,
                        model: Literal["paper-sized", "full"] = "paper-sized",
                        amp: str | None = None) -> StepResult:
    """Time one LDNet training step (forward, loss, backward, SGD step) with ESA's ``impl`` form.

    ``model="paper-sized"``: :meth:`LDNet.paper_sized() <esa_tutorial.LDNet.paper_sized>`
    (width 64, 8 heads of 64, the small encoder); ``model="full"``:
    :meth:`LDNet.full() <esa_tutorial.LDNet.full>` (the same on LDNet's
    Res2Net-50 encoder, 33.4 M parameters). On ``batch`` random images
    (B, 3, ``size``, ``size``) with random masks; every ESA layer set to
    ``impl``. The steps go through the package's one training loop,
    :func:`~esa_tutorial.train.fit`, with LDNet's loss (deep supervision,
    bilinear targets), SGD with momentum and, on CUDA, ``amp`` (``"fp16"``
    with a gradient scaler, or ``"bf16"``). One warm-up step, then the
    fastest of ``steps``.
    """
    from ..nn.ldnet import LDNet  # LDNet pulls in the whole network; only this function needs it
    from ..train.fitting import fit
    from ..train.loop import check_device
    from ..train.losses import deep_supervision_loss

    if model not in LDNET_MODELS:
        raise ValueError(f"model must be one of {LDNET_MODELS}, got {model!r}")
    device = check_device(device, amp)  # the training command's rule: amp needs CUDA
    build = LDNet.full if model == "full" else LDNet.paper_sized
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(0)  # the CPU generator only, restored by fork_rng
        net = build(attention="esa").to(device).train()
    for module in net.modules():
        if isinstance(module, ESA):
            module.impl = impl
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=gen).to(device)
    masks = (torch.rand(batch, 1, size, size, generator=gen) > 0.7).float().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    record = fit(net, itertools.repeat((images, masks), steps + 1),
                 lambda outputs, target: deep_supervision_loss(outputs, target, resize="bilinear"),
                 optimizer, device=device, amp=amp, scaler=scaler)
    result = StepResult(min(record.seconds[1:]))
    if device.type == "cuda":
        result.peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
        result.reserved_mib = torch.cuda.max_memory_reserved(device) / 2**20
    return result


def esa_share_of_step(shapes: Sequence[Sequence[int]], step_seconds: float, dtype: torch.dtype,
                      device: torch.device | str, min_run_time: float = 0.2) -> float:
    """Share of a training step that the folded ESA layers take: their forward+backward at ``shapes``, summed."""
    esa_seconds = sum(time_once("esa_folded", s, "forward_backward", dtype, device, min_run_time)
                      for s in shapes)
    return esa_seconds / step_seconds


def machine() -> dict[str, object]:
    """What the numbers were measured on, and how busy the machine was (load average)."""
    info: dict[str, object] = dict(torch=torch.__version__, python=platform.python_version(),
                                   cpu=platform.processor() or platform.machine(),
                                   cpu_count=os.cpu_count(), threads=torch.get_num_threads())
    if hasattr(os, "getloadavg"):
        info["load_average_1_5_15"] = [round(v, 2) for v in os.getloadavg()]
    # Precision settings change speed and results: TF32 (Ampere and newer) for matmuls and for cuDNN's
    # convolutions, and float32 matmul precision ("highest", "high", "medium") on any device.
    info["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    info["cuda_matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def log(message: str) -> None:
    """Progress to stdout, flushed (a notebook shows it as normal output)."""
    print(message, file=sys.stdout, flush=True)
