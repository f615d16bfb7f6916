"""Reading image and mask files: every bit depth scaled to [0, 1], masks binarised by explicit rules.

**Images** become float32 (H, W, 3) in [0, 1], scaled by the range of their
storage, never clipped: 8-bit modes (``L``, ``P``, ``RGB``, ``RGBA``, ``CMYK``,
...) divide by 255; 16-bit greyscale (``I;16``, ``I;16B``, ...) by 65535;
32-bit integer greyscale (``I``, how some Pillow versions open 16-bit PNGs)
by 65535 when its values fit 16 bits (else it is rejected); float greyscale
(``F``) must already lie in [0, 1]. Greyscale is repeated into 3 channels.

**Masks** become bool (H, W), foreground ``True``. The rules, in order:

1. A palette mask (Pillow mode ``P``, e.g. VOC-style) is read as its palette
   *indices*, a label map; a bilevel mask (mode ``1``) as is.
2. A colour mask with exactly two colours, one of them black: foreground is
   the other colour. Any other colour mask is converted to grey.
3. On the grey or label values (any bit depth):

   a. values all in {0, 1}: a label map, foreground = 1;
   b. exactly two values, one of them 0: foreground = the other value
      (0/255, 0/65535, a label map 0/2, a dark lesion 0/100 ...); a single
      value is all background if it is 0, else all foreground;
   c. several values, the largest below ``LABEL_MAX`` (32): a label map with
      several foreground ids -- **ambiguous**, rejected;
   d. otherwise a grey mask with noise (JPEG masks such as Kvasir-SEG's):
      foreground = value >= half the storage range (128 of 255). It is
      rejected as **not binary** when more than ``MAX_GREY_FRACTION`` (2%) of
      its pixels are *mid-grey* (within [1/8, 7/8] of the range, 32-223 in
      8 bits), or when its mid-grey pixels outnumber its foreground (a lesion
      darker than mid-grey would otherwise vanish).

   Two values neither of which is 0 (e.g. 1 and 255) are rejected too: which
   one is background cannot be decided.

Every rejection is a ``ValueError`` naming the file and the values it holds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

LABEL_MAX = 32  # a mask whose values all lie below this is a label map, not grey levels
MID_LOW, MID_HIGH = 1 / 8, 7 / 8  # fractions of the storage range that count as "mid-grey"
MAX_GREY_FRACTION = 0.02  # more mid-grey pixels than this: the mask is not binary
GREY_LOW, GREY_HIGH = 32, 223  # MID_LOW and MID_HIGH in 8 bits, for messages and old code

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def _decoded(path: Path) -> Image.Image:
    """``Image.open`` plus ``load()``, closing the file if decoding fails."""
    im = Image.open(path)
    try:
        im.load()
    except BaseException:
        im.close()
        raise
    return im


def open_image(path: Path | str) -> Image.Image:
    """Open and fully decode an image file; unreadable files raise ``ValueError`` naming ``path``.

    Covers truncated or corrupt files and Pillow's decompression-bomb limit
    (``Image.MAX_IMAGE_PIXELS``), which by itself does not say which file it refused.
    """
    path = Path(path)
    try:
        return _decoded(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"file vanished since the dataset was indexed: {path}") from None
    except Image.DecompressionBombError as err:
        raise ValueError(
            f"cannot read image file {path}: {err} Raise PIL.Image.MAX_IMAGE_PIXELS if the file is trusted."
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read image file {path}: {err}") from None


def image_to_float(im: Image.Image, path: Path | str = "<image>") -> np.ndarray:
    """A Pillow image -> float32 (H, W, 3) in [0, 1], scaled by its bit depth (see the module docstring)."""
    if im.mode in _SIXTEEN_BIT:
        grey = np.asarray(im, dtype=np.float32) / np.float32(65535)
    elif im.mode == "I":
        values = np.asarray(im)
        if values.min() < 0 or values.max() > 65535:
            raise ValueError(
                f"image {path} is 32-bit integer with values in [{values.min()}, {values.max()}]; "
                "only 8- and 16-bit images are supported"
            )
        grey = values.astype(np.float32) / np.float32(65535)
    elif im.mode == "F":
        grey = np.asarray(im, dtype=np.float32)
        if not (np.isfinite(grey).all() and grey.min() >= 0 and grey.max() <= 1):
            raise ValueError(f"float image {path} must hold finite values in [0, 1], got [{grey.min()}, {grey.max()}]")
    else:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / np.float32(255)
    return np.repeat(grey[..., None], 3, axis=2)


def read_image(path: Path | str) -> np.ndarray:
    """An image file -> float32 (H, W, 3) in [0, 1], at any bit depth."""
    with open_image(path) as im:
        return image_to_float(im, path)


def _describe(values: np.ndarray, counts: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(f"{v:g}: {c} px" for v, c in list(zip(values.tolist(), counts.tolist()))[:limit])
    return "{" + shown + (", ..." if len(values) > limit else "") + "}"


def binarise_mask(values: np.ndarray, path: Path | str = "<array>", full_range: float | None = None) -> np.ndarray:
    """Grey or label values (H, W) of any integer or float dtype -> bool (H, W), by rule 3 of the module docstring.

    ``full_range`` is the storage range (255 for 8 bits, 65535 for 16); by
    default 255 for uint8, 65535 for wider integers, 1.0 for floats. Raises
    ``ValueError`` naming ``path`` and the values for an ambiguous mask.
    """
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"mask {path} must be one channel (H, W), got shape {values.shape}")
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise ValueError(f"mask {path} holds NaN or inf")
    levels, counts = np.unique(values, return_counts=True)
    if set(levels.tolist()) <= {0, 1}:  # rule a
        return values == 1
    if len(levels) == 1:  # rule b, one value: all background (0) or all foreground
        return values != 0
    if len(levels) == 2:  # rule b
        if levels[0] == 0:
            return values == levels[1]
        raise ValueError(
            f"mask {path} holds two values, neither of them 0: {_describe(levels, counts)}; "
            "cannot tell which is the background (store background as 0)"
        )
    if levels.max() < LABEL_MAX and levels.min() >= 0:  # rule c
        raise ValueError(
            f"mask {path} looks like a label map with several foreground ids {_describe(levels, counts)}; "
            "this loader needs one foreground id (merge or select the class first)"
        )
    if full_range is None:
        full_range = 255.0 if values.dtype == np.uint8 else 1.0 if values.dtype.kind == "f" else 65535.0
    scaled = values.astype(np.float64) / full_range
    mid = np.count_nonzero((scaled >= MID_LOW) & (scaled <= MID_HIGH))
    foreground = scaled >= 0.5
    if mid > MAX_GREY_FRACTION * values.size or mid > np.count_nonzero(foreground):
        raise ValueError(
            f"mask {path} is not binary: {mid / values.size:.1%} of its pixels are mid-grey "
            f"(between {MID_LOW:.3g} and {MID_HIGH:.3g} of the range, {GREY_LOW}-{GREY_HIGH} in 8 bits; "
            f"at most {MAX_GREY_FRACTION:.0%} allowed, and fewer than the foreground's "
            f"{np.count_nonzero(foreground)} px); values {_describe(levels, counts)}"
        )
    return foreground


def mask_from_image(im: Image.Image, path: Path | str = "<mask>") -> np.ndarray:
    """A Pillow mask image -> bool (H, W), by the rules of the module docstring."""
    if im.mode == "1":
        return np.asarray(im, dtype=bool)
    if im.mode == "P":  # rule 1: palette indices are labels
        return binarise_mask(np.asarray(im), path)
    if im.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
        rgb = np.asarray(im.convert("RGB"))
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
            colours = np.unique(rgb.reshape(-1, 3), axis=0)
            if len(colours) == 2 and not colours[0].any():  # rule 2: black and one colour
                return (rgb != 0).any(axis=2)
        return binarise_mask(np.asarray(im.convert("L")), path)
    if im.mode in ("L", "LA", "PA"):
        return binarise_mask(np.asarray(im.convert("L")), path)
    if im.mode in _SIXTEEN_BIT or im.mode == "I":
        return binarise_mask(np.asarray(im).astype(np.int64), path, full_range=65535.0)
    if im.mode == "F":
        return binarise_mask(np.asarray(im), path)
    raise ValueError(f"mask {path} has Pillow mode {im.mode!r}, which this loader does not read")


def read_mask(path: Path | str) -> np.ndarray:
    """A mask file -> bool (H, W), foreground True, by the rules of the module docstring."""
    with open_image(path) as im:
        return mask_from_image(im, path)
