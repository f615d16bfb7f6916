"""``python -m esa_tutorial.bench``: time, FLOPs and memory of the package's attention layers.

    python -m esa_tutorial.bench                 # LDNet's shapes at 224x224, batch 16
    python -m esa_tutorial.bench --quick         # batch 2, one round (how long: see --quick)
    python -m esa_tutorial.bench --ldnet-step --breakdown --out bench_results/cpu
    python -m esa_tutorial.bench --ldnet-step --model full --out bench_results/full   # LDNet on Res2Net-50
    python -m esa_tutorial.bench --against-ldnet PATH --device cpu   # beside LDNet's own code (a clone)

Prints the speed-up of the folded form over the literal form (the table of
chapter 9, "Making ESA fast") and every variant's numbers; writes ``<out>/bench.json`` and ``<out>/time.png``. All
options are checked before any work starts; files are written atomically.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch

from ..book.plotting import plot_times
from ..files import write_json
from ..runtime import resolve_device
from ..train.fitting import AMP_TORCH_DTYPES
from .against_ldnet import check_clone, forward_side_by_side
from .results import describe_against_ldnet, describe_ldnet_step
from . import (
    DTYPES, LDNET_MODELS, LDNET_SHAPES, QUICK_SHAPES, VARIANTS, Record, esa_share_of_step, format_speedup_table,
    format_table, forward_breakdown, ldnet_training_step, log, machine, matmul_gflops,
    run_benchmark, speedup_table,
)


MAX_INT, MAX_FLOAT = 100_000, 1e6  # far beyond any benchmark here; 10**20 would overflow inside torch


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if not 1 <= value <= MAX_INT:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {MAX_INT}, got {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value) or not 0 < value <= MAX_FLOAT:
        raise argparse.ArgumentTypeError(f"must be a finite number in (0, {MAX_FLOAT:g}], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m esa_tutorial.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="batch 2, one round. Measured on a 2-core CPU: 7 s when quiet (load "
                             "average 1.2), 64 s when shared with other jobs (load average 9)")
    parser.add_argument("--shape", nargs=4, type=_positive_int, action="append", metavar=("B", "C", "H", "W"),
                        help="benchmark this shape instead (repeatable)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if available)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--repeats", type=_positive_int, default=None,
                        help="interleaved timing rounds (default 3, --quick 1)")
    parser.add_argument("--min-run-time", type=_positive_float, default=None,
                        help="seconds per timing (default 0.2, --quick 0.05)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    parser.add_argument("--mhsa-limit-gb", type=_positive_float, default=None,
                        help="skip MHSA where its attention matrix is larger (default 2, --quick 0.1)")
    parser.add_argument("--breakdown", action="store_true",
                        help="time the parts of the folded forward at the first shape")
    parser.add_argument("--ldnet-step", action="store_true",
                        help="time an LDNet training step (the network: --model), literal vs folded ESA; "
                             "on CUDA also its peak memory")
    parser.add_argument("--model", choices=LDNET_MODELS, default="paper-sized",
                        help="--ldnet-step's network: paper-sized (small encoder) or full (Res2Net-50, 33.4 M)")
    parser.add_argument("--ldnet-batch", type=_positive_int, default=16)
    parser.add_argument("--ldnet-size", type=_positive_int, default=224, help="a multiple of 32")
    parser.add_argument("--ldnet-steps", type=_positive_int, default=2,
                        help="timed training steps after one warm-up step (the fastest reported)")
    parser.add_argument("--amp", choices=sorted(AMP_TORCH_DTYPES), default=None,
                        help="--ldnet-step under mixed precision (CUDA only), as train --amp")
    parser.add_argument("--against-ldnet", type=Path, default=None, metavar="CLONE",
                        help="only time LDNet.full()'s forward beside LDNet's own network, from your clone "
                             "of github.com/ReaFly/LDNet (at --ldnet-size, batch 1); writes "
                             "<out>/against-ldnet.json")
    parser.add_argument("--out", type=Path, default=Path("bench_results"))
    return parser


def _check_device(parser: argparse.ArgumentParser, name: str | None) -> torch.device:
    try:
        device = resolve_device(name)
    except (RuntimeError, ValueError) as err:  # torch.device("nonexistent") raises RuntimeError
        parser.error(f"--device: {err}")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda (a device that computes), got {name!r}")
    return device


def _check_out(parser: argparse.ArgumentParser, out: Path) -> None:
    """Fail now, not after the measurements, if ``out`` cannot take the results."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        parser.error(f"--out {str(out)!r} is not a writable directory: {err}")


