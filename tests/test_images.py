"""Reading files: every bit depth scaled (B3), masks by explicit rules (B2), named errors (C6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from esa_tutorial.data import PolypFolder, binarise_mask, read_image, read_mask


def _lesion(h: int = 40, w: int = 40, side: int = 4) -> np.ndarray:
    """bool (h, w) with a side x side lesion: 1% of the pixels at 4 of 40."""
    m = np.zeros((h, w), dtype=bool)
    m[10 : 10 + side, 20 : 20 + side] = True
    return m


def _save(path: Path, im: Image.Image) -> Path:
    im.save(path)
    return path


def _palette_mask(lesion: np.ndarray, colour: tuple[int, int, int]) -> Image.Image:
    im = Image.fromarray(lesion.astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0, *colour] + [0, 0, 0] * 254)
    return im


@pytest.mark.parametrize(
    "make, rule",
    [
        (lambda m: Image.fromarray(m.astype(np.uint8) * 255), "0/255"),
        (lambda m: Image.fromarray(m.astype(np.uint8)), "0/1 label map"),
        (lambda m: Image.fromarray(m.astype(np.uint8) * 2), "0/2 label map"),
        (lambda m: Image.fromarray(m.astype(np.uint8) * 100), "small lesion at grey 100"),
        (lambda m: _palette_mask(m, (128, 0, 0)), "VOC-style palette, dark red"),
        (lambda m: Image.fromarray(np.stack([m * 200, m * 0, m * 30], axis=2).astype(np.uint8)), "red on black"),
        (lambda m: Image.fromarray(m.astype(np.uint16) * 65535), "16-bit 0/65535"),
        (lambda m: Image.fromarray(m.astype(np.uint16) * 7), "16-bit label map 0/7"),
        (lambda m: Image.fromarray(m), "bilevel"),
    ],
)
def test_mask_layouts_real_data_sets_use(tmp_path: Path, make, rule: str) -> None:
    """B2: each of these used to load as an empty mask or be rejected; the foreground is exact now."""
    lesion = _lesion()
    path = _save(tmp_path / "m.png", make(lesion))
    np.testing.assert_array_equal(read_mask(path), lesion, err_msg=rule)


@pytest.mark.parametrize(
    "values, message",
    [
        (lambda m: m.astype(np.uint8) + (np.arange(40) % 7 == 0)[None, :].astype(np.uint8),
         r"label map with several foreground ids \{0: .* px, 1: .* px, 2: .* px\}"),
        (lambda m: np.where(m, 255, 1).astype(np.uint8), r"two values, neither of them 0: \{1: 1584 px, 255: 16 px\}"),
        (lambda m: (m * 100 + (np.arange(40)[:, None] % 3)).astype(np.uint8), "is not binary"),
        (lambda m: np.tile(np.linspace(0, 255, 40).astype(np.uint8), (40, 1)), "is not binary: 75.0%"),
    ],
    ids=["0-1-2 label map", "1/255", "dark lesion with noise", "ramp"],
)
def test_ambiguous_masks_are_rejected_naming_the_file_and_values(tmp_path: Path, values, message: str) -> None:
    path = _save(tmp_path / "amb.png", Image.fromarray(values(_lesion())))
    with pytest.raises(ValueError, match=message) as info:
        read_mask(path)
    assert str(path) in str(info.value)


def test_jpeg_noise_around_a_white_lesion_is_accepted() -> None:
    grey = np.zeros((20, 20), dtype=np.uint8)
    grey[5:15, 5:15] = 250
    grey[5, 5:9] = 180  # a few mid-grey pixels at the border, as JPEG leaves them
    grey[0, 0] = 3
    expected = grey >= 128
    np.testing.assert_array_equal(binarise_mask(grey), expected)


def test_single_valued_masks() -> None:
    assert not binarise_mask(np.zeros((3, 3), np.uint8)).any()
    assert binarise_mask(np.full((3, 3), 255, np.uint8)).all()


def test_sixteen_bit_grey_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    """B3: a 0..65535 ramp used to load with mean 0.975 and 98% of pixels at 1."""
    ramp = np.tile(np.linspace(0, 65535, 40).astype(np.uint16), (40, 1))
    path = _save(tmp_path / "ramp.png", Image.fromarray(ramp))
    image = read_image(path)
    assert image.shape == (40, 40, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image[..., 1], ramp / 65535, atol=1e-6)
    assert image.mean() == pytest.approx(0.5, abs=1e-3)


def test_other_bit_depths(tmp_path: Path) -> None:
    ramp8 = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (4, 1))
    np.testing.assert_allclose(read_image(_save(tmp_path / "a.png", Image.fromarray(ramp8)))[..., 0], ramp8 / 255,
                               atol=1e-6)
    ramp32 = Image.fromarray(ramp8.astype(np.int32) * 257, mode="I")  # 16-bit data in a 32-bit integer image
    np.testing.assert_allclose(read_image(_save(tmp_path / "b.tif", ramp32))[..., 2], ramp8 / 255, atol=1e-6)
    floats = Image.fromarray((ramp8 / 255).astype(np.float32), mode="F")
    np.testing.assert_allclose(read_image(_save(tmp_path / "c.tif", floats))[..., 0], ramp8 / 255, atol=1e-6)
    too_wide = Image.fromarray(np.full((2, 2), 70000, np.int32), mode="I")
    with pytest.raises(ValueError, match="32-bit integer with values in"):
        read_image(_save(tmp_path / "d.tif", too_wide))


def test_sixteen_bit_images_through_polyp_folder(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    ramp = np.tile(np.linspace(0, 65535, 40).astype(np.uint16), (40, 1))
    Image.fromarray(ramp).save(tmp_path / "images" / "a.png")
    Image.fromarray(_lesion().astype(np.uint8) * 255).save(tmp_path / "masks" / "a.png")
    image, mask = PolypFolder(tmp_path, size=40, train=False)[0]
    assert float(image.mean()) == pytest.approx(0.5, abs=1e-3) and float((image >= 0.999).float().mean()) < 0.05
    assert float(mask.mean()) == pytest.approx(0.01)


def test_decompression_bomb_error_names_the_file(tmp_path: Path, monkeypatch) -> None:
    """C6: Pillow's DecompressionBombError did not say which file; it is a ValueError naming it now."""
    path = _save(tmp_path / "bomb.png", Image.fromarray(np.zeros((40, 40), np.uint8)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1600 pixels > 2 * 100: Pillow refuses
    with pytest.raises(ValueError, match=f"cannot read image file {path}: .*decompression bomb"):
        read_image(path)
