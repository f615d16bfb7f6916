"""Benchmark ESA's two forms against full attention and PyTorch's fused attention.

    python -m esa_tutorial.bench                 # LDNet's shapes at 224x224, batch 16
    python -m esa_tutorial.bench --quick         # small batch, a minute on 2 CPU cores
    python -m esa_tutorial.bench --dtype bfloat16 --out bench_results/bf16

Variants (all with LDNet's heads=8, dim_head=64 and the same weights):

* ``mhsa``: full self-attention over the H*W pixels (skipped where its
  attention matrix would exceed ``--mhsa-limit-gb``);
* ``esa_reference``: ESA's literal form: project every pixel, pool, attend, project;
* ``esa_folded``: ESA's folded form (the package default);
* ``esa_sdpa``: the literal form with ``F.scaled_dot_product_attention`` over
  ESA's 35 pooled keys and values: what PyTorch's fused kernel gives.

What is measured, per variant and shape:

* time of the forward pass (under ``torch.no_grad``) and of forward+backward
  (gradients of the input and all parameters), with
  :class:`torch.utils.benchmark.Timer` (``blocked_autorange``; CUDA
  synchronisation is done by the timer). Variants are timed interleaved and
  the whole round repeated ``--repeats`` times; the median is reported, so that
  a slow spell of a shared machine hits all variants alike;
* peak memory. CUDA: ``torch.cuda.max_memory_allocated`` above what the
  inputs and weights already hold. CPU (Linux): each variant runs in a fresh
  Python process, which resets its peak resident set size (``VmHWM``, via
  ``/proc/self/clear_refs``) just before a pass and reports the peak minus
  the resident size just before it. This counts what the pass really
  touched, allocator slack included, and nothing from other variants. One
  warm-up pass of each kind runs first, so thread pools and other one-off
  set-up are not counted, and glibc's mmap threshold is fixed so freed
  blocks go back to the system instead of hiding the next pass's peak;
* floating-point operations, counted by
  :class:`torch.utils.flop_counter.FlopCounterMode` on ``meta`` tensors
  (matrix products only, 2 per multiply-add; the backward pass as executed,
  including the folded form's recomputation);
* achieved GFLOP/s, also as a share of this machine's dense float matmul
  throughput, measured by the benchmark itself on square matrices (before
  and after the runs, the higher kept).

Results go to ``<out>/bench.json``, ``<out>/time.png`` and ``<out>/memory.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch.utils import benchmark
from torch.utils.flop_counter import FlopCounterMode

from .attention import MHSA, PixelAttention
from .esa import ESA
from .runtime import resolve_device

VARIANTS = ("mhsa", "esa_reference", "esa_folded", "esa_sdpa")
# (batch, channels, height, width): LDNet's four ESA stages at 224x224 input, batch 16,
# and the 256x11x11 map of the original post.
LDNET_SHAPES = ((16, 64, 112, 112), (16, 64, 56, 56), (16, 128, 28, 28), (16, 256, 14, 14), (16, 256, 11, 11))
QUICK_SHAPES = ((2, 64, 56, 56), (2, 128, 28, 28), (2, 256, 14, 14), (2, 256, 11, 11))
HEADS, DIM_HEAD = 8, 64
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


def esa_sdpa(module: ESA, x: torch.Tensor) -> torch.Tensor:
    """ESA's literal form with PyTorch's fused attention over the pooled tokens. (B, C, H, W) -> (B, H*W, C)."""
    module.check_input(x)
    q, k, v = module.to_qkv(x).chunk(3, dim=1)
    q = rearrange(q, "b (h d) x y -> b h (x y) d", h=module.heads)
    k, v = (rearrange(module.ppm(t), "b (h d) n -> b h n d", h=module.heads) for t in (k, v))
    out = F.scaled_dot_product_attention(q, k, v)  # its default scale is dim_head**-0.5, as ESA's
    return module.to_out(rearrange(out, "b h n d -> b n (h d)"))


def build(variant: str, dim: int, dtype: torch.dtype, device: torch.device | str) -> Callable:
    """A module-like callable ``f(x)`` for one variant, weights seeded identically for all variants."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    torch.manual_seed(0)
    cls = MHSA if variant == "mhsa" else ESA
    module = cls(dim, HEADS, DIM_HEAD).to(device=device, dtype=dtype)
    if variant == "esa_reference":
        module.impl = "reference"
    if variant == "esa_sdpa":
        return lambda x: esa_sdpa(module, x)
    return module


