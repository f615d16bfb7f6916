"""Synthetic polyps, the images/ + masks/ folder reader with its augmentation, the download helper."""

from __future__ import annotations

import io
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from esa_tutorial import data
from esa_tutorial.data import PolypFolder, SyntheticPolyps, binarise_mask, download_kvasir

# --------------------------------------------------------------------------- synthetic


def test_sample_shapes_dtypes_and_ranges() -> None:
    ds = SyntheticPolyps(3, size=48, seed=0)
    image, mask = ds[0]
    assert image.shape == (3, 48, 48) and mask.shape == (1, 48, 48)
    assert image.dtype == mask.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert len(ds) == 3


def test_deterministic_per_seed_and_index_in_any_order() -> None:
    a, b = SyntheticPolyps(6, size=32, seed=3), SyntheticPolyps(6, size=32, seed=3)
    later = b[4]
    for i in (4, 0, 5):
        torch.testing.assert_close(a[i], b[i], rtol=0, atol=0)
    torch.testing.assert_close(a[4], later, rtol=0, atol=0)
    torch.testing.assert_close(a[-1], a[5], rtol=0, atol=0)
    assert not torch.equal(a[0][0], a[1][0])
    assert not torch.equal(a[0][0], SyntheticPolyps(6, size=32, seed=4)[0][0])


def test_masks_never_empty_and_polyp_sizes_vary() -> None:
    ds = SyntheticPolyps(40, size=32, seed=1)
    fractions = np.array([float(ds[i][1].mean()) for i in range(len(ds))])
    assert (fractions > 0).all()
    assert fractions.min() < 0.02 and fractions.max() > 0.1  # small and large polyps both occur
    # smallest size, many draws: the centre pixel is always inside a polyp
    tiny = SyntheticPolyps(60, size=16, seed=2)
    assert all(tiny[i][1].sum() >= 1 for i in range(60))


@pytest.mark.parametrize("index", range(6))
def test_masks_are_exact(index: int) -> None:
    """The same frame drawn without its polyps differs from it only under the mask, and mostly there."""
    image, mask = data.synthetic_polyp(seed=0, index=index, size=64)
    plain, same_mask = data.synthetic_polyp(seed=0, index=index, size=64, paint_polyps=False)
    np.testing.assert_array_equal(mask, same_mask)
    changed = np.abs(image - plain).max(axis=-1) > 0
    assert not changed[~mask].any()
    assert changed[mask].mean() > 0.5


def test_dataloader_batches() -> None:
    images, masks = next(iter(DataLoader(SyntheticPolyps(4, size=32), batch_size=4)))
    assert images.shape == (4, 3, 32, 32) and masks.shape == (4, 1, 32, 32)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"n": 0}, ValueError, "n must be a positive integer"),
        ({"n": 2, "size": 8}, ValueError, "at least 16"),
        ({"n": 2, "seed": -1}, ValueError, r"seed must be an integer in \[0, 2\*\*32\)"),
    ],
)
def test_synthetic_bad_arguments(kwargs, err, match) -> None:
    with pytest.raises(err, match=match):
        SyntheticPolyps(**kwargs)


def test_synthetic_bad_index() -> None:
    ds = SyntheticPolyps(2, size=16)
    with pytest.raises(IndexError, match="index 2 out of range"):
        ds[2]
    with pytest.raises(TypeError, match="index must be an integer"):
        ds[0.5]


# --------------------------------------------------------------------------- folders


def blob_mask(h: int = 40, w: int = 48) -> np.ndarray:
    """An asymmetric 0/255 mask (an L shape off centre), so flips and rotations show."""
    m = np.zeros((h, w), dtype=np.uint8)
    m[5:30, 8:16] = 255
    m[22:30, 8:36] = 255
    return m


def write_pair(root: Path, stem: str, image: np.ndarray, mask: np.ndarray,
               image_suffix: str = ".png", mask_suffix: str = ".png") -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{stem}{image_suffix}")
    Image.fromarray(mask).save(root / "masks" / f"{stem}{mask_suffix}")


def rgb_of(mask: np.ndarray) -> np.ndarray:
    return np.repeat(mask[..., None], 3, axis=-1)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    write_pair(tmp_path, "a", rng.integers(0, 256, (40, 48, 3), dtype=np.uint8), blob_mask())
    write_pair(tmp_path, "b", rng.integers(0, 256, (40, 48, 3), dtype=np.uint8), blob_mask(),
               image_suffix=".jpg", mask_suffix=".bmp")
    return tmp_path


