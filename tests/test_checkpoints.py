"""Checkpoint files: round trip, atomic writes, and a named error for every kind of damage."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
import torch

from esa_tutorial.checkpoints import (
    MAGIC,
    CheckpointError,
    load_checkpoint,
    load_state_dict_file,
    save_checkpoint,
)


def _state() -> dict[str, torch.Tensor]:
    return {"conv.weight": torch.arange(12.0).reshape(3, 4), "bn.num_batches_tracked": torch.tensor(7)}


def _with_header(payload: bytes) -> bytes:
    """A file with a valid header around any payload (to test what the header cannot catch)."""
    digest = hashlib.sha256(payload).hexdigest()
    return MAGIC + f"sha256 {digest}\nbytes {len(payload)}\n".encode() + payload


def _torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_round_trip(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "sub" / "best.pt", _state(), {"width": 4}, {"epoch": 3, "scores": [0.5]})
    ckpt = load_checkpoint(path)
    assert ckpt["config"] == {"width": 4} and ckpt["extra"] == {"epoch": 3, "scores": [0.5]}
    for name, value in _state().items():
        torch.testing.assert_close(ckpt["model"][name], value, rtol=0, atol=0)
    assert load_checkpoint(save_checkpoint(tmp_path / "x.pt", _state(), {}))["extra"] == {}


def test_a_flipped_byte_in_the_weights_is_detected(tmp_path: Path) -> None:
    """B7: torch's zip reader does not check CRCs; the checkpoint's SHA-256 does."""
    path = save_checkpoint(tmp_path / "last.pt", {"w": torch.full((256,), 0.5)}, {})
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is corrupted: the SHA-256"):
        load_checkpoint(path)


def _unpicklable_payload() -> bytes:
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    return _torch_bytes({"format": 1, "model": {}, "config": {}, "extra": {"x": Evil()}})


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", r"is empty \(0 bytes\)"),
        (b"hello, I am a text file\n", "is not a checkpoint: it starts with b'hello"),
        (_torch_bytes([1, 2]), r"is a plain torch.save file \(no checksum\)"),
        (MAGIC + b"sha256 zz\nbytes 3\nabc", "has a damaged header"),
        (_with_header(b"0123456789")[:-4], "is truncated: its header says 10 payload bytes, the file holds 6"),
        (_with_header(_torch_bytes([1, 2])), "holds list, expected the dict save_checkpoint writes"),
        (_with_header(_torch_bytes({"format": 1, "model": {}, "extra": {}})), r"lacks \['config'\]"),
        (_with_header(_torch_bytes({"format": 1, "model": {"w": 3}, "config": {}, "extra": {}})),
         r"model\['w'\] must be a tensor"),
        (_with_header(b"not a torch file at all"), "is not a readable torch file"),
        (_with_header(_unpicklable_payload()), "holds objects other than tensors and plain containers"),
    ],
    ids=["empty", "text", "plain-torch-save", "bad-header", "truncated", "list", "no-config", "not-tensors",
         "not-torch", "pickle-payload"],
)
def test_every_damaged_file_names_itself_and_the_problem(tmp_path: Path, content: bytes, message: str) -> None:
    """C4: each failure is a CheckpointError naming the file, never a bare EOFError/KeyError."""
    path = tmp_path / "last.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert "weights_only=False" not in str(info.value) and "weights_only' set to 'False" not in str(info.value)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")
    with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path} is a folder; give the file inside it"):
        load_checkpoint(tmp_path)


def test_a_non_finite_model_is_never_written(tmp_path: Path) -> None:
    state = _state()
    state["conv.weight"][0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"refusing to save a model with non-finite weights: .*'conv.weight'"):
        save_checkpoint(tmp_path / "best.pt", state, {})
    assert not (tmp_path / "best.pt").exists()


def test_bad_arguments_to_save(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="model_state must be a dict of name -> tensor"):
        save_checkpoint(tmp_path / "a.pt", [torch.zeros(1)], {})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="config must be a dict"):
        save_checkpoint(tmp_path / "a.pt", _state(), None)  # type: ignore[arg-type]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "last.pt", _state(), {"epoch": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full (simulated)")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, _state(), {"epoch": 2}, {"bad": Unpicklable()})
    assert load_checkpoint(path)["config"] == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left behind


@pytest.mark.parametrize(
    "content, message",
    [(b"0123456789abcdef", "is not a readable torch file"), (b"", "is empty"),
     (_torch_bytes({"w": torch.zeros(2)})[:100], "is not a readable torch file"),
     (_torch_bytes([1, 2]), "must be a dict of name -> tensor")],
    ids=["garbage", "empty", "truncated", "list"],
)
def test_plain_state_dict_files_fail_with_the_file_named(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "backbone.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        load_state_dict_file(path)
    assert str(path) in str(info.value) and "weights_only=False" not in str(info.value)


def test_plain_state_dict_file_round_trip(tmp_path: Path) -> None:
    torch.save(_state(), tmp_path / "enc.pt")
    loaded = load_state_dict_file(tmp_path / "enc.pt")
    torch.testing.assert_close(loaded["conv.weight"], _state()["conv.weight"])


# ----------------------------------------------------------------- fuzz round 2 (R9)


def _deflated(data: bytes) -> bytes:
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
    return out.getvalue()


def test_a_link_to_dev_zero_is_refused_without_reading_it(tmp_path: Path) -> None:
    os.symlink("/dev/zero", tmp_path / "zero.pt")
    with pytest.raises(CheckpointError, match=r"zero\.pt is not a regular file"):
        load_checkpoint(tmp_path / "zero.pt")
    with pytest.raises(CheckpointError, match=r"zero\.pt is not a regular file"):
        load_state_dict_file(tmp_path / "zero.pt")


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.pt")
    with pytest.raises(CheckpointError, match=r"pipe\.pt is not a regular file"):
        load_checkpoint(tmp_path / "pipe.pt")


def test_a_signed_expanded_tensor_is_refused_before_it_is_materialised(tmp_path: Path) -> None:
    # 1.5e9 elements backed by one float: checking it for NaN would allocate 6 GB.
    huge = torch.zeros(1).expand(1_500_000_000)
    payload = _torch_bytes({"format": 1, "model": {"w": huge}, "config": {}, "extra": {}})
    (tmp_path / "x.pt").write_bytes(_with_header(payload))
    with pytest.raises(CheckpointError, match=r"x\.pt: .*'w'.* has only 4 bytes behind it"):
        load_checkpoint(tmp_path / "x.pt")


def test_a_compressed_payload_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    payload = _deflated(_torch_bytes({"format": 1, "model": _state(), "config": {}, "extra": {}}))
    (tmp_path / "z.pt").write_bytes(_with_header(payload))
    with pytest.raises(CheckpointError, match=r"z\.pt has a compressed member"):
        load_checkpoint(tmp_path / "z.pt")


def test_an_unknown_format_is_refused(tmp_path: Path) -> None:
    payload = _torch_bytes({"format": 99, "model": _state(), "config": {}, "extra": {}})
    (tmp_path / "f.pt").write_bytes(_with_header(payload))
    with pytest.raises(CheckpointError, match=r"f\.pt is in format 99; .* reads format 1 only"):
        load_checkpoint(tmp_path / "f.pt")


def test_a_text_file_as_pretrained_weights_names_the_file(tmp_path: Path) -> None:
    os.symlink("/etc/passwd", tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match=r"weights\.pt is not a readable torch file"):
        load_state_dict_file(tmp_path / "weights.pt")


def test_a_legacy_torch_file_still_loads_as_a_state_dict(tmp_path: Path) -> None:
    # Published weights saved before torch 1.6 are not zips; they have no compression to refuse.
    torch.save(_state(), tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    state = load_state_dict_file(tmp_path / "old.pth")
    assert state.keys() == _state().keys() and torch.equal(state["conv.weight"], _state()["conv.weight"])


def test_the_documented_standard_tools_recipe_reads_a_checkpoint(tmp_path, monkeypatch) -> None:
    """The module docstring's recipe (hashlib and torch.load only), run as written, reads a checkpoint."""
    import hashlib
    import io
    import textwrap

    import esa_tutorial.checkpoints as checkpoints

    state = {"w": torch.arange(4.0)}
    checkpoints.save_checkpoint(tmp_path / "best.pt", state, config={"width": 4}, extra={"epoch": 2})
    doc = checkpoints.__doc__
    block = doc.split("is an ordinary ``torch.save`` file::\n\n", 1)[1].split("\n\n", 1)[0]
    namespace = {"hashlib": hashlib, "io": io, "torch": torch}
    monkeypatch.chdir(tmp_path)
    exec(textwrap.dedent(block), namespace)  # the assert in the recipe checks the SHA-256
    torch.testing.assert_close(namespace["ckpt"]["model"]["w"], state["w"], rtol=0, atol=0)
    assert namespace["ckpt"]["config"] == {"width": 4} and namespace["ckpt"]["extra"] == {"epoch": 2}