def main(argv: Sequence[str] | None = None) -> list[Record]:
    """Run the benchmark with command-line arguments ``argv`` (default ``sys.argv[1:]``); returns the records."""
    parser = build_parser()
    args = parser.parse_args(argv)
    device = _check_device(parser, args.device)
    if (args.ldnet_step or args.against_ldnet is not None) and args.ldnet_size % 32:
        parser.error(f"--ldnet-size must be a multiple of 32, got {args.ldnet_size}")
    if args.amp is not None and device.type != "cuda":
        parser.error(f"--amp {args.amp} (mixed precision) needs a CUDA device, got {device.type}")
    _check_out(parser, args.out)
    if args.against_ldnet is not None:
        try:
            check_clone(args.against_ldnet)
        except FileNotFoundError as err:
            parser.error(f"--against-ldnet: {err}")
        side = forward_side_by_side(args.against_ldnet, args.ldnet_size, 1, device,
                                    rounds=args.repeats or 5, min_run_time=args.min_run_time or 0.5)
        run = dict(machine=machine(), device=str(device), **asdict(side))
        write_json(run, args.out / "against-ldnet.json")
        log(describe_against_ldnet(run))
        log(f"wrote {args.out / 'against-ldnet.json'}")
        return []

    dtype = DTYPES[args.dtype]
    shapes = [tuple(s) for s in args.shape] if args.shape else (QUICK_SHAPES if args.quick else LDNET_SHAPES)
    repeats = args.repeats or (1 if args.quick else 3)
    min_run_time = args.min_run_time or (0.05 if args.quick else 0.2)
    mm_size = 1024 if args.quick else 2048
    log(f"machine: {machine()}")
    mm_time = max(0.1, 2 * min_run_time)
    matmul = matmul_gflops(dtype, device, size=mm_size, min_run_time=mm_time)
    records = run_benchmark(shapes, args.variants, dtype=dtype, device=device, repeats=repeats,
                            min_run_time=min_run_time, memory=not args.no_memory,
                            mhsa_limit_gb=args.mhsa_limit_gb or (0.1 if args.quick else 2.0), progress=log)
    # Measured again at the end and the better kept: a busy spell must not inflate the shares.
    matmul = max(matmul, matmul_gflops(dtype, device, size=mm_size, min_run_time=mm_time))
    summary = speedup_table(records, matmul)
    log(f"device {device}, {args.dtype}, dense matmul {matmul:.1f} GFLOP/s")
    log(format_table(records, matmul))
    log("")
    log(format_speedup_table(summary))
    result: dict[str, object] = dict(machine=machine(), device=str(device), dtype=args.dtype,
                                     matmul_gflops=matmul, records=[asdict(r) for r in records],
                                     speedup=summary)
    if args.breakdown:
        parts = forward_breakdown(shapes[0], dtype, device, min_run_time)
        result["breakdown"] = dict(shape=list(shapes[0]), seconds=parts)
        log("folded forward at " + "x".join(map(str, shapes[0])) + ": "
            + ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in parts.items()))
    if args.ldnet_step:
        step = {impl: ldnet_training_step(impl, args.ldnet_batch, args.ldnet_size, device, args.ldnet_steps,
                                          args.model, args.amp)
                for impl in ("reference", "folded")}
        side = args.ldnet_size
        stages = [(args.ldnet_batch, c, side // s, side // s) for c, s in ((64, 2), (64, 4), (128, 8), (256, 16))]
        share = esa_share_of_step(stages, step["folded"].seconds, dtype, device, min_run_time)
        result["ldnet_step"] = dict(model=args.model, batch=args.ldnet_batch, size=side, amp=args.amp,
                                    seconds={k: v.seconds for k, v in step.items()},
                                    esa_share_folded=share)
        if device.type == "cuda":
            result["ldnet_step"].update(peak_mib={k: v.peak_mib for k, v in step.items()},
                                        reserved_mib={k: v.reserved_mib for k, v in step.items()})
        log(describe_ldnet_step(result))
    paths = plot_times(records, args.out)
    write_json(result, args.out / "bench.json")
    for path in [*paths, args.out / "bench.json"]:
        log(f"wrote {path}")
    return records


if __name__ == "__main__":
    import matplotlib

    matplotlib.use("Agg")  # the command only writes files: no window, whatever the desktop offers
    main()