def attention_matrix_gb(variant: str, shape: Sequence[int], dtype: torch.dtype) -> float:
    """GB of the (B, heads, N, n_kv) attention matrix a variant's literal form builds."""
    b, _, h, w = shape
    n_kv = h * w if variant == "mhsa" else 35
    return b * HEADS * h * w * n_kv * torch.empty((), dtype=dtype).element_size() / 1e9


def count_flops(variant: str, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> dict[str, int]:
    """FLOPs of the forward pass and of forward+backward, counted on meta tensors (no arithmetic)."""
    counts = {}
    for mode in ("forward", "forward_backward"):
        f = build(variant, shape[1], dtype, "meta")
        x = torch.empty(shape, dtype=dtype, device="meta", requires_grad=mode != "forward")
        with FlopCounterMode(display=False) as counter:
            _run(f, x, mode)
        counts[mode] = counter.get_total_flops()
    return counts


def _run(f: Callable, x: torch.Tensor, mode: str, grad: torch.Tensor | None = None) -> None:
    """One forward pass (no autograd) or one forward+backward pass."""
    if mode == "forward":
        with torch.no_grad():
            f(x)
        return
    out = f(x)
    out.backward(torch.ones_like(out) if grad is None else grad)


def _inputs(shape: Sequence[int], dtype: torch.dtype, device: torch.device | str, mode: str):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    b, c, h, w = shape
    grad = torch.randn(b, h * w, c, generator=gen).to(device=device, dtype=dtype)
    return x.requires_grad_(mode != "forward"), grad


def time_once(variant: str, shape: Sequence[int], mode: str, dtype: torch.dtype,
              device: torch.device | str, min_run_time: float = 0.2) -> float:
    """Median seconds of one pass, by ``torch.utils.benchmark.Timer.blocked_autorange``."""
    f = build(variant, shape[1], dtype, device)
    x, grad = _inputs(shape, dtype, device, mode)
    timer = benchmark.Timer(stmt="run(f, x, mode, grad)",
                            globals=dict(run=_run, f=f, x=x, mode=mode, grad=grad),
                            num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def peak_memory_mb(variant: str, shape: Sequence[int], dtype: torch.dtype,
                   device: torch.device | str) -> dict[str, float]:
    """Peak extra memory (MB) of a forward and of a forward+backward pass; method in the module docstring."""
    return peak_memory_many([(variant, shape)], dtype, device)[0]


def peak_memory_many(cases: Sequence[tuple[str, Sequence[int]]], dtype: torch.dtype,
                     device: torch.device | str) -> list[dict[str, float]]:
    """:func:`peak_memory_mb` for several (variant, shape) cases; on the CPU in one fresh process."""
    device = torch.device(device)
    if device.type == "cuda":
        results = []
        for variant, shape in cases:
            peaks = {}
            for mode in ("forward", "forward_backward"):
                f = build(variant, shape[1], dtype, device)
                x, grad = _inputs(shape, dtype, device, mode)
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
                _run(f, x, mode, grad)
                torch.cuda.synchronize(device)
                peaks[mode] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
            results.append(peaks)
        return results
    spec = dict(dtype=str(dtype).removeprefix("torch."), cases=[[v, list(s)] for v, s in cases])
    cmd = [sys.executable, "-m", "esa_tutorial.bench", "--probe-memory", json.dumps(spec)]
    # A fixed mmap threshold makes glibc return every large block to the system when it is freed,
    # so the warm-up pass cannot leave reusable memory behind that would hide the measured peak.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _rss_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0). ru_maxrss cannot be
    # reset and even carries the parent's peak across fork+exec, so it is not used.
    Path("/proc/self/clear_refs").write_text("5")


def _probe_memory(spec: str) -> None:
    """Child process of :func:`peak_memory_many` on the CPU: print peak-RSS increases (MB) as JSON."""
    args = json.loads(spec)
    dtype, modes, results = DTYPES[args["dtype"]], ("forward", "forward_backward"), []
    for variant, shape in args["cases"]:
        f = build(variant, shape[1], dtype, "cpu")
        for mode in modes:  # warm-up: thread pools, autograd engine and other one-off set-up
            x, grad = _inputs(shape, dtype, "cpu", mode)
            _run(f, x, mode, grad)
        peaks = {}
        for mode in modes:
            x, grad = _inputs(shape, dtype, "cpu", mode)
            _reset_peak_rss()
            before = _rss_mb("VmRSS")
            _run(f, x, mode, grad)
            peaks[mode] = _rss_mb("VmHWM") - before
        del f, x, grad
        results.append(peaks)
    print(json.dumps(results))


def matmul_gflops(dtype: torch.dtype, device: torch.device | str, size: int = 2048,
                  min_run_time: float = 0.5) -> float:
    """Measured dense matmul throughput (GFLOP/s) of square ``size`` x ``size`` matrices."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    timer = benchmark.Timer(stmt="a @ b", globals=dict(a=a, b=b), num_threads=torch.get_num_threads())
    return 2 * size**3 / timer.blocked_autorange(min_run_time=min_run_time).median / 1e9


@dataclass
class Record:
    """One variant at one shape: times (s), peak memory (MB), FLOPs, throughput."""

    variant: str
    shape: tuple[int, ...]
    flops: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    all_seconds: dict[str, list[float]] = field(default_factory=dict)
    peak_mb: dict[str, float] = field(default_factory=dict)
    skipped: str | None = None

    def gflops_per_s(self, mode: str) -> float:
        return self.flops[mode] / self.seconds[mode] / 1e9


def run_benchmark(
    shapes: Sequence[Sequence[int]] = LDNET_SHAPES,
    variants: Sequence[str] = VARIANTS,
    modes: Sequence[str] = ("forward", "forward_backward"),
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    repeats: int = 3,
    min_run_time: float = 0.2,
    memory: bool = True,
    mhsa_limit_gb: float = 2.0,
    progress: bool = False,
) -> list[Record]:
    """Count, time (interleaved, ``repeats`` rounds) and measure every variant at every shape."""
    device = resolve_device(device)
    records = []
    for shape in shapes:
        row = []
        for variant in variants:
            rec = Record(variant, tuple(shape))
            if variant == "mhsa" and attention_matrix_gb(variant, shape, dtype) > mhsa_limit_gb:
                rec.skipped = f"attention matrix over {mhsa_limit_gb} GB"
            else:
                rec.flops = count_flops(variant, shape, dtype)
            row.append(rec)
        live = [r for r in row if r.skipped is None]
        for _ in range(repeats):
            for mode in modes:
                for rec in live:
                    secs = time_once(rec.variant, shape, mode, dtype, device, min_run_time)
                    rec.all_seconds.setdefault(mode, []).append(secs)
        for rec in live:
            rec.seconds = {m: statistics.median(v) for m, v in rec.all_seconds.items()}
        if memory and live:
            peaks = peak_memory_many([(r.variant, shape) for r in live], dtype, device)
            for rec, peak in zip(live, peaks):
                rec.peak_mb = peak
        if progress:
            print(f"  {tuple(shape)} done", file=sys.stderr, flush=True)
        records.extend(row)
    return records


def format_table(records: Sequence[Record], matmul: float) -> str:
    """A text table: ms, speed-up over the reference, peak MB, GFLOP/s and share of matmul throughput."""
    head = (f"{'shape':>18s} {'variant':14s} {'fwd ms':>9s} {'x ref':>6s} {'f+b ms':>9s} {'x ref':>6s} "
            f"{'fwd MB':>8s} {'f+b MB':>8s} {'GFLOP':>7s} {'GFLOP/s':>8s} {'% mm':>5s}")
    lines = [head, "-" * len(head)]
    refs = {r.shape: r for r in records if r.variant == "esa_reference" and r.seconds}
    for r in records:
        shape = "x".join(map(str, r.shape))
        if r.skipped:
            lines.append(f"{shape:>18s} {r.variant:14s} skipped: {r.skipped}")
            continue
        ref = refs.get(r.shape)
        cells = []
        for mode in ("forward", "forward_backward"):
            if mode in r.seconds:
                ratio = ref.seconds[mode] / r.seconds[mode] if ref and mode in ref.seconds else float("nan")
                cells.append(f"{r.seconds[mode] * 1e3:9.1f} {ratio:6.2f}")
            else:
                cells.append(f"{'-':>9s} {'-':>6s}")
        mem = [f"{r.peak_mb[m]:8.0f}" if m in r.peak_mb else f"{'-':>8s}" for m in ("forward", "forward_backward")]
        rate = r.gflops_per_s("forward") if "forward" in r.seconds else float("nan")
        lines.append(f"{shape:>18s} {r.variant:14s} {cells[0]} {cells[1]} {mem[0]} {mem[1]} "
                     f"{r.flops['forward'] / 1e9:7.2f} {rate:8.1f} {100 * rate / matmul:5.0f}")
    return "\n".join(lines)


def plot(records: Sequence[Record], out_dir: Path) -> list[Path]:
    """Bar charts of time and peak memory (where measured) per shape and variant, log scale. Returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r.shape for r in records))
    variants = list(dict.fromkeys(r.variant for r in records))
    paths = []
    for name, key, unit in (("time", "seconds", "ms"), ("memory", "peak_mb", "MB")):
        if not any(getattr(r, key) for r in records):
            continue  # e.g. memory not measured
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
        for ax, mode in zip(axes, ("forward", "forward_backward")):
            width = 0.8 / len(variants)
            for i, v in enumerate(variants):
                vals = []
                for s in shapes:
                    rec = next(r for r in records if r.shape == s and r.variant == v)
                    val = getattr(rec, key).get(mode, float("nan"))
                    vals.append(val * 1e3 if key == "seconds" else val)
                ax.bar([j + i * width for j in range(len(shapes))], vals, width, label=v)
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))])
            ax.set_xticklabels(["x".join(map(str, s[1:])) for s in shapes], rotation=20)
            ax.set_yscale("log")
            ax.set_title(mode.replace("_", "+"))
            ax.set_ylabel(unit)
        axes[0].legend()
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    info: dict[str, object] = dict(torch=torch.__version__, python=platform.python_version(),
                                   cpu=platform.processor() or platform.machine(),
                                   threads=torch.get_num_threads())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv: Sequence[str] | None = None) -> list[Record]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 2, fewer rounds: about a minute on 2 cores")
    parser.add_argument("--shape", nargs=4, type=int, action="append", metavar=("B", "C", "H", "W"),
                        help="benchmark this shape instead (repeatable)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=None, help="interleaved timing rounds")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--mhsa-limit-gb", type=float, default=None,
                        help="skip MHSA where its attention matrix is larger (default 2, --quick 0.1)")
    parser.add_argument("--out", type=Path, default=Path("bench_results"))
    parser.add_argument("--probe-memory", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe_memory:
        _probe_memory(args.probe_memory)
        return []
    dtype = DTYPES[args.dtype]
    device = resolve_device(args.device)
    shapes = args.shape or (QUICK_SHAPES if args.quick else LDNET_SHAPES)
    repeats = args.repeats or (1 if args.quick else 3)
    min_run_time = 0.05 if args.quick else 0.2
    mm_size = 1024 if args.quick else 2048
    matmul = matmul_gflops(dtype, device, size=mm_size)
    records = run_benchmark(shapes, args.variants, dtype=dtype, device=device, repeats=repeats,
                            min_run_time=min_run_time, memory=not args.no_memory,
                            mhsa_limit_gb=args.mhsa_limit_gb or (0.1 if args.quick else 2.0), progress=True)
    # Measured again at the end and the better kept: a busy spell must not inflate the shares.
    matmul = max(matmul, matmul_gflops(dtype, device, size=mm_size))
    print(f"device {device}, {args.dtype}, dense matmul {matmul:.1f} GFLOP/s")
    print(format_table(records, matmul))
    args.out.mkdir(parents=True, exist_ok=True)
    result = dict(machine=machine(), device=str(device), dtype=args.dtype, matmul_gflops=matmul,
                  records=[asdict(r) for r in records])
    (args.out / "bench.json").write_text(json.dumps(result, indent=1))
    for path in plot(records, args.out):
        print(f"wrote {path}")
    print(f"wrote {args.out / 'bench.json'}")
    return records


if __name__ == "__main__":
    main()
