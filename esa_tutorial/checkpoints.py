"""Checkpoint files that check themselves: a SHA-256 of the payload, atomic writes, named errors.

A checkpoint file is a short text header followed by a ``torch.save`` payload::

    ESA-TUTORIAL-CHECKPOINT 1\\n
    sha256 <64 hex digits>\\n
    bytes <payload length>\\n
    <payload: torch.save({"model": ..., "config": ..., "extra": ...})>

``torch.save``'s zip container does not verify its own CRCs when it loads, so
a flipped byte in the weights would load silently; the checksum catches it.
Files are written through :func:`esa_tutorial.files.atomic_write` (a synced
temporary file renamed into place), so a crash or a full disk leaves the
previous checkpoint intact.
Loading uses ``torch.load(weights_only=True)``: a payload can hold tensors,
numbers, strings and plain containers, never code.

Two functions are the whole interface::

    save_checkpoint("best.pt", model.state_dict(), config={"width": 16}, extra={"epoch": 3})
    ckpt = load_checkpoint("best.pt")   # {"model": ..., "config": ..., "extra": ...}
    model.load_state_dict(ckpt["model"])

A plain ``torch.load(path)`` cannot read these files (the header comes
first); use :func:`load_checkpoint`. Every failure raises
:class:`CheckpointError` (a ``ValueError``) or ``FileNotFoundError`` with the
file's path and what is wrong. Without this package, with standard tools only,
the payload after the header's three lines is an ordinary ``torch.save`` file::

    raw = open("best.pt", "rb").read()
    header, payload = raw.split(b"\\n", 3)[:3], raw.split(b"\\n", 3)[3]
    assert hashlib.sha256(payload).hexdigest() == header[1].split()[1].decode()
    ckpt = torch.load(io.BytesIO(payload), weights_only=True)

Why a header rather than a plain ``torch.save`` file or safetensors beside a
checksum file: one file that carries its own checksum cannot be copied without
it, and the optimizer state and history that ``last.pt`` keeps to resume are
nested containers, which safetensors (flat tensors only) does not hold. The
models shipped with the package (``pretrained/*.pt``) are plain ``torch.save``
files that ``torch.load(path, weights_only=True)`` reads, checked against
``pretrained/manifest.json`` (:func:`esa_tutorial.experiments.verified_path`).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import stat
import zipfile
from pathlib import Path
from typing import Any

import torch

from .files import PathLike, atomic_write_bytes


MAGIC = b"ESA-TUTORIAL-CHECKPOINT 1\n"
FORMAT_VERSION = 1
MAX_HEADER = 256  # bytes read to find the header; the real one is about 120
MAX_FILE_BYTES = 8 * 2**30  # far above any model here (a full LDNet is a few hundred MB)
MAX_ZIP_MEMBERS = 100_000


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


def _check_state_dict(state: Any, what: str, action: str = "load") -> None:
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise TypeError(f"{what} must be a dict of name -> tensor (a state_dict()), got {type(state).__name__}")
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{what}[{name!r}] must be a tensor, got {type(value).__name__}")
        if value.layout == torch.strided and value.device.type != "meta" and \
                value.untyped_storage().nbytes() < value.numel() * value.element_size():
            # A one-element storage viewed as billions (stride 0): checking it would allocate them all.
            raise ValueError(f"{what}[{name!r}] of shape {tuple(value.shape)} has only "
                             f"{value.untyped_storage().nbytes()} bytes behind it (an expanded view), not a weight")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(
                f"refusing to {action} a model with non-finite weights: {what}[{name!r}] holds NaN or inf "
                "(the training diverged)"
            )


def save_checkpoint(
    path: PathLike,
    model_state: dict[str, torch.Tensor],
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model_state`` (a ``state_dict()``), its ``config`` and ``extra`` to ``path``, atomically.

    Args:
        path: the file to write; its folder is created if missing.
        model_state: name -> tensor; tensors are saved as they are (move them
            to the CPU first if the file should load without a GPU).
        config: what rebuilds the model (e.g. ``LDNet`` keyword arguments, a
            training recipe): str keys, plain values.
        extra: anything else worth keeping (epoch, scores, optimizer state), plain values and tensors.

    Returns the path. Raises ``ValueError`` if a floating-point weight is NaN or
    inf (a diverged model is never written), ``TypeError`` for a malformed argument.
    """
    _check_state_dict(model_state, "model_state", "save")
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict or None, got {type(extra).__name__}")
    buffer = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, "model": model_state, "config": config, "extra": extra or {}}, buffer)
    payload = buffer.getvalue()
    header = MAGIC + f"sha256 {hashlib.sha256(payload).hexdigest()}\nbytes {len(payload)}\n".encode("ascii")
    atomic_write_bytes(header + payload, path)
    return Path(path)


