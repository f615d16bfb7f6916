"""Download and unpack Kvasir-SEG safely: a temporary folder, limits, and nothing overwritten."""

from __future__ import annotations

import shutil
import stat
import tempfile
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable

from .folder import PolypFolder

KVASIR_URL = "https://datasets.simula.no/downloads/kvasir-seg.zip"
MAX_MEMBERS = 10_000  # Kvasir-SEG holds about 2,000 files
MAX_EXPANDED_BYTES = 2**30  # 1 GiB; Kvasir-SEG unpacks to about 50 MB
_CHUNK = 1 << 20


def _fetch(url: str, destination: Path) -> None:
    """Download ``url`` to ``destination``."""
    with urllib.request.urlopen(url, timeout=60) as response, open(destination, "wb") as out:
        shutil.copyfileobj(response, out)


def _check_members(archive: zipfile.ZipFile, source: str, max_members: int, max_bytes: int) -> list[zipfile.ZipInfo]:
    """The archive's entries, after refusing unsafe names, links and archives over the limits."""
    members = archive.infolist()
    if len(members) > max_members:
        raise ValueError(f"archive {source} has {len(members)} entries, more than the limit of {max_members}")
    declared = sum(m.file_size for m in members)
    if declared > max_bytes:
        raise ValueError(f"archive {source} would expand to {declared} bytes, more than the limit of {max_bytes}")
    for m in members:
        parts = PurePosixPath(m.filename).parts
        if m.filename.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise ValueError(f"archive {source}: refusing to extract member {m.filename!r}: it points outside the target")
        if stat.S_ISLNK(m.external_attr >> 16):
            raise ValueError(f"archive {source}: refusing to extract member {m.filename!r}: it is a symbolic link")
    return members


def _extract(archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], target: Path, source: str,
             max_bytes: int) -> None:
    """Extract ``members`` under ``target``, counting the bytes actually written (headers can lie)."""
    written = 0
    for m in members:
        dest = target.joinpath(*PurePosixPath(m.filename).parts)
        if m.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            with archive.open(m) as src, open(dest, "xb") as out:
                while chunk := src.read(_CHUNK):
                    written += len(chunk)
                    if written > max_bytes:
                        raise ValueError(
                            f"archive {source} expands beyond the limit of {max_bytes} bytes (at member {m.filename!r})"
                        )
                    out.write(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as err:
            raise ValueError(f"archive {source}: member {m.filename!r} is corrupt or unreadable ({err})") from None
        except FileExistsError:
            raise ValueError(f"archive {source} holds member {m.filename!r} twice") from None


def download_kvasir(
    root: str | Path,
    url: str = KVASIR_URL,
    *,
    max_bytes: int = MAX_EXPANDED_BYTES,
    max_members: int = MAX_MEMBERS,
    fetch: Callable[[str, Path], None] | None = None,
) -> Path:
    """Download Kvasir-SEG (1000 polyp images with masks) and put it at ``root/Kvasir-SEG``.

    Returns ``root/Kvasir-SEG``, ready for ``PolypFolder``. If that folder
    already holds ``images/`` and ``masks/`` nothing is downloaded. Needs internet.

    The zip is downloaded and unpacked in a temporary folder inside ``root``;
    only its ``Kvasir-SEG`` folder is moved into place, and only once it is
    complete and its images and masks pair up. Other entries of the archive
    are ignored, nothing in ``root`` is overwritten, and the temporary folder is
    removed whatever happens. ``max_bytes`` and ``max_members`` bound what the
    archive may expand to. ``fetch(url, destination)`` replaces the download
    (tests use it to stay offline).

    Raises ``ConnectionError`` if the download fails; ``ValueError`` naming the
    archive (and the member) if it is not a zip, exceeds a limit, holds an
    unsafe, corrupt or duplicate member, or lacks ``Kvasir-SEG/images`` and
    ``Kvasir-SEG/masks``; ``FileExistsError`` if ``root`` is a file or
    ``root/Kvasir-SEG`` exists without that layout.
    """
    root = Path(root)
    dataset = root / "Kvasir-SEG"
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"download_kvasir: {root} is a file, expected a folder to put Kvasir-SEG in")
    if (dataset / "images").is_dir() and (dataset / "masks").is_dir():
        PolypFolder(dataset)  # raises if images and masks do not pair up
        return dataset
    if dataset.exists():
        raise FileExistsError(
            f"{dataset} exists but lacks images/ or masks/; move it away (it is never overwritten) and retry"
        )
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".kvasir-download-", dir=root))
    try:
        archive_path = tmp / "kvasir-seg.zip"
        try:
            (fetch or _fetch)(url, archive_path)
        except OSError as err:  # URLError, timeouts, refused connections
            raise ConnectionError(
                f"could not download {url} ({err}); without internet, fetch the zip elsewhere and unpack it "
                f"so that {dataset}/images and {dataset}/masks exist"
            ) from err
        if not zipfile.is_zipfile(archive_path):
            raise ValueError(f"download from {url} is not a zip file ({archive_path.stat().st_size} bytes)")
        unpacked = tmp / "unpacked"
        unpacked.mkdir()
        try:
            with zipfile.ZipFile(archive_path) as archive:
                members = _check_members(archive, url, max_members, max_bytes)
                _extract(archive, members, unpacked, url, max_bytes)
        except zipfile.BadZipFile as err:
            raise ValueError(f"archive {url} is not a readable zip ({err})") from None
        staged = unpacked / "Kvasir-SEG"
        missing = [f"Kvasir-SEG/{sub}" for sub in ("images", "masks") if not (staged / sub).is_dir()]
        if missing:
            found = sorted(p.name for p in unpacked.iterdir())
            raise ValueError(f"archive {url} does not have the Kvasir-SEG layout: missing {missing}; "
                             f"its top level holds {found}")
        PolypFolder(staged)  # raises if images and masks do not pair up
        staged.rename(dataset)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dataset
