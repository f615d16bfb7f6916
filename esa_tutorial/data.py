"""Polyp segmentation data: a synthetic generator, the public folder layout, a download helper.

``SyntheticPolyps``
    endoscopy-like images drawn with NumPy, each with its exact mask. No
    files, no download: every chapter and test can train on it anywhere.
``PolypFolder``
    the ``images/`` + ``masks/`` layout of Kvasir-SEG and CVC-ClinicDB, with
    LDNet's training augmentations (resize, random crop, zoom, flips, 90 degree
    rotations) applied identically to image and mask.
``download_kvasir``
    fetch and unpack Kvasir-SEG (needs internet; these build machines have none).

Every sample is ``(image, mask)``: image float32 (3, size, size) in [0, 1],
mask float32 (1, size, size) in {0, 1}. Images are not normalised; a model
that wants ImageNet statistics applies them itself.

Mask files are read as 8-bit grey (``Image.convert("L")``) and binarised:

* a mask whose values are all 0 or 1 is a label map: foreground = 1;
* otherwise foreground = grey value >= 128.

JPEG masks (Kvasir-SEG) carry compression noise near the lesion border, so a
few grey values are expected. A mask is rejected as *not binary* when more
than ``MAX_GREY_FRACTION`` (2%) of its pixels are *mid-grey*, i.e. have a value
in ``[GREY_LOW, GREY_HIGH] = [32, 223]``: far from both black and white.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .validation import check_positive_int

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
GREY_LOW, GREY_HIGH = 32, 223  # grey values this far from 0 and 255 are "mid-grey"
MAX_GREY_FRACTION = 0.02  # more mid-grey pixels than this: the mask is not binary
ZOOM_RANGE = (0.9, 1.1)  # random zoom factor of the training augmentation
KVASIR_URL = "https://datasets.simula.no/downloads/kvasir-seg.zip"



def _check_index(i: object, n: int) -> int:
    """Python-style index into ``n`` items (negative counts from the end)."""
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
        raise TypeError(f"index must be an integer, got {type(i).__name__}")
    if not -n <= i < n:
        raise IndexError(f"index {i} out of range for a dataset of {n} samples")
    return int(i) % n


# --------------------------------------------------------------------------- synthetic


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled uniform noise on a (cells+1)^2 grid: (size, size) in [0, 1]."""
    grid = rng.random((cells + 1, cells + 1))
    t = np.linspace(0.0, cells, size)
    i0 = np.minimum(t.astype(int), cells - 1)
    f = (t - i0)[:, None]
    rows = grid[i0] * (1 - f) + grid[i0 + 1] * f  # (size, cells+1): interpolate along y
    return rows[:, i0] * (1 - f.T) + rows[:, i0 + 1] * f.T  # then along x


def _window(centre_y: float, centre_x: float, reach: float, size: int) -> tuple[slice, slice]:
    """Pixel rows and columns within ``reach`` (in image units) of a centre: the only ones worth computing."""
    def span(c: float) -> slice:
        return slice(max(0, int((c - reach) * (size - 1))), min(size, int((c + reach) * (size - 1)) + 2))
    return span(centre_y), span(centre_x)


def _polyp(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray):
    """One polyp, a lobed ellipse: its window (rows, cols) and, inside it, mask (bool) and height in [0, 1]."""
    size = yy.shape[0]
    # Radii from a few pixels to a quarter of the image: small polyps are the hard ones.
    radius = max(2.0 / size, float(np.exp(rng.uniform(np.log(0.04), np.log(0.25)))))
    cy, cx = rng.uniform(0.15, 0.85, size=2)
    aspect = rng.uniform(0.6, 1.0)
    angle = rng.uniform(0, np.pi)
    amps = rng.uniform(0.0, 0.1, size=3)
    phases = rng.uniform(0, 2 * np.pi, size=3)
    win = _window(cy, cx, 1.3 * radius, size)  # the outline never reaches beyond 1.3 * radius
    dy, dx = yy[win] - cy, xx[win] - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / aspect
    rho, theta = np.hypot(u, v), np.arctan2(v, u)
    # A lobed outline r(theta) = radius * (1 + sum a_k cos(k theta + phi_k)), sum |a_k| <= 0.3:
    # never below 0.7 * radius, so the pixel nearest the centre is always inside.
    outline = radius * (1 + sum(a * np.cos(k * theta + p) for k, a, p in zip((2, 3, 4), amps, phases)))
    inside = rho < outline
    height = np.where(inside, np.sqrt(np.clip(1 - (rho / outline) ** 2, 0, 1)), 0.0)
    return win, inside, height


