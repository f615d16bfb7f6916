"""Regenerate tests/fixtures/ldnet_full_keys.txt: LDNet's state-dict keys and shapes, as LDNet.full() exports them.

One line per key of ``ldnet_state_dict(LDNet.full())``, in LDNet's order:
``<key> <shape>``, the shape as ``64x3x3x3`` (``scalar`` for a 0-d tensor). The counts it must have come from running
LDNet's own code (``../shared/reviews/2026-12-04-ldnet-full-model.md``: 902
keys, 766 distinct tensors, 33,375,608 parameters); ``tests/test_ldnet_full.py``
checks them, spot-checks names read in ``models/LDNet.py`` and
``models/res2net.py`` (ReaFly/LDNet), and that the export still matches this
file, so a change of layout shows up as a diff here.

    python tools/make_ldnet_manifest.py [--out PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from esa_tutorial import LDNet
from esa_tutorial.files import atomic_write_text
from esa_tutorial.nn.ldnet_weights import ldnet_state_dict

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "ldnet_full_keys.txt"


def manifest() -> str:
    """The manifest's text: ``key shape`` per line."""
    with torch.device("meta"):  # shapes only: no 33 M random numbers drawn
        model = LDNet.full(seed=0)
    lines = [f"{k} {'x'.join(map(str, v.shape)) or 'scalar'}" for k, v in ldnet_state_dict(model).items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    atomic_write_text(manifest(), args.out)
    print(f"wrote {args.out}")
