"""The one way the package writes a file: atomically, and flushed to disk before it counts.

Every file the package writes (checkpoints, histories, benchmark JSON and
figures, stored models, grades) goes through :func:`atomic_write`: the bytes
go to a temporary file in the target's folder, are ``fsync``-ed, and the file
is renamed over the target with ``os.replace``; then the folder itself is
``fsync``-ed so that the rename survives a power cut. Readers see the old
file or the new one, never half of one; a crash, a full disk or an exception
while writing leaves the old file as it was and removes the temporary one.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Union

PathLike = Union[str, "os.PathLike[str]"]


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a folder that cannot be opened for reading (Windows): the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders; the data itself was already synced
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a temporary binary file, sync it, and rename it to ``path``; returns ``path``.

    The folder is created if needed. On any error the temporary file is
    removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def atomic_write_bytes(data: bytes, path: PathLike) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(text: str, path: PathLike) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically."""
    return atomic_write_bytes(text.encode("utf-8"), path)


def write_json(data: Any, path: PathLike) -> Path:
    """Write ``data`` as indented JSON (one trailing newline) to ``path`` atomically.

    NaN and infinities are refused (``ValueError``): they are not JSON, and
    other readers than Python's would reject the file.
    """
    return atomic_write_text(json.dumps(data, indent=1, allow_nan=False) + "\n", path)


def save_tensors(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: a plain file that ``torch.load(path, weights_only=True)`` reads."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(buffer.getvalue(), path)


def save_figure(fig: Any, path: PathLike, **savefig_kwargs: Any) -> Path:
    """``fig.savefig`` to ``path`` atomically; the format comes from the suffix unless given."""
    path = Path(path)
    savefig_kwargs.setdefault("format", path.suffix.lstrip(".") or "png")
    return atomic_write(path, lambda f: fig.savefig(f, **savefig_kwargs))
