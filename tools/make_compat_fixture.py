"""Regenerate tests/fixtures/original_esa.pt by running the original ESA module.

The original module is the code printed in the blog post that presents ESA,
kept outside this repository at ``../shared/reference/esa_seed_post.txt``. This
script executes that code (it is not copied into the repository), builds a few
small layers, and saves for each: its constructor arguments, its state dict, an
input and the output the original computes. ``tests/test_original_compat.py``
then checks, in any clone, that our ESA loads those state dicts with
``strict=True`` and reproduces the outputs.

    python tools/make_compat_fixture.py [--post PATH] [--out PATH]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
POST = ROOT.parent / "shared" / "reference" / "esa_seed_post.txt"
OUT = ROOT / "tests" / "fixtures" / "original_esa.pt"

# (batch, dim, height, width, heads, dim_head): small, so the fixture stays a few hundred KB.
CASES = [
    (1, 32, 11, 11, 8, 8),  # the post's 11x11 demo map, narrower
    (2, 16, 7, 13, 4, 8),  # non-square, spans bins that overlap
    (2, 12, 2, 2, 2, 6),  # smaller than the 3x3 and 5x5 grids
    (3, 8, 1, 1, 2, 4),  # a single pixel
    (2, 12, 5, 6, 1, 12),  # heads=1 and dim_head=dim: the original drops the output projection
]


def original_esa_class(post: Path) -> type:
    """Execute the module code printed in the post and return its ``ESA`` class."""
    text = post.read_text(encoding="utf-8")
    match = re.search(r"^import torch\.nn\.functional.*?(?=^if __name__)", text, re.S | re.M)
    if not match:
        raise SystemExit(f"could not find the module code in {post}")
    namespace: dict = {}
    exec(compile(match.group(0), str(post), "exec"), namespace)
    return namespace["ESA"]


def make_fixture(post: Path) -> list[dict]:
    """One record per case: ``kwargs``, ``state_dict``, ``x`` and the original's ``expected`` output."""
    esa_class = original_esa_class(post)
    gen = torch.Generator().manual_seed(2022)
    records = []
    for b, c, h, w, heads, dim_head in CASES:
        torch.manual_seed(len(records))  # the original draws its initial weights from the global generator
        original = esa_class(c, heads=heads, dim_head=dim_head).eval()
        x = torch.randn(b, c, h, w, generator=gen)
        with torch.no_grad():
            expected = original(x)
        records.append(dict(kwargs=dict(dim=c, heads=heads, dim_head=dim_head),
                            state_dict=original.state_dict(), x=x, expected=expected))
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--post", type=Path, default=POST)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if not args.post.exists():
        raise SystemExit(f"the reference post is not at {args.post}; pass --post")
    records = make_fixture(args.post)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    torch.save(dict(source=args.post.name, torch=str(torch.__version__), cases=records), tmp)
    tmp.replace(args.out)
    print(f"wrote {len(records)} cases to {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
