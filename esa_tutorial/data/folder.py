"""Image/mask folders (the Kvasir-SEG and CVC-ClinicDB layout) and an augmenting wrapper for any pair dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..validation import check_index, check_positive_int
from .augment import AugmentRecipe, pair_to_tensors, resize_float, sample_rng
from .images import open_image, image_to_float, mask_from_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


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


def _resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear resize of image (H, W, 3) and mask (H, W) to size x size; the mask thresholded at 0.5."""
    stack = np.concatenate([image, mask[..., None].astype(np.float32)], axis=2)
    stack = resize_float(stack, size, size)
    return np.clip(stack[..., :3], 0.0, 1.0), stack[..., 3] >= 0.5


class PolypFolder(Dataset):
    """Image/mask pairs from ``root/images`` and ``root/masks``, matched by file stem.

    This is the layout of Kvasir-SEG and CVC-ClinicDB. Images may be .png,
    .jpg, .jpeg, .tif, .tiff or .bmp at any bit depth; a mask may use another
    suffix than its image. Mask files are binarised by the rules of
    :mod:`esa_tutorial.data.images`. ``ds[i]`` is ``(image, mask)``: float32
    (3, size, size) in [0, 1] and float32 (1, size, size) in {0, 1}.

    ``train=True`` applies :class:`~esa_tutorial.data.AugmentRecipe`
    (LDNet's steps, sizes scaled to ``size``: ``AugmentRecipe.for_size(size)``);
    ``train=False`` only resizes to ``size x size`` (bilinear, the mask
    thresholded at 0.5). ``seed`` fixes the augmentation per ``(seed, epoch,
    index)`` (call :meth:`set_epoch` each epoch); ``seed=None`` draws it from
    torch's default generator, which DataLoader seeds per worker.

    ``pairs``: explicit ``(image, mask)`` paths for other layouts (the
    original CVC-ClinicDB, CVC-ColonDB and ETIS archives; see
    :func:`esa_tutorial.evaluate.find_pairs`) instead of ``root/images`` and ``root/masks``.

    Raises at construction: ``FileNotFoundError`` if a folder is missing,
    ``ValueError`` if a folder is empty or an image has no mask (or a mask no
    image). Raises when a sample is read (or for all of them, :meth:`verify`):
    ``ValueError`` naming the file for an unreadable file (truncated, corrupt,
    over Pillow's decompression-bomb limit), an image and mask of different
    sizes, or an ambiguous mask.
    """

    def __init__(self, root: str | Path, size: int = 224, train: bool = True, seed: int | None = None,
                 pairs: Sequence[tuple[Path, Path]] | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root not found: {self.root}")
        self.size = check_positive_int("size", size)
        self.train = bool(train)
        self.seed = seed
        self.epoch = 0
        self.recipe = AugmentRecipe.for_size(self.size)
        if pairs is not None:  # another layout, matched by the caller (esa_tutorial.evaluate.find_pairs)
            if not pairs:
                raise ValueError(f"no image/mask pairs given for {self.root}")
            self.pairs = [(Path(i), Path(m)) for i, m in pairs]
            return
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

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (only matters with a ``seed``)."""
        self.epoch = int(epoch)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Pair ``i`` at its stored size, checked: image float32 (H, W, 3) in [0, 1], mask bool (H, W)."""
        image_path, mask_path = self.pairs[check_index(i, len(self.pairs))]
        with open_image(image_path) as im:
            image = image_to_float(im, image_path)
        with open_image(mask_path) as im:
            mask = mask_from_image(im, mask_path)
        if image.shape[:2] != mask.shape:
            raise ValueError(
                f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} "
                f"is {mask.shape[1]}x{mask.shape[0]} (width x height)"
            )
        return image, mask

    def verify(self) -> None:
        """Read every pair once and raise on the first problem (slow on a full data set)."""
        for i in range(len(self)):
            self.load(i)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = check_index(i, len(self.pairs))
        image, mask = self.load(index)
        if self.train:
            image, mask = self.recipe(image, mask, sample_rng(self.seed, self.epoch, index))
        else:
            image, mask = _resize_pair(image, mask, self.size)
        return pair_to_tensors(image, mask)

    def __repr__(self) -> str:
        return f"PolypFolder({str(self.root)!r}, size={self.size}, train={self.train}, n={len(self)})"
