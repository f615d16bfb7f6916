"""Command line: train the book's models and write their histories and checkpoints.

::

    python -m esa_tutorial.experiments context         # ContextNet, 4 variants x 3 seeds
    python -m esa_tutorial.experiments ablation        # LDNet on polyps, 4 variants x 3 seeds
    python -m esa_tutorial.experiments fine-key        # a key smaller than a cell, 4 variants x 3 seeds
    python -m esa_tutorial.experiments far-pixel       # what ESA loses, 4 variants x 3 seeds
    python -m esa_tutorial.experiments costs ablation --out FOLDER   # re-measure stored costs
    python -m esa_tutorial.experiments context --seeds 0 --steps 100 --out /tmp/try
    python -m esa_tutorial.experiments manifest --out FOLDER   # SHA-256 of each file

Suites::

    context   the key-matching task of "What ESA learns": ContextNet without attention,
              with one global token, with ESA and with full MHSA
    fine-key  the same network and variants on keys smaller than a pyramid cell
              ("What ESA learns", what ESA loses with learned features)
    far-pixel one far marker pixel whose bit every pixel must compare with its own: ESA
              and full MHSA on linear features; controls: ESA with a 6x6 marker, ESA
              on convolutional features ("What ESA learns", what ESA loses)
    ablation  the small LDNet on synthetic polyps of "Ablation": no attention, ESA,
              full MHSA, ESA + LCA
    manifest  train nothing; write the SHA-256 of every file in --out to its manifest
    costs     train nothing; re-measure the parameters and memory of a stored suite

Each run writes into a new folder, experiment_runs/<suite>-<date>-<time>, unless --out
names one. The models the book loads ship with the package and stay untouched: to
replace them, name their folder with --out on purpose.

The stored results were trained with ``OMP_NUM_THREADS=1`` (one thread per run, so the
per-step times of variants compare); set it in the shell to reproduce them. The command
itself leaves torch's thread count alone, as every part of the package does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from . import (
    ABLATION_VARIANTS,
    CHECKPOINTED,
    CONTEXT_VARIANTS,
    PRETRAINED,
    FAR_PIXEL_VARIANTS,
    ablation_spec,
    context_spec,
    far_pixel_spec,
    fine_key_spec,
    run_suite,
    summarise,
    remeasure_costs,
    write_manifest,
)
from ..files import write_json


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m esa_tutorial.experiments", description=__doc__.replace("\n::\n", "").replace("::\n", ":\n"),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", choices=("context", "fine-key", "far-pixel", "ablation", "manifest", "costs"),
                   help="what to run (see above)")
    p.add_argument("stored", nargs="?", help="with costs: the stored suite to re-measure (context, ablation...)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    p.add_argument("--steps", type=int, help="training steps (default: the suite's)")
    p.add_argument("--variants", nargs="+", help="variant names (default: all of the suite)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: a new experiment_runs/<suite>-<date>-<time>)")
    return p


def fresh_out(suite: str, root: Path = Path("experiment_runs")) -> Path:
    """A folder that does not exist yet, ``root/<suite>-<YYYYmmdd-HHMMSS>[-n]``: a run never
    mixes its files with an earlier run's, nor with the models shipped in the package."""
    stem = f"{suite}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = root / stem, 1
    while out.exists():
        n += 1
        out = root / f"{stem}-{n}"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.steps is not None and not 1 <= args.steps <= 10**7:
        parser.error(f"--steps must be an integer from 1 to 10000000, got {args.steps}")
    bad_seeds = [s for s in args.seeds if not 0 <= s < 2**32]
    if bad_seeds:
        parser.error(f"--seeds must lie in [0, 2**32), got {bad_seeds}")
    if args.out is None:
        if args.suite in ("manifest", "costs"):
            parser.error(f"{args.suite} needs --out FOLDER (the package's models: --out {PRETRAINED})")
        args.out = fresh_out(args.suite)
        print(f"writing to {args.out}", flush=True)
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out must be a folder, got the file {args.out}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.suite == "costs":
        if args.stored is None:
            parser.error("costs needs the suite to re-measure, e.g. costs ablation")
        path = args.out / "histories" / f"{args.stored}.json"
        if not path.is_file():
            parser.error(f"no stored runs at {path}")
        runs = remeasure_costs(json.loads(path.read_text()))
        write_json(runs, path)
        write_manifest(args.out)
        for run in runs:
            print(f"{run['spec']['variant']:<14} seed {run['spec']['seed']}: saved {run['cost']['saved_mb']:.2f} MiB")
        return 0
    if args.suite == "manifest":
        for name, digest in write_manifest(args.out).items():
            print(f"{digest[:12]}  {name}")
        return 0
    variants, make = {
        "context": (CONTEXT_VARIANTS, context_spec),
        "fine-key": (CONTEXT_VARIANTS, fine_key_spec),
        "far-pixel": (FAR_PIXEL_VARIANTS, far_pixel_spec),
        "ablation": (ABLATION_VARIANTS, ablation_spec),
    }[args.suite]
    names = args.variants or list(variants)
    unknown = [n for n in names if n not in variants]
    if unknown:
        print(f"unknown variants {unknown}; choose from {list(variants)}", file=sys.stderr)
        return 2
    overrides = {} if args.steps is None else {"steps": args.steps}
    specs = [make(v, seed, **overrides) for seed in args.seeds for v in names]
    results = run_suite(
        specs, args.out, args.suite, checkpoint_variants=CHECKPOINTED[args.suite], log=lambda s: print(s, flush=True)
    )
    runs = [r.to_json() for r in results]
    for variant, s in summarise(runs).items():
        print(f"{variant:<14} val Dice {s['mean']:.3f} +- {s['std']:.3f} over {int(s['n'])} seeds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
