"""Benchmark results shipped with the package, and plain-text summaries of them.

``esa_tutorial/bench/data/<name>.json`` files are written by
``python -m esa_tutorial.bench --ldnet-step --breakdown --out ...`` (then
copied here); chapter 9 prints its tables from them rather than typing numbers.
"""

from __future__ import annotations

import json
from importlib import resources


def available() -> list[str]:
    """Names of the shipped result files (without ``.json``)."""
    return sorted(p.name.removesuffix(".json") for p in resources.files(__package__).joinpath("data").iterdir()
                  if p.name.endswith(".json"))


def load(name: str) -> dict:
    """The shipped benchmark result ``name`` (see :func:`available`) as a dict."""
    path = resources.files(__package__).joinpath("data", f"{name}.json")
    if not path.is_file():
        raise FileNotFoundError(f"no shipped benchmark result {name!r}; available: {available()}")
    return json.loads(path.read_text())


def describe(run: dict) -> str:
    """One line: device, dtype, machine, load average and measured matmul rate of a run."""
    m = run["machine"]
    load = m.get("load_average_1_5_15")
    busy = f", load average {load[0]:.1f} on {m.get('cpu_count')} cores" if load else ""
    return (f"{run['device']} ({m.get('gpu', m.get('cpu'))}, {m.get('threads')} threads{busy}), "
            f"{run['dtype']}, torch {m['torch']}: dense matmul {run['matmul_gflops']:.0f} GFLOP/s")


def describe_breakdown(run: dict) -> str:
    """The folded forward's parts in ms and percent of the whole, one per line."""
    if "breakdown" not in run:
        return "no breakdown in this run"
    seconds = run["breakdown"]["seconds"]
    whole = seconds["whole"]
    shape = "x".join(map(str, run["breakdown"]["shape"]))
    lines = [f"folded forward at {shape}: {1e3 * whole:.1f} ms"]
    for part, s in seconds.items():
        if part != "whole":
            lines.append(f"  {part:>18s}: {1e3 * s:8.1f} ms ({100 * s / whole:3.0f}%)")
    return "\n".join(lines)


def describe_ldnet_step(run: dict) -> str:
    """The LDNet training-step times, literal vs folded ESA, and ESA's share of the folded step."""
    if "ldnet_step" not in run:
        return "no LDNet training step in this run"
    step = run["ldnet_step"]
    s = step["seconds"]
    load = step.get("machine", {}).get("load_average_1_5_15")
    separate = f" (a separate run, load average {load[0]:.1f})" if load else ""
    # Runs from before --model have no "model": they timed the paper-sized stand-in, the only network then.
    network = {"full": " of the full network (Res2Net-50)",
               "paper-sized": " of the paper-sized stand-in (small encoder)"}[step.get("model", "paper-sized")]
    precision = f", {step['amp']} mixed precision" if step.get("amp") else ""
    line = (f"LDNet training step{network}{separate}, batch {step['batch']} at {step['size']}x{step['size']}"
            f"{precision}: literal ESA {s['reference']:.2f} s, folded ESA {s['folded']:.2f} s "
            f"({s['reference'] / s['folded']:.2f}x); the folded ESA layers take about "
            f"{100 * step['esa_share_folded']:.0f}% of the folded step")
    if step.get("peak_mib"):
        peak = step["peak_mib"]
        line += (f"; peak GPU memory {peak['reference']:,.0f} MiB (literal), "
                 f"{peak['folded']:,.0f} MiB (folded)")
    return line


def describe_against_ldnet(run: dict) -> str:
    """LDNet's own network against ``LDNet.full()``: forward times, their ratio, and how far the outputs differ."""
    s, shape = run["seconds"], "x".join(map(str, run["shape"]))
    m = run["machine"]
    where = m.get("gpu") if run["device"].startswith("cuda") else f"{m.get('threads')} threads"
    return (f"forward at {shape} on {run['device']} ({where}): LDNet's code {1e3 * s['ldnet']:.0f} ms, "
            f"the package's LDNet.full() {1e3 * s['package']:.0f} ms ({s['ldnet'] / s['package']:.2f}x); "
            f"same weights, outputs differ by at most {run['max_abs_diff']:.1e}")
