"""Checkpoints made with the original module load into ours and give the same outputs.

The original module is the code printed in the blog post that presents ESA
(``shared/reference/esa_seed_post.txt`` next to the repository). We execute it
from there rather than copy it into the repository.
"""

import re
from pathlib import Path

import pytest
import torch

from esa_tutorial import ESA

POST = Path(__file__).resolve().parents[2] / "shared" / "reference" / "esa_seed_post.txt"


@pytest.fixture(scope="module")
def original_esa_class():
    if not POST.exists():
        pytest.skip(f"the reference post is not at {POST}")
    text = POST.read_text(encoding="utf-8")
    match = re.search(r"^import torch\.nn\.functional.*?(?=^if __name__)", text, re.S | re.M)
    assert match, "could not find the module code in the reference post"
    namespace: dict = {}
    exec(compile(match.group(0), str(POST), "exec"), namespace)
    return namespace["ESA"]


CASES = [  # (batch, dim, h, w, heads, dim_head)
    (1, 256, 11, 11, 8, 64),
    (2, 64, 7, 13, 8, 64),
    (2, 32, 2, 2, 8, 64),
    (3, 32, 1, 1, 4, 16),
    (2, 48, 5, 6, 1, 48),  # Identity output projection
]


@pytest.mark.parametrize("impl", ["reference", "folded"])
@pytest.mark.parametrize("case", CASES)
def test_original_checkpoint_loads_strict_and_agrees(original_esa_class, case, impl, tmp_path):
    b, c, h, w, heads, dim_head = case
    original = original_esa_class(c, heads=heads, dim_head=dim_head).eval()
    path = tmp_path / "esa.pt"
    torch.save(original.state_dict(), path)

    ours = ESA(c, heads=heads, dim_head=dim_head, impl=impl).eval()
    ours.load_state_dict(torch.load(path), strict=True)

    x = torch.randn(b, c, h, w)
    with torch.no_grad():
        expected, got = original(x), ours(x)
    assert got.shape == expected.shape == (b, h * w, c)
    rel = ((got - expected).norm() / expected.norm()).item()
    assert rel <= 1e-5, rel
