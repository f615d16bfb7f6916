"""A generated folder in Kvasir-SEG's layout, and the seeded train/val/test split of such a folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from esa_tutorial.data import PolypFolder, SyntheticPolyps, split_folder, split_plan, write_synthetic_folder
from esa_tutorial.evaluate import find_datasets


def test_the_generated_folder_reads_back_as_the_synthetic_frames(tmp_path: Path) -> None:
    root = write_synthetic_folder(tmp_path / "standin", n=12, size=48, seed=3)
    names = sorted(p.name for p in (root / "images").iterdir())
    assert names == [f"{i:02d}.png" for i in range(12)]  # zero-padded: sorted order is index order
    assert names == sorted(p.name for p in (root / "masks").iterdir())
    folder = PolypFolder(root, size=48, train=False)
    frames = SyntheticPolyps(12, 48, seed=3)
    for i in (0, 5, 11):
        image, mask = folder[i]
        expected_image, expected_mask = frames[i]
        assert torch.equal(mask, expected_mask)  # masks exactly
        assert (image - expected_image).abs().max() <= 0.5 / 255 + 1e-6  # images to 8-bit rounding
    # evaluate finds it as one test set in the images/ + masks/ layout
    (found,) = find_datasets(root)
    assert found.layout == "images/ + masks/" and len(found.pairs) == 12


def test_the_generated_folder_never_overwrites(tmp_path: Path) -> None:
    write_synthetic_folder(tmp_path, n=2, size=32)
    before = (tmp_path / "images" / "0.png").read_bytes()
    with pytest.raises(FileExistsError, match="images.*exists already"):
        write_synthetic_folder(tmp_path, n=2, size=32, seed=1)
    assert (tmp_path / "images" / "0.png").read_bytes() == before
    with pytest.raises(ValueError, match="n must be a positive integer, got 0"):
        write_synthetic_folder(tmp_path / "other", n=0)


def test_split_plan_counts_by_hand() -> None:
    stems = [f"s{i:02d}" for i in range(20)]
    plan = split_plan(stems, val=0.1, test=0.25, seed=0)
    # round(20 * 0.1) = 2 for val, round(20 * 0.25) = 5 for test, the other 13 for training
    assert [len(plan[k]) for k in ("train", "val", "test")] == [13, 2, 5]
    assert sorted(plan["train"] + plan["val"] + plan["test"]) == stems  # disjoint and complete
    assert all(part == sorted(part) for part in plan.values())
    # the seed decides the split; the stems' order as given does not
    assert split_plan(stems[::-1], 0.1, 0.25, seed=0) == plan
    assert split_plan(stems, 0.1, 0.25, seed=1) != plan
    # a tiny folder still gets one image per held-out part
    assert [len(v) for v in split_plan(["a", "b", "c"], 0.1, 0.1, 0).values()] == [1, 1, 1]


@pytest.mark.parametrize("val, test, message", [
    (0.5, 0.5, "val \\+ test must be below 1"),
    (0.0, 0.1, "val must be a finite number > 0, got 0.0"),
    (0.1, float("nan"), "test must be a finite number > 0, got nan"),
])
def test_split_plan_refuses_fractions_that_leave_nothing(val: float, test: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_plan(["a", "b", "c", "d"], val, test, seed=0)


def test_split_plan_refuses_too_few_images() -> None:
    with pytest.raises(ValueError, match="2 images are too few to hold out 1 for val and 1 for test"):
        split_plan(["a", "b"], 0.1, 0.1, seed=0)


def test_split_folder_copies_each_pair_into_its_part(tmp_path: Path) -> None:
    source = write_synthetic_folder(tmp_path / "all", n=10, size=32)
    folders = split_folder(source, tmp_path / "split", val=0.2, test=0.2, seed=7)
    plan = split_plan([f"{i}" for i in range(10)], 0.2, 0.2, seed=7)
    for name, stems in plan.items():
        for sub in ("images", "masks"):
            files = sorted((folders[name] / sub).iterdir())
            assert [p.stem for p in files] == stems
            assert all(p.read_bytes() == (source / sub / p.name).read_bytes() for p in files)
        assert len(PolypFolder(folders[name], size=32)) == len(stems)
    record = json.loads((tmp_path / "split" / "split.json").read_text())
    assert record["parts"] == plan and record["seed"] == 7


def test_split_folder_runs_again_but_never_overwrites_another_split(tmp_path: Path) -> None:
    source = write_synthetic_folder(tmp_path / "all", n=10, size=32)
    target = tmp_path / "split"
    first = split_folder(source, target, seed=0)
    stamp = (target / "split.json").stat().st_mtime_ns
    assert split_folder(source, target, seed=0) == first  # the same split: nothing written
    assert (target / "split.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="does not hold this split"):
        split_folder(source, target, seed=1)
    (tmp_path / "busy").mkdir()
    with pytest.raises(FileExistsError, match="split.json missing or different"):
        split_folder(source, tmp_path / "busy")


def test_split_folder_needs_the_layout(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match="mask folder not found"):
        split_folder(tmp_path, tmp_path / "out")