def test_eval_resizes_and_pairs_by_stem(folder: Path) -> None:
    ds = PolypFolder(folder, size=24, train=False)
    assert len(ds) == 2 and [p[0].stem for p in ds.pairs] == ["a", "b"]
    assert ds.pairs[1][0].suffix == ".jpg" and ds.pairs[1][1].suffix == ".bmp"
    image, mask = ds[0]
    assert image.shape == (3, 24, 24) and mask.shape == (1, 24, 24)
    assert image.dtype == mask.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    # plain resize: the stored image resized by Pillow's bilinear filter
    stored = np.asarray(Image.open(folder / "images" / "a.png"), dtype=np.float32) / 255
    channels = [Image.fromarray(np.ascontiguousarray(stored[..., c])) for c in range(3)]
    expected = np.stack([np.asarray(c.resize((24, 24), Image.BILINEAR)) for c in channels])
    np.testing.assert_allclose(image.numpy(), expected, atol=1e-6)


def test_eval_mask_geometry(tmp_path: Path) -> None:
    m = np.zeros((32, 32), dtype=np.uint8)
    m[:, :16] = 255  # left half
    write_pair(tmp_path, "x", rgb_of(m), m)
    _, mask = PolypFolder(tmp_path, size=16, train=False)[0]
    expected = torch.zeros(1, 16, 16)
    expected[..., :8] = 1
    torch.testing.assert_close(mask, expected)


def test_train_augmentation_keeps_image_and_mask_aligned(tmp_path: Path) -> None:
    """An image whose content equals its mask comes out equal to its mask wherever the image is
    pure black or white (the image is resampled bilinearly, the mask by nearest neighbour)."""
    write_pair(tmp_path, "x", rgb_of(blob_mask()), blob_mask())
    ds = PolypFolder(tmp_path, size=28, train=True, seed=0)
    outputs = []
    for epoch in range(12):
        ds.set_epoch(epoch)
        image, mask = ds[0]
        assert image.shape == (3, 28, 28) and mask.shape == (1, 28, 28)
        torch.testing.assert_close(image[0:1], image[1:2], rtol=0, atol=0)
        pure = (image[0:1] == 0) | (image[0:1] == 1)
        assert pure.float().mean() > 0.5
        torch.testing.assert_close(image[0:1][pure], mask[pure], rtol=0, atol=0)
        outputs.append(mask)
    assert len({tuple(m.flatten().tolist()) for m in outputs}) > 6  # the draws really differ


def test_train_augmentation_repeats_per_seed_epoch_and_index(folder: Path) -> None:
    a, b = PolypFolder(folder, size=24, seed=3), PolypFolder(folder, size=24, seed=3)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)
    b.set_epoch(1)
    assert not torch.equal(a[1][0], b[1][0])


def test_label_map_and_jpeg_masks_are_read(tmp_path: Path) -> None:
    m = blob_mask()
    write_pair(tmp_path, "labels", rgb_of(m), (m // 255).astype(np.uint8))  # values 0/1
    write_pair(tmp_path, "jpeg", rgb_of(m), m, mask_suffix=".jpg")  # compression noise at the border
    ds = PolypFolder(tmp_path, train=False)
    for i in range(2):
        _, mask = ds.load(i)
        assert (mask == (m > 0)).mean() > 0.99


def test_binarise_mask_rule() -> None:
    grey = np.zeros((10, 10), dtype=np.uint8)
    grey[:5] = 255
    grey[9, 0:2] = 128  # 2 of 100 pixels mid-grey: exactly at the limit, allowed
    assert binarise_mask(grey)[:5].all() and binarise_mask(grey)[9, :2].all()
    grey[9, 2] = 200  # 3%: rejected
    with pytest.raises(ValueError, match=r"not binary: 3.0% of its pixels are mid-grey"):
        binarise_mask(grey, "m.png")


def test_verify_reads_every_pair(folder: Path) -> None:
    PolypFolder(folder).verify()
    Image.fromarray(np.zeros((41, 48), dtype=np.uint8)).save(folder / "masks" / "b.bmp")
    with pytest.raises(ValueError, match="b.jpg is 48x40 but its mask .*b.bmp is 48x41"):
        PolypFolder(folder).verify()


def test_missing_root_and_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset root not found: .*nowhere"):
        PolypFolder(tmp_path / "nowhere")
    (tmp_path / "masks").mkdir()
    with pytest.raises(FileNotFoundError, match="image folder not found: .*images"):
        PolypFolder(tmp_path)
    (tmp_path / "masks").rmdir()
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match="mask folder not found: .*masks"):
        PolypFolder(tmp_path)


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="image folder .*images holds no image files"):
        PolypFolder(tmp_path)


def test_image_without_mask_and_mask_without_image(folder: Path) -> None:
    (folder / "masks" / "b.bmp").unlink()
    with pytest.raises(ValueError, match=r"1 images without a matching mask in .*masks: b"):
        PolypFolder(folder)
    m = blob_mask()
    Image.fromarray(m).save(folder / "masks" / "b.png")
    Image.fromarray(m).save(folder / "masks" / "orphan.png")
    with pytest.raises(ValueError, match=r"1 masks without a matching image in .*images: orphan"):
        PolypFolder(folder)


