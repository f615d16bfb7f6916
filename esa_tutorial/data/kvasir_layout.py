"""Folders in Kvasir-SEG's layout: write a generated stand-in, split a folder into train/val/test.

Kvasir-SEG (as :func:`~esa_tutorial.data.download_kvasir` unpacks it) is a
folder with ``images/`` and ``masks/``, one mask per image under the same file
stem. :func:`write_synthetic_folder` writes :class:`SyntheticPolyps` frames in
that layout, so that code written for Kvasir-SEG runs where it cannot be
downloaded (the book's CI). :func:`split_folder` divides such a folder into
``train/``, ``val/`` and ``test/`` folders of the same layout, by a seeded
permutation: LDNet's own splits were never published, so any split is a
choice, and this one is recorded in ``split.json`` beside the three folders.

Every file goes through :mod:`esa_tutorial.files` (atomic, fsynced); nothing
that exists is overwritten.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..files import PathLike, atomic_write_bytes, write_json
from ..validation import check_finite, check_positive_int, check_seed
from .folder import PolypFolder
from .synthetic import SyntheticPolyps

SPLIT_NAMES = ("train", "val", "test")
SPLIT_RECORD = "split.json"


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_synthetic_folder(root: PathLike, n: int, size: int = 96, seed: int = 0) -> Path:
    """Write ``n`` generated polyp frames as ``root/images/<i>.png`` and ``root/masks/<i>.png``.

    Image ``i`` is ``SyntheticPolyps(n, size, seed)[i]`` stored as 8-bit RGB
    (3, size, size) -> (size, size, 3); its mask as 8-bit grey, 0 or 255. The
    result reads back with :class:`~esa_tutorial.data.PolypFolder` (masks
    exactly, images to within 8-bit rounding). Returns ``root``.

    Raises ``FileExistsError`` if ``root/images`` or ``root/masks`` exists
    (nothing is overwritten), ``ValueError`` for a bad ``n``, ``size`` or ``seed``.
    """
    root = Path(root)
    frames = SyntheticPolyps(check_positive_int("n", n), check_positive_int("size", size), check_seed(seed))
    taken = [str(root / sub) for sub in ("images", "masks") if (root / sub).exists()]
    if taken:
        raise FileExistsError(f"write_synthetic_folder: {', '.join(taken)} exists already; "
                              "give a new folder (nothing is overwritten)")
    digits = len(str(n - 1))
    for i in range(n):
        image, mask = frames[i]
        rgb = np.round(image.numpy().transpose(1, 2, 0) * 255).astype(np.uint8)
        grey = (mask[0].numpy() * 255).astype(np.uint8)
        name = f"{i:0{digits}d}.png"
        atomic_write_bytes(_png(rgb), root / "images" / name)
        atomic_write_bytes(_png(grey), root / "masks" / name)
    return root


def split_plan(stems: list[str], val: float, test: float, seed: int) -> dict[str, list[str]]:
    """Which stems go to train, val and test: a seeded permutation of the sorted stems, cut in three.

    ``round(n * val)`` and ``round(n * test)`` stems (at least one each) go
    to val and test; the rest, which must be at least one, to train. Each
    part is listed in sorted order.
    """
    val = check_finite("val", val, 0.0, strict=True)
    test = check_finite("test", test, 0.0, strict=True)
    if val + test >= 1:
        raise ValueError(f"val + test must be below 1 to leave training images, got {val} + {test}")
    ordered = sorted(stems)
    n = len(ordered)
    n_val, n_test = max(1, round(n * val)), max(1, round(n * test))
    if n_val + n_test >= n:
        raise ValueError(f"{n} images are too few to hold out {n_val} for val and {n_test} for test "
                         "and keep one for training")
    order = np.random.default_rng(check_seed(seed)).permutation(n)
    picked = [ordered[i] for i in order]
    parts = {"val": picked[:n_val], "test": picked[n_val:n_val + n_test], "train": picked[n_val + n_test:]}
    return {name: sorted(parts[name]) for name in SPLIT_NAMES}


def split_folder(source: PathLike, target: PathLike, val: float = 0.1, test: float = 0.1,
                 seed: int = 0) -> dict[str, Path]:
    """Copy the pairs of ``source`` (``images/`` + ``masks/``) into ``target/{train,val,test}``.

    The parts are :func:`split_plan` of the pairs' stems; file names and bytes
    are kept, so each part is a folder in the same layout (for
    :class:`~esa_tutorial.data.PolypFolder`, ``TrainConfig(data=, val_data=)``
    and :mod:`esa_tutorial.evaluate`). ``target/split.json`` records the
    source, the seed and the stems of each part.

    Run again with the same arguments on a finished split, it returns the
    folders without writing. Returns ``{"train": path, "val": path, "test": path}``.

    Raises ``FileNotFoundError``/``ValueError`` from :class:`PolypFolder` for a
    source that is not in the layout, ``ValueError`` for fractions that leave
    no training image, and ``FileExistsError`` if ``target`` holds anything
    else than this very split (nothing is overwritten).
    """
    source, target = Path(source), Path(target)
    pairs = {image.stem: (image, mask) for image, mask in PolypFolder(source, train=False).pairs}
    plan = split_plan(list(pairs), val, test, seed)
    record = {"source": str(source), "seed": seed, "val": val, "test": test, "parts": plan}
    folders = {name: target / name for name in SPLIT_NAMES}
    if target.exists():
        written = target / SPLIT_RECORD
        if written.is_file() and json.loads(written.read_text()) == record:
            return folders
        raise FileExistsError(f"split_folder: {target} exists and does not hold this split "
                              f"({SPLIT_RECORD} missing or different); give a new folder")
    for name, stems in plan.items():
        for stem in stems:
            for path, sub in zip(pairs[stem], ("images", "masks")):
                atomic_write_bytes(path.read_bytes(), folders[name] / sub / path.name)
    write_json(record, target / SPLIT_RECORD)  # last: its presence means the split is complete
    return folders