def synthetic_polyp(
    seed: int, index: int, size: int = 224, paint_polyps: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic endoscopy frame and its mask, determined by ``(seed, index)``.

    Returns ``image`` float32 (size, size, 3) in [0, 1] and ``mask`` bool (size, size)
    with at least one polyp pixel. ``paint_polyps=False`` draws the same frame
    without its polyps (same mask): the two images differ only under the mask.
    """
    rng = np.random.default_rng([seed, index])
    axis = np.linspace(0, 1, size, dtype=np.float32)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")

    # Mucosa: pink, with blotchy texture and a finer grain.
    base = np.array([0.82, 0.45, 0.42], dtype=np.float32) + rng.uniform(-0.06, 0.06, size=3).astype(np.float32)
    texture = 0.10 * (_smooth_noise(rng, size, 6) - 0.5) + 0.05 * (_smooth_noise(rng, size, 24) - 0.5)
    # Folds: dark curved ridges across the lumen.
    direction = rng.uniform(0, np.pi)
    along = xx * np.cos(direction) + yy * np.sin(direction) + 0.15 * _smooth_noise(rng, size, 3)
    folds = np.maximum(0.0, np.sin(2 * np.pi * rng.uniform(1.5, 4.0) * along)) ** 8
    shade = 1.0 + texture - rng.uniform(0.1, 0.3) * folds
    # Vignetting: the endoscope's light falls off away from the centre.
    cy, cx = 0.5 + rng.uniform(-0.1, 0.1, size=2)
    shade *= 1.0 - rng.uniform(0.4, 0.7) * ((yy - cy) ** 2 + (xx - cx) ** 2) / 0.5
    image = (shade[..., None] * base).astype(np.float32)

    # Polyps: one, sometimes two or three; their union is the mask.
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(rng.choice([1, 2, 3], p=[0.7, 0.2, 0.1])):
        win, inside, height = _polyp(rng, yy, xx)
        mask[win] |= inside
        # Contrast varies from obvious to barely visible: a tint towards red or pale, lit from above.
        tint = rng.uniform(-0.25, 0.25, size=3) * rng.uniform(0.2, 1.0)
        lighting = 1.0 + 0.25 * height - 0.1 * np.gradient(height, axis=0) * size / 10
        if paint_polyps:
            patch = image[win]
            painted = np.clip(patch * (1 + tint) * lighting[..., None], 0, 1)
            image[win] = np.where(inside[..., None], painted, patch)

    # Specular highlights: small saturated spots, on polyps (domes catch light) and mucosa.
    for _ in range(rng.integers(2, 7)):
        hy, hx = rng.uniform(0.05, 0.95, size=2)
        r = rng.uniform(0.004, 0.02)
        win = _window(hy, hx, 4 * r, size)  # exp(-8) beyond 4 r: invisible
        spot = np.exp(-((yy[win] - hy) ** 2 + (xx[win] - hx) ** 2) / (2 * r**2))
        image[win] += spot[..., None] * (1.0 - image[win])

    image += rng.normal(0.0, 0.01, size=image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0), mask


class SyntheticPolyps(Dataset):
    """``n`` synthetic endoscopy frames with exact polyp masks, generated on the fly.

    ``ds[i]`` is ``(image, mask)``: image float32 (3, size, size) in [0, 1], mask
    float32 (1, size, size) in {0, 1}, never empty. Sample ``i`` depends only on
    ``(seed, i)``, so two datasets with the same seed agree sample by sample,
    in any order and in any DataLoader worker.
    """

    def __init__(self, n: int, size: int = 224, seed: int = 0) -> None:
        self.n = check_positive_int("n", n)
        self.size = check_positive_int("size", size)
        if size < 16:
            raise ValueError(f"size must be at least 16 pixels, got {size}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = synthetic_polyp(self.seed, _check_index(i, self.n), self.size)
        # Layout and dtype in NumPy: small torch ops cost more than the drawing itself on a busy CPU.
        return (
            torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            torch.from_numpy(mask[None].astype(np.float32)),
        )

    def __repr__(self) -> str:
        return f"SyntheticPolyps(n={self.n}, size={self.size}, seed={self.seed})"


# --------------------------------------------------------------------------- folders


def _index_folder(folder: Path, kind: str) -> dict[str, Path]:
    """Map file stem -> path for the image files of ``folder``; reject an empty folder and duplicate stems."""
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            if p.stem in files:
                raise ValueError(
                    f"two {kind} files share the stem {p.stem!r}: {files[p.stem].name} and {p.name} in {folder}"
                )
            files[p.stem] = p
    if not files:
        raise ValueError(f"{kind} folder {folder} holds no image files (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


def _unmatched(names: Sequence[str], kind: str, other: str, folder: Path) -> ValueError:
    shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
    return ValueError(f"{len(names)} {kind} without a matching {other} in {folder}: {shown}")


def _open(path: Path, mode: str) -> np.ndarray:
    """Read an image file as uint8 in Pillow ``mode``; unreadable files raise ValueError naming the path."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode))
    except FileNotFoundError:
        raise FileNotFoundError(f"file vanished since the dataset was indexed: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot read image file {path}: {err}") from None


def binarise_mask(grey: np.ndarray, path: Path | str = "<array>") -> np.ndarray:
    """8-bit grey mask (H, W) -> bool (H, W), by the rule in the module docstring.

    Raises ``ValueError`` when more than ``MAX_GREY_FRACTION`` of the pixels are mid-grey.
    """
    if grey.max() <= 1:
        return grey == 1
    mid = np.count_nonzero((grey >= GREY_LOW) & (grey <= GREY_HIGH)) / grey.size
    if mid > MAX_GREY_FRACTION:
        raise ValueError(
            f"mask {path} is not binary: {mid:.1%} of its pixels are mid-grey (values {GREY_LOW}-{GREY_HIGH}), "
            f"at most {MAX_GREY_FRACTION:.0%} allowed"
        )
    return grey >= 128


def _resize(stack: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of every channel of (C, H, W) float32 with the same filter: (C, height, width)."""
    if stack.shape[1:] == (height, width):
        return stack
    channels = (Image.fromarray(np.ascontiguousarray(c, dtype=np.float32)) for c in stack)  # mode "F"
    return np.stack([np.asarray(c.resize((width, height), Image.BILINEAR)) for c in channels])


def _zoom(stack: np.ndarray, factor: float) -> np.ndarray:
    """Scale (C, S, S) about its centre by ``factor``; crop back to S (zoom in) or pad with zeros (out)."""
    s = stack.shape[-1]
    z = max(1, round(s * factor))
    scaled = _resize(stack, z, z)
    if z >= s:
        o = (z - s) // 2
        return scaled[:, o : o + s, o : o + s]
    out = np.zeros_like(stack)
    o = (s - z) // 2
    out[:, o : o + z, o : o + z] = scaled
    return out


def augment(stack: np.ndarray, size: int, generator: torch.Generator | None = None) -> np.ndarray:
    """LDNet's training augmentation, the same draw for every channel of (C, H, W) float32.

    Resize to ``size * 256 / 224``, random ``size`` crop, random zoom in
    ``ZOOM_RANGE``, random horizontal and vertical flips, random rotation by a
    multiple of 90 degrees. Returns (C, size, size). Random numbers come from
    torch (``generator`` or the global one), so ``seed_everything`` and
    DataLoader workers seed it.
    """
    big = round(size * 256 / 224)
    stack = _resize(stack, big, big)
    top, left = (int(torch.randint(0, big - size + 1, (1,), generator=generator)) for _ in range(2))
    stack = stack[:, top : top + size, left : left + size]
    lo, hi = ZOOM_RANGE
    stack = _zoom(stack, lo + (hi - lo) * float(torch.rand((), generator=generator)))
    flip_h, flip_v = (bool(torch.randint(0, 2, (1,), generator=generator)) for _ in range(2))
    if flip_h:
        stack = stack[:, :, ::-1]
    if flip_v:
        stack = stack[:, ::-1, :]
    return np.rot90(stack, k=int(torch.randint(0, 4, (1,), generator=generator)), axes=(1, 2))


class PolypFolder(Dataset):
    """Image/mask pairs from ``root/images`` and ``root/masks``, matched by file stem.

    This is the layout of Kvasir-SEG and CVC-ClinicDB. Images may be .png,
    .jpg, .jpeg, .tif, .tiff or .bmp; a mask may use another suffix than its
    image. ``ds[i]`` is ``(image, mask)``: float32 (3, size, size) in [0, 1]
    and float32 (1, size, size) in {0, 1}.

    ``train=True`` applies :func:`augment`; ``train=False`` only resizes to
    ``size x size``. Image and mask always go through one resampling together
    (the mask as a float channel, thresholded at 0.5 afterwards), so they stay
    aligned pixel for pixel.

    Raises at construction: ``FileNotFoundError`` if a folder is missing,
    ``ValueError`` if a folder is empty or an image has no mask (or a mask no
    image). Raises when a sample is read (or for all of them, :meth:`verify`):
    ``ValueError`` for an unreadable file, an image and mask of different
    sizes, or a mask that is not binary (see :func:`binarise_mask`).
    """

    def __init__(self, root: str | Path, size: int = 224, train: bool = True) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root not found: {self.root}")
        self.size = check_positive_int("size", size)
        self.train = bool(train)
        for sub, kind in (("images", "image"), ("masks", "mask")):
            if not (self.root / sub).is_dir():
                raise FileNotFoundError(
                    f"{kind} folder not found: {self.root / sub} (expected <root>/images and <root>/masks)"
                )
        images = _index_folder(self.root / "images", "image")
        masks = _index_folder(self.root / "masks", "mask")
        if images.keys() - masks.keys():
            raise _unmatched(list(images.keys() - masks.keys()), "images", "mask", self.root / "masks")
        if masks.keys() - images.keys():
            raise _unmatched(list(masks.keys() - images.keys()), "masks", "image", self.root / "images")
        self.pairs = [(images[s], masks[s]) for s in sorted(images)]

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Pair ``i`` at its stored size, checked: image uint8 (H, W, 3), mask bool (H, W)."""
        image_path, mask_path = self.pairs[_check_index(i, len(self.pairs))]
        image, grey = _open(image_path, "RGB"), _open(mask_path, "L")
        if image.shape[:2] != grey.shape:
            raise ValueError(
                f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} "
                f"is {grey.shape[1]}x{grey.shape[0]} (width x height)"
            )
        return image, binarise_mask(grey, mask_path)

    def verify(self) -> None:
        """Read every pair once and raise on the first problem (slow on a full data set)."""
        for i in range(len(self)):
            self.load(i)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load(i)
        stack = np.concatenate([image.transpose(2, 0, 1) / np.float32(255), mask[None]]).astype(np.float32)
        stack = augment(stack, self.size) if self.train else _resize(stack, self.size, self.size)
        out = torch.from_numpy(np.ascontiguousarray(stack))
        return out[:3].clamp(0, 1), (out[3:] >= 0.5).float()

    def __repr__(self) -> str:
        return f"PolypFolder({str(self.root)!r}, size={self.size}, train={self.train}, n={len(self)})"


# --------------------------------------------------------------------------- download


def _fetch(url: str, destination: Path) -> None:
    """Download ``url`` to ``destination`` (tests replace this function to stay offline)."""
    with urllib.request.urlopen(url, timeout=60) as response, open(destination, "wb") as out:
        shutil.copyfileobj(response, out)


def _safe_extract(archive: zipfile.ZipFile, target: Path) -> None:
    """Extract into ``target``, refusing entries that would land outside it (zip slip)."""
    target = target.resolve()
    for member in archive.namelist():
        if not (target / member).resolve().is_relative_to(target):
            raise ValueError(f"refusing to extract {member!r}: it points outside {target}")
    archive.extractall(target)


def download_kvasir(root: str | Path, url: str = KVASIR_URL) -> Path:
    """Download Kvasir-SEG (1000 polyp images with masks) and unpack it under ``root``.

    Returns ``root/Kvasir-SEG``, ready for ``PolypFolder``. Does nothing but
    check the layout if that folder already holds ``images/`` and ``masks/``.
    The zip (about 45 MB) is removed after unpacking. Needs internet access.

    Raises ``ConnectionError`` if the download fails, ``ValueError`` if it is
    not a zip or lacks ``Kvasir-SEG/images`` and ``Kvasir-SEG/masks``.
    """
    root = Path(root)
    dataset = root / "Kvasir-SEG"
    if not ((dataset / "images").is_dir() and (dataset / "masks").is_dir()):
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            archive_path = Path(tmp) / "kvasir-seg.zip"
            try:
                _fetch(url, archive_path)
            except OSError as err:  # URLError, timeouts, refused connections
                raise ConnectionError(
                    f"could not download {url} ({err}); without internet, fetch the zip elsewhere and unpack it "
                    f"so that {dataset}/images and {dataset}/masks exist"
                ) from err
            if not zipfile.is_zipfile(archive_path):
                raise ValueError(f"download from {url} is not a zip file ({archive_path.stat().st_size} bytes)")
            with zipfile.ZipFile(archive_path) as archive:
                _safe_extract(archive, root)
    missing = [str(dataset / sub) for sub in ("images", "masks") if not (dataset / sub).is_dir()]
    if missing:
        found = sorted(p.name for p in root.iterdir())
        raise ValueError(
            f"Kvasir-SEG archive did not unpack to the expected layout: missing {missing}; {root} holds {found}"
        )
    PolypFolder(dataset)  # raises if images and masks do not pair up
    return dataset
