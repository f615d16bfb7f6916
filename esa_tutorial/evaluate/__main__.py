"""``python -m esa_tutorial.evaluate CHECKPOINT FOLDER...``: score a model per test set, as LDNet's test.py does.

    python -m esa_tutorial.evaluate checkpoints/best.pt kvasir/Kvasir-SEG
    python -m esa_tutorial.evaluate ck_80.pth TestDataset/ --ldnet-tp-quirk --json scores.json

CHECKPOINT is a file written by ``python -m esa_tutorial.train`` or a state
dict written by LDNet's own ``train.py`` (loaded into ``LDNet.full()``).
Each FOLDER is a test set or a folder of test sets (layouts: see
``esa_tutorial.evaluate``). Prints one table per test set and a summary.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ..checkpoints import CheckpointError
from ..files import write_json
from ..runtime import resolve_device
from . import (
    LDNET_TEST_SIZE, Scores, find_datasets, format_scores, format_summary, load_model, probabilities,
    score_test_set,
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m esa_tutorial.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="a package checkpoint (best.pt) or LDNet's state dict (.pth)")
    p.add_argument("folders", type=Path, nargs="+", metavar="FOLDER", help="a test set, or a folder of test sets")
    p.add_argument("--size", type=_positive_int, default=LDNET_TEST_SIZE,
                   help=f"images are scored at SIZE x SIZE, a multiple of 32 (LDNet: {LDNET_TEST_SIZE})")
    p.add_argument("--ldnet-tp-quirk", action="store_true",
                   help="LDNet's TP := 1 on images without a true positive (to compare with its numbers)")
    p.add_argument("--batch-size", type=_positive_int, default=1, help="images per forward pass (LDNet: 1)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if available)")
    p.add_argument("--json", type=Path, default=None, help="also write the scores to this JSON file")
    return p


def main(argv: Sequence[str] | None = None) -> list[Scores]:
    """Run the command with ``argv`` (default ``sys.argv[1:]``); returns the scores per test set."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.size % 32:
        parser.error(f"--size must be a multiple of 32 (LDNet's encoder stride), got {args.size}")
    if args.num_workers < 0:
        parser.error(f"--num-workers must be >= 0, got {args.num_workers}")
    try:
        device = resolve_device(args.device)
        # Every folder is checked before the model is loaded: a typo fails in a second, not after loading.
        test_sets = [t for folder in args.folders for t in find_datasets(folder)]
        model = load_model(args.checkpoint, device)
    except (FileNotFoundError, ValueError, CheckpointError, RuntimeError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    predict = probabilities(model)
    results = []
    for test_set in test_sets:
        scores = score_test_set(predict, test_set, args.size, args.ldnet_tp_quirk, args.batch_size, device,
                                args.num_workers)
        results.append(scores)
        print(format_scores(scores, args.size, args.ldnet_tp_quirk), end="\n\n", flush=True)
    print(format_summary(results))
    if args.json is not None:
        data = dict(checkpoint=str(args.checkpoint), size=args.size, threshold=0.5, tp_quirk=args.ldnet_tp_quirk,
                    test_sets=[dict(name=r.test_set.name, folder=str(r.test_set.root), layout=r.test_set.layout,
                                    images=r.n, mean=r.mean) for r in results])
        write_json(data, args.json)
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
