"""download_kvasir on zips written here (B5): staged extraction, limits, nothing overwritten or left behind."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from esa_tutorial.data import download_kvasir

URL = "https://example.invalid/kvasir.zip"


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def _kvasir_entries() -> dict[str, bytes]:
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 255
    return {"Kvasir-SEG/images/a.png": _png(np.zeros((8, 8, 3), np.uint8)), "Kvasir-SEG/masks/a.png": _png(mask)}


def _zip(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, payload in entries.items():
            z.writestr(name, payload)
    return buf.getvalue()


def _serve(payload: bytes):
    def fetch(url: str, destination: Path) -> None:
        Path(destination).write_bytes(payload)
    return fetch


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_existing_files_in_root_are_never_overwritten(tmp_path: Path) -> None:
    """B5: an archive entry keep.txt used to overwrite the user's root/keep.txt."""
    (tmp_path / "keep.txt").write_text("precious\n")
    payload = _zip({**_kvasir_entries(), "keep.txt": b"overwritten by the archive\n", "junk/x": b"x"})
    dataset = download_kvasir(tmp_path, URL, fetch=_serve(payload))
    assert (tmp_path / "keep.txt").read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Kvasir-SEG", "keep.txt"]
    assert _listing(dataset) == ["images", "images/a.png", "masks", "masks/a.png"]


def _corrupt_member(payload: bytes, name: str) -> bytes:
    raw = bytearray(payload)
    with zipfile.ZipFile(io.BytesIO(payload)) as z:
        info = z.getinfo(name)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start + 2, start + info.compress_size - 2):
        raw[i] ^= 0x55
    return bytes(raw)


def test_a_corrupt_member_is_named_and_nothing_stays_behind(tmp_path: Path) -> None:
    """B5: a damaged member raised a raw zlib.error and left a partial extraction in root."""
    entries = {**_kvasir_entries(), "Kvasir-SEG/images/b.png": bytes(range(256)) * 64,
               "Kvasir-SEG/masks/b.png": _kvasir_entries()["Kvasir-SEG/masks/a.png"]}
    payload = _corrupt_member(_zip(entries), "Kvasir-SEG/images/b.png")
    (tmp_path / "keep.txt").write_text("precious\n")
    with pytest.raises(ValueError, match=f"archive {URL}: member 'Kvasir-SEG/images/b.png' is corrupt"):
        download_kvasir(tmp_path, URL, fetch=_serve(payload))
    assert _listing(tmp_path) == ["keep.txt"]


def test_expanded_size_is_limited(tmp_path: Path) -> None:
    """B5: a 0.3 MB zip used to expand to 315 MB with no limit."""
    payload = _zip({**_kvasir_entries(), "Kvasir-SEG/zeros.bin": bytes(2_000_000)})
    assert len(payload) < 20_000
    with pytest.raises(ValueError, match=f"archive {URL} would expand to .* bytes, more than the limit of 1000000"):
        download_kvasir(tmp_path, URL, fetch=_serve(payload), max_bytes=1_000_000)
    assert _listing(tmp_path) == []


def test_member_count_is_limited(tmp_path: Path) -> None:
    entries = {**_kvasir_entries(), **{f"Kvasir-SEG/extra/{i}.txt": b"" for i in range(5)}}
    with pytest.raises(ValueError, match=f"archive {URL} has 7 entries, more than the limit of 6"):
        download_kvasir(tmp_path, URL, fetch=_serve(_zip(entries)), max_members=6)
    assert _listing(tmp_path) == []


def test_a_wrong_layout_leaves_nothing_behind(tmp_path: Path) -> None:
    """B5: after the layout error, kvasir-seg/ and stuff/ used to stay in root."""
    payload = _zip({"kvasir-seg/images/a.png": b"x", "stuff/y": b"y"})
    with pytest.raises(ValueError, match=r"does not have the Kvasir-SEG layout: .*holds \['kvasir-seg', 'stuff'\]"):
        download_kvasir(tmp_path, URL, fetch=_serve(payload))
    assert _listing(tmp_path) == []


def test_a_symlink_member_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in _kvasir_entries().items():
            z.writestr(name, data)
        link = zipfile.ZipInfo("Kvasir-SEG/link")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(link, "/etc")
    with pytest.raises(ValueError, match="refusing to extract member 'Kvasir-SEG/link': it is a symbolic link"):
        download_kvasir(tmp_path, URL, fetch=_serve(buf.getvalue()))


def test_a_partial_dataset_folder_is_not_touched(tmp_path: Path) -> None:
    (tmp_path / "Kvasir-SEG" / "images").mkdir(parents=True)
    (tmp_path / "Kvasir-SEG" / "images" / "mine.png").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="Kvasir-SEG exists but lacks images/ or masks/; move it away"):
        download_kvasir(tmp_path, URL, fetch=_serve(_zip(_kvasir_entries())))
    assert _listing(tmp_path) == ["Kvasir-SEG", "Kvasir-SEG/images", "Kvasir-SEG/images/mine.png"]


def test_root_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError, match="f is a file, expected a folder"):
        download_kvasir(tmp_path / "f", URL, fetch=_serve(b""))
