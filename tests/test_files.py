"""The one file writer: atomic, synced, and readable by the standard tools."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from esa_tutorial import files


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "history.json"
    files.write_json({"a": 1}, path)

    def half_then_crash(f) -> None:
        f.write(b'{"a": 2')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        files.atomic_write(path, half_then_crash)
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json"]


def test_the_data_and_the_folder_are_synced_before_and_after_the_rename(tmp_path: Path, monkeypatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    files.atomic_write_text("x", tmp_path / "sub" / "a.txt")
    assert events == ["fsync", "replace", "fsync"]  # the file's data, the rename, the folder's entry
    assert (tmp_path / "sub" / "a.txt").read_text() == "x"


def test_json_refuses_nan_which_other_readers_reject(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        files.write_json({"loss": float("nan")}, tmp_path / "h.json")
    assert not list(tmp_path.iterdir())


def test_saved_tensors_load_with_plain_torch_load_weights_only(tmp_path: Path) -> None:
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    files.save_tensors(state, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=True)
    torch.testing.assert_close(loaded["w"], state["w"], rtol=0, atol=0)