def test_duplicate_stems(folder: Path) -> None:
    Image.fromarray(rgb_of(blob_mask())).save(folder / "images" / "a.jpg")
    with pytest.raises(ValueError, match="two image files share the stem 'a'"):
        PolypFolder(folder)


def test_unreadable_file(folder: Path) -> None:
    (folder / "images" / "a.png").write_bytes(b"this is not a png")
    ds = PolypFolder(folder)
    with pytest.raises(ValueError, match="cannot read image file .*a.png"):
        ds[0]
    (folder / "images" / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match="vanished .*a.png"):
        ds[0]


def test_size_mismatch(tmp_path: Path) -> None:
    write_pair(tmp_path, "x", np.zeros((20, 30, 3), dtype=np.uint8), np.zeros((30, 20), dtype=np.uint8))
    with pytest.raises(ValueError, match="x.png is 30x20 but its mask .*x.png is 20x30"):
        PolypFolder(tmp_path)[0]


def test_soft_mask_rejected(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (32, 1))  # a probability map, not a mask
    write_pair(tmp_path, "soft", rgb_of(ramp), ramp)
    with pytest.raises(ValueError, match="mask .*soft.png is not binary"):
        PolypFolder(tmp_path, train=False)[0]


# --------------------------------------------------------------------------- download


def kvasir_zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, payload in entries.items():
            z.writestr(name, payload)
    return buf.getvalue()


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def serve(payload: bytes, calls: list):
    def fake_fetch(url: str, destination: Path) -> None:
        calls.append(url)
        Path(destination).write_bytes(payload)
    return fake_fetch


def test_download_kvasir_unpacks_the_official_layout(tmp_path: Path) -> None:
    m = blob_mask()
    payload = kvasir_zip({
        "Kvasir-SEG/images/cju0qkwl35piu0993l0dewei2.jpg": png_bytes(rgb_of(m)),
        "Kvasir-SEG/masks/cju0qkwl35piu0993l0dewei2.jpg": png_bytes(m),
        "Kvasir-SEG/kavsir_bboxes.json": b"{}",
    })
    calls: list = []
    root = download_kvasir(tmp_path / "datasets", fetch=serve(payload, calls))
    assert calls == [data.KVASIR_URL]
    assert root == tmp_path / "datasets" / "Kvasir-SEG"
    assert sorted(p.name for p in (tmp_path / "datasets").iterdir()) == ["Kvasir-SEG"]  # the zip is gone
    image, mask = PolypFolder(root, size=16, train=False)[0]
    assert image.shape == (3, 16, 16) and mask.sum() > 0
    # already there: no second download
    assert download_kvasir(tmp_path / "datasets", fetch=serve(payload, calls)) == root and len(calls) == 1


def test_download_kvasir_real_fetch_from_a_file_url(tmp_path: Path) -> None:
    """The real fetch function, offline: urllib reads file:// URLs like http:// ones."""
    m = blob_mask()
    archive = tmp_path / "served.zip"
    archive.write_bytes(kvasir_zip({"Kvasir-SEG/images/x.png": png_bytes(rgb_of(m)),
                                    "Kvasir-SEG/masks/x.png": png_bytes(m)}))
    root = download_kvasir(tmp_path / "data", url=archive.as_uri())
    assert len(PolypFolder(root)) == 1


def test_download_kvasir_without_internet(tmp_path: Path) -> None:
    def no_network(url: str, destination: Path) -> None:
        raise urllib.error.URLError("Name or service not known")

    with pytest.raises(ConnectionError, match="could not download .*kvasir-seg.zip.*Kvasir-SEG/images"):
        download_kvasir(tmp_path, fetch=no_network)
    assert list(tmp_path.iterdir()) == []  # no half-written zip left behind


def test_download_kvasir_rejects_a_non_zip(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a zip file"):
        download_kvasir(tmp_path, fetch=serve(b"<html>404</html>", []))


def test_download_kvasir_rejects_a_wrong_layout(tmp_path: Path) -> None:
    fetch = serve(kvasir_zip({"other/images/a.png": png_bytes(blob_mask())}), [])
    with pytest.raises(ValueError, match=r"Kvasir-SEG layout: missing .*Kvasir-SEG/images.*holds \['other'\]"):
        download_kvasir(tmp_path, fetch=fetch)
    assert list(tmp_path.iterdir()) == []  # nothing of the failed archive stays behind


def test_download_kvasir_refuses_paths_outside_root(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="refusing to extract member '../evil.txt'"):
        download_kvasir(tmp_path / "root", fetch=serve(kvasir_zip({"../evil.txt": b"x"}), []))
    assert not (tmp_path / "evil.txt").exists()