def _read_header(raw: bytes, path: Path) -> tuple[str, int, int]:
    """(sha256 hex, payload length, payload offset) from a file's bytes, or a CheckpointError."""
    if not raw.startswith(MAGIC):
        if raw.startswith(b"PK\x03\x04"):
            kind = "a plain torch.save file (no checksum), not one written by save_checkpoint"
        elif raw.startswith(b"\x80"):
            kind = "a pickle file, not a checkpoint written by save_checkpoint"
        else:
            kind = f"not a checkpoint: it starts with {raw[:16]!r}, expected {MAGIC[:-1].decode()!r}"
        raise CheckpointError(f"checkpoint {path} is {kind}")
    lines = raw[len(MAGIC) : MAX_HEADER].split(b"\n", 2)
    try:
        digest_line, size_line = lines[0].decode("ascii"), lines[1].decode("ascii")
        tag, digest = digest_line.split(" ")
        size_tag, size = size_line.split(" ")
        if tag != "sha256" or size_tag != "bytes" or len(digest) != 64:
            raise ValueError
        int(digest, 16)
        length = int(size)
    except (IndexError, ValueError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint {path} has a damaged header (the lines after {MAGIC[:-1].decode()!r})") \
            from None
    offset = len(MAGIC) + len(digest_line) + len(size_line) + 2
    return digest, length, offset


def _read_file(path: Path, what: str, is_folder: str, missing: str, empty: str) -> bytes:
    """The bytes of the regular file ``path`` (capped), with the caller's message for each way it fails."""
    if path.is_dir():
        raise CheckpointError(is_folder)
    if not path.exists():
        raise FileNotFoundError(missing)
    raw = read_regular_file(path, MAX_FILE_BYTES, what)
    if not raw:
        raise CheckpointError(empty)
    return raw


def load_checkpoint(path: PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and verify a file written by :func:`save_checkpoint`.

    Returns ``{"model": state dict, "config": dict, "extra": dict}``, tensors on
    ``map_location`` (the CPU by default). Raises ``FileNotFoundError`` when
    nothing is at ``path`` and :class:`CheckpointError` naming the file when it
    is a folder, empty, truncated, fails its SHA-256 check, is not a checkpoint,
    holds objects other than tensors and plain containers, or lacks
    ``model``/``config``.
    """
    path = Path(path)
    raw = _read_file(path, "checkpoint", f"checkpoint {path} is a folder; give the file inside it, e.g. "
                     f"{path / 'best.pt'}", f"no checkpoint at {str(path)!r}",
                     f"checkpoint {path} is empty (0 bytes): a write that never finished, or not a checkpoint")
    digest, length, offset = _read_header(raw, path)
    payload = raw[offset:]
    if len(payload) != length:
        raise CheckpointError(
            f"checkpoint {path} is {'truncated' if len(payload) < length else 'longer than written'}: "
            f"its header says {length} payload bytes, the file holds {len(payload)}"
        )
    actual = hashlib.sha256(payload).hexdigest()
    if actual != digest:
        raise CheckpointError(
            f"checkpoint {path} is corrupted: the SHA-256 of its payload is {actual[:12]}..., "
            f"the header says {digest[:12]}... (a changed byte since it was written)"
        )
    state = _torch_load(stored_zip(payload, path), path, map_location)
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"checkpoint {path} holds {type(state).__name__}, expected the dict save_checkpoint writes")
    if state["format"] != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} is in format {state['format']!r}; this version of esa_tutorial "
                              f"reads format {FORMAT_VERSION} only")
    missing = [k for k in ("model", "config", "extra") if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}")
    try:
        _check_state_dict(state["model"], "model")
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path}: {err}") from None
    if not isinstance(state["config"], dict) or not isinstance(state["extra"], dict):
        raise CheckpointError(f"checkpoint {path}: 'config' and 'extra' must be dicts")
    return {"model": state["model"], "config": state["config"], "extra": state["extra"]}


def _torch_load(source: Any, path: Path, map_location: str | torch.device) -> Any:
    """``torch.load(weights_only=True)`` with errors that name ``path`` (and never advise unsafe loading)."""
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message suggests weights_only=False, which would run code from the file: keep only its reason.
        lines = [line.strip() for line in str(err).splitlines()]
        reason = next((line for line in lines if "global" in line.lower()), None)
        if reason is None:
            raise CheckpointError(f"{path} is not a readable torch file ({lines[-1] if lines else 'unpickling failed'})") \
                from None
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain containers, so it is not loaded "
            f"(only weights are trusted): {reason}"
        ) from None
    except Exception as err:  # noqa: BLE001 -- torch's unpickler raises many kinds; all mean "not a torch file"
        raise CheckpointError(f"{path} is not a readable torch file ({type(err).__name__}: {err})") from None


def read_regular_file(path: Path, max_bytes: int, what: str) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``max_bytes``; else a CheckpointError naming it.

    Opened without blocking and checked before reading: a FIFO would hang a
    plain read, a link to ``/dev/zero`` would fill the memory.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        raise CheckpointError(f"{what} {path} cannot be opened: {err.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"{what} {path} is not a regular file (a device, a pipe or a socket)")
        if info.st_size > max_bytes:
            raise CheckpointError(f"{what} {path} is {info.st_size} bytes, more than the {max_bytes} read")
        return f.read(max_bytes + 1)


def stored_zip(data: bytes, path: PathLike, max_bytes: int = MAX_FILE_BYTES,
               max_members: int = MAX_ZIP_MEMBERS) -> io.BytesIO:
    """``torch.save`` bytes, checked and copied into a fresh zip before ``torch.load`` sees them.

    torch writes its zips uncompressed; a compressed member could inflate to
    any size, so it is refused, as are more than ``max_members`` members or
    more than ``max_bytes`` in all. The copy holds exactly the members that
    Python's ``zipfile`` read, so torch's reader cannot see others. Bytes that
    are not a zip pass unchanged: torch's legacy format (before torch 1.6, as
    some published weights are) has no compression. Raises a
    :class:`CheckpointError` naming ``path``.
    """
    if not data.startswith(b"PK"):
        return io.BytesIO(data)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
        if not members or len(members) > max_members:
            raise CheckpointError(f"{path} holds {len(members)} zip members (1 to {max_members} expected)")
        packed = [m.filename for m in members if m.compress_type != zipfile.ZIP_STORED]
        if packed:
            raise CheckpointError(f"{path} has a compressed member {packed[0]!r}; torch.save writes none")
        if sum(m.file_size for m in members) > max_bytes:
            raise CheckpointError(f"{path} holds more than {max_bytes} bytes once unpacked")
        fresh = io.BytesIO()
        with zipfile.ZipFile(fresh, "w", zipfile.ZIP_STORED) as out:
            for m in members:
                with archive.open(m) as f:
                    out.writestr(m.filename, f.read(max_bytes + 1))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, RuntimeError, EOFError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{path} is not a readable torch file ({type(err).__name__}: {err})") from None
    fresh.seek(0)
    return fresh


def load_state_dict_file(path: PathLike) -> dict[str, torch.Tensor]:
    """Load a plain ``torch.save(model.state_dict(), path)`` file safely (``weights_only``), errors naming ``path``.

    For files not written by :func:`save_checkpoint` (e.g. an encoder's
    pretrained weights); there is no checksum to verify. Returns name -> tensor on the CPU.
    """
    path = Path(path)
    raw = _read_file(path, "state-dict file", f"{path} is a folder, expected a state-dict file",
                     f"no file at {str(path)!r}", f"{path} is empty (0 bytes), expected a state dict saved with torch.save")
    if raw.startswith(MAGIC):
        raise CheckpointError(f"{path} is a checkpoint written by save_checkpoint, not a plain state dict: "
                              "read it with load_checkpoint (a model: esa_tutorial.train.model_from_checkpoint)")
    state = _torch_load(stored_zip(raw, path), path, "cpu")
    try:
        _check_state_dict(state, "the file")
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: {err}") from None
    return state
