"""Checkpoints made with the original ESA module load into ours and give the same outputs.

``tests/fixtures/original_esa.pt`` holds, for a few small layers, the state
dict, an input and the output computed by the original module (the code of the
blog post that presents ESA). It was produced once by
``tools/make_compat_fixture.py``, which runs that code from
``../shared/reference/``; this test needs only the fixture, so every clone runs
it. A missing fixture is an error, not a skip.
"""

from pathlib import Path

import pytest
import torch

from esa_tutorial import ESA

FIXTURE = Path(__file__).parent / "fixtures" / "original_esa.pt"


def load_cases() -> list[dict]:
    if not FIXTURE.exists():
        raise FileNotFoundError(
            f"compatibility fixture missing: {FIXTURE}; regenerate it with tools/make_compat_fixture.py"
        )
    return torch.load(FIXTURE, weights_only=True)["cases"]


CASES = load_cases()


def test_fixture_covers_the_identity_projection_and_tiny_maps():
    kinds = {(c["kwargs"]["heads"] == 1 and c["kwargs"]["dim_head"] == c["kwargs"]["dim"]) for c in CASES}
    assert kinds == {True, False}
    assert min(c["x"].shape[-1] * c["x"].shape[-2] for c in CASES) == 1


@pytest.mark.parametrize("impl", ["reference", "folded", "sdpa"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c["x"].shape)))
def test_original_checkpoint_loads_strict_and_agrees(case, impl):
    ours = ESA(**case["kwargs"], impl=impl).eval()
    ours.load_state_dict(case["state_dict"], strict=True)
    with torch.no_grad():
        got = ours.forward_folded(case["x"]) if impl == "folded" else ours(case["x"])
    expected = case["expected"]
    assert got.shape == expected.shape
    rel = ((got - expected).norm() / expected.norm()).item()
    assert rel <= 1e-5, rel
