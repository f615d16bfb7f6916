"""Score a segmentation model on polyp test sets the way LDNet's ``test.py`` does.

What LDNet's code does (ReaFly/LDNet: ``test.py``, ``utils/metrics.py``,
``datasets/Polyp.py``), and what this module does the same way:

* every test image and its mask are resized to 224 x 224 (bilinear), with no
  colour normalisation; the model's finest output goes through a sigmoid;
* one image at a time: prediction and mask are thresholded at 0.5 (``>= 0.5``),
  the pixel counts TP, FP, FN, TN give nine ratios (recall, specificity,
  precision, F1 = Dice, F2, accuracy, IoU of polyp and of background, their
  mean), and each ratio is **averaged over the images** of a data set;
* each test set is scored on its own (LDNet lists Kvasir/test,
  CVC-ClinicDB/test, CVC-ColonDB and ETIS-LaribPolypDB).

Where it differs: resizing happens on floats (:class:`~esa_tutorial.data.PolypFolder`),
LDNet's on 8-bit Pillow images, so a pixel at the 0.5 boundary can fall the
other way; and by default an undefined ratio (0/0, e.g. Dice on an image with
no polyp and no predicted polyp) is scored by the rule of
:mod:`esa_tutorial.metrics`: 1 if the prediction is exact, else 0.

**LDNet's empty-mask quirk.** LDNet's ``evaluate`` sets ``TP = 1`` whenever an
image has no true positive (it builds the new count as a tensor on the GPU with
``.cuda()``, so this step also fails without a GPU). That gives an empty
prediction on an empty mask Dice 1, as our rule does, but it also gives a
prediction that misses the polyp entirely a small positive Dice instead of 0
(e.g. 10 polyp pixels, 2 predicted elsewhere: 2/(2+2+10) = 0.14), a wrong
polyp on a polyp-free image recall 1, and it adds 1 to the accuracy's
numerator. ``tp_quirk=True`` (``--ldnet-tp-quirk``) reproduces it, to compare
with numbers computed by LDNet's code; it is not the default.

Folder layouts recognised by :func:`find_pairs`:

* ``images/`` + ``masks/``, matched by file stem: Kvasir-SEG as downloaded by
  :func:`~esa_tutorial.data.download_kvasir`, and the test folders that LDNet's
  ``datasets/Polyp.py`` reads (``<set>/images``, ``<set>/masks``), as in
  PraNet's widely shared ``TestDataset``;
* ``Original/`` + ``Ground Truth/``: CVC-ClinicDB's own archive, as its data
  set pages describe it (not checked against the archive here);
* ``ETIS-LaribPolypDB/`` + ``Ground Truth/`` with masks ``p<n>``: ETIS's own
  archive (names from public loaders; not checked against the archive here);
* one folder of ``<n>.bmp`` with masks ``p<n>.bmp`` (and ``s<n>``, ``c<n>``
  files, ignored): CVC-ColonDB's own archive, as its page describes it (not
  checked against the archive here).

A folder that is none of these is searched one and two levels down, so
``python -m esa_tutorial.evaluate best.pt TestDataset/`` scores every set in it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..checkpoints import MAGIC
from ..data.folder import IMAGE_SUFFIXES, PolypFolder
from ..metrics import METRICS, confusion, scores_from_confusion
from ..validation import check_positive_int
from ..files import PathLike

LDNET_TEST_SIZE = 224  # LDNet's test transform: Resize((224, 224))
THRESHOLD = 0.5  # on the sigmoid of the prediction and on the mask
# LDNet's names for the nine ratios (utils/metrics.py), in LDNet's print order.
LDNET_NAMES = {
    "recall": "recall", "specificity": "specificity", "precision": "precision", "dice": "F1", "f2": "F2",
    "accuracy": "ACC_overall", "iou_polyp": "IoU_poly", "iou_background": "IoU_bg", "miou": "IoU_mean",
}
IMAGE_DIRS = ("images", "Original", "ETIS-LaribPolypDB")
MASK_DIRS = ("masks", "Ground Truth", "GroundTruth")
KNOWN_SETS = (  # (pattern in a folder's path, the data set's name)
    (r"kvasir", "Kvasir-SEG"), (r"clinic", "CVC-ClinicDB"), (r"colon", "CVC-ColonDB"),
    (r"etis", "ETIS-LaribPolypDB"), (r"cvc-?300|endoscene", "CVC-300"),
)


def ldnet_image_scores(probs: torch.Tensor, target: torch.Tensor, tp_quirk: bool = False) -> dict[str, torch.Tensor]:
    """The nine ratios of LDNet's ``evaluate``, per image: float64 (B,) each.

    Args:
        probs: (B, 1, H, W) probabilities (sigmoid of the logits), thresholded at 0.5.
        target: (B, 1, H, W) masks in [0, 1], thresholded at 0.5.
        tp_quirk: LDNet's ``TP := 1`` on images without a true positive (see the module docstring).
    """
    if not isinstance(probs, torch.Tensor) or not bool(torch.isfinite(probs).all()):
        raise ValueError("ldnet_image_scores expects finite probabilities (a tensor); got NaN, inf or another type")
    counts = confusion((probs >= THRESHOLD).to(torch.uint8), (target >= THRESHOLD).to(torch.uint8))
    if tp_quirk:
        counts["tp"] = torch.where(counts["tp"] == 0, torch.ones_like(counts["tp"]), counts["tp"])
    return scores_from_confusion(counts)


def _stem_match(images: dict[str, Path], masks: dict[str, Path], where: Path) -> list[tuple[Path, Path]]:
    """Pair each image with the mask of the same stem, or of stem ``p<stem>``; every image needs one."""
    pairs, lonely = [], []
    for stem, image in sorted(images.items()):
        mask = masks.get(stem) or masks.get(f"p{stem}")
        if mask is None:
            lonely.append(image.name)
        else:
            pairs.append((image, mask))
    if lonely:
        shown = ", ".join(lonely[:5]) + (", ..." if len(lonely) > 5 else "")
        raise ValueError(f"{len(lonely)} images in {where} without a mask (same name, or p<name>): {shown}")
    return pairs


def _image_files(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")}


def find_pairs(folder: PathLike) -> tuple[str, list[tuple[Path, Path]]] | None:
    """``(layout, [(image, mask), ...])`` if ``folder`` is one test set in a known layout, else ``None``.

    Raises ``ValueError`` naming the files when a layout is recognised but
    some image lacks its mask (or the folders are empty).
    """
    root = Path(folder)
    for image_dir in IMAGE_DIRS:
        for mask_dir in MASK_DIRS:
            if (root / image_dir).is_dir() and (root / mask_dir).is_dir():
                if (image_dir, mask_dir) == ("images", "masks"):
                    return "images/ + masks/", PolypFolder(root, train=False).pairs
                images, masks = _image_files(root / image_dir), _image_files(root / mask_dir)
                if not images:
                    raise ValueError(f"image folder {root / image_dir} holds no image files")
                return f"{image_dir}/ + {mask_dir}/", _stem_match(images, masks, root / image_dir)
    files = _image_files(root) if root.is_dir() else {}
    masks = {s: p for s, p in files.items() if re.fullmatch(r"p\d+", s) and s[1:] in files}
    if masks:  # CVC-ColonDB's archive: <n>.bmp beside p<n>.bmp (s<n>, c<n>: other annotations)
        images = {s: p for s, p in files.items() if s.isdigit()}
        return "<n> + p<n> files", _stem_match(images, masks, root)
    return None


@dataclass
class EvalSet:
    """One test set found by :func:`find_datasets`: a name, its folder, its layout and its (image, mask) pairs."""

    name: str
    root: Path
    layout: str
    pairs: list[tuple[Path, Path]] = field(repr=False)

    def dataset(self, size: int = LDNET_TEST_SIZE) -> PolypFolder:
        """The pairs as a :class:`~esa_tutorial.data.PolypFolder`: images (3, size, size), binary masks (1, size, size)."""
        return PolypFolder(self.root, size=size, train=False, pairs=self.pairs)


def known_name(path: Path) -> str | None:
    """The public data set named by a folder's last two path parts (``Kvasir/test`` -> Kvasir-SEG), if any."""
    text = "/".join(Path(path).parts[-2:]).lower()
    return next((name for pattern, name in KNOWN_SETS if re.search(pattern, text)), None)


def find_datasets(folder: PathLike, depth: int = 2) -> list[EvalSet]:
    """The test sets in ``folder``: itself if it is one (:func:`find_pairs`), else those up to ``depth`` levels down.

    Names are the path below ``folder`` (``Kvasir/test``), or the folder's own
    name when it is a test set itself. Raises ``FileNotFoundError`` for a
    missing folder and ``ValueError`` when no test set is found.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"test folder not found: {root}")
    found = _search(root, root, depth)
    if not found:
        raise ValueError(
            f"no test set found in {root}: expected images/ + masks/ (Kvasir-SEG, LDNet's and PraNet's test "
            "folders), Original/ + Ground Truth/ (CVC-ClinicDB), ETIS-LaribPolypDB/ + Ground Truth/ (ETIS) or "
            f"<n>.bmp + p<n>.bmp files (CVC-ColonDB), in the folder or up to {depth} levels below"
        )
    return found


def _search(root: Path, folder: Path, depth: int) -> list[EvalSet]:
    hit = find_pairs(folder)
    if hit is not None:
        name = folder.name if folder == root else folder.relative_to(root).as_posix()
        return [EvalSet(name, folder, hit[0], hit[1])]
    if depth == 0:
        return []
    subfolders = [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    return [t for sub in subfolders for t in _search(root, sub, depth - 1)]


def load_model(path: PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """A model in eval mode from either kind of file, told apart by the file's first bytes.

    A checkpoint written by ``python -m esa_tutorial.train`` (``save_checkpoint``'s
    header) is rebuilt with :func:`esa_tutorial.train.model_from_checkpoint`;
    any other file is read as a state dict of LDNet's code
    (:meth:`LDNet.from_ldnet_checkpoint <esa_tutorial.LDNet.from_ldnet_checkpoint>`).
    """
    from .. import LDNet  # the model and the training code: only needed here
    from ..train import model_from_checkpoint

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no checkpoint file at {str(file)!r}")
    with file.open("rb") as f:
        package = f.read(len(MAGIC)) == MAGIC
    if package:
        return model_from_checkpoint(file, device)
    return LDNet.from_ldnet_checkpoint(file).to(device)


def probabilities(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """(B, 3, H, W) -> (B, 1, H, W): the sigmoid of the model's first (finest) output, as LDNet's ``evaluate``."""

    def predict(images: torch.Tensor) -> torch.Tensor:
        outputs = model(images)
        return torch.sigmoid(outputs[0] if isinstance(outputs, (tuple, list)) else outputs)

    return predict


@dataclass
class Scores:
    """A test set's scores: ``mean[name]`` over its ``n`` images, and ``per_image[name]`` (float64 (n,))."""

    test_set: EvalSet
    n: int
    mean: dict[str, float]
    per_image: dict[str, torch.Tensor] = field(repr=False)


@torch.no_grad()
def score_test_set(
    predict: Callable[[torch.Tensor], torch.Tensor],
    test_set: EvalSet,
    size: int = LDNET_TEST_SIZE,
    tp_quirk: bool = False,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> Scores:
    """Score ``predict`` (images (B, 3, size, size) -> probabilities (B, 1, size, size)) on one test set.

    Per image at ``size`` (LDNet: 224), thresholds 0.5, the mean of every ratio
    over the images. ``batch_size`` only groups the forward passes (LDNet's
    test.py uses 1; in eval mode the scores are the same up to float rounding).
    """
    check_positive_int("size", size)
    loader = DataLoader(test_set.dataset(size), batch_size=check_positive_int("batch_size", batch_size),
                        shuffle=False, num_workers=num_workers)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in METRICS}
    for images, masks in loader:
        probs = predict(images.to(device)).float().cpu()
        if probs.shape != masks.shape:
            raise ValueError(f"the model's probabilities are {tuple(probs.shape)} for masks {tuple(masks.shape)}: "
                             "expected one full-size map per image")
        for name, value in ldnet_image_scores(probs, masks, tp_quirk).items():
            parts[name].append(value)
    per_image = {name: torch.cat(values) for name, values in parts.items()}
    n = len(per_image["dice"])
    return Scores(test_set, n, {name: float(v.mean()) for name, v in per_image.items()}, per_image)


def format_scores(scores: Scores, size: int = LDNET_TEST_SIZE, tp_quirk: bool = False) -> str:
    """One test set's table: every ratio with LDNet's name and its mean over the images."""
    t = scores.test_set
    known = known_name(t.root)
    title = f"{t.name}" + (f" ({known})" if known and known != t.name else "")
    rule = "LDNet's TP := 1 quirk" if tp_quirk else "0/0 scored 1 if exact, else 0"
    lines = [f"{title}: {scores.n} images in {t.root} [{t.layout}], at {size}x{size}, threshold {THRESHOLD}, {rule}",
             f"  {'metric':<16}{'LDNet name':<13}{'mean':>8}"]
    order = ("dice", "iou_polyp", "miou", "recall", "precision", "specificity", "f2", "accuracy", "iou_background")
    lines += [f"  {name:<16}{LDNET_NAMES[name]:<13}{scores.mean[name]:>8.4f}" for name in order]
    return "\n".join(lines)


def format_summary(results: Sequence[Scores]) -> str:
    """One row per test set: images, mean Dice, mean IoU (polyp), mean IoU (polyp and background)."""
    width = max([len("test set")] + [len(r.test_set.name) for r in results]) + 2
    lines = [f"{'test set':<{width}}{'images':>7}{'mDice':>9}{'mIoU':>9}{'IoU_mean':>10}"]
    lines += [f"{r.test_set.name:<{width}}{r.n:>7}{r.mean['dice']:>9.4f}{r.mean['iou_polyp']:>9.4f}"
              f"{r.mean['miou']:>10.4f}" for r in results]
    lines.append("mDice, mIoU: Dice and IoU of the polyp, mean over images; IoU_mean: LDNet's mean of the polyp "
                 "and background IoU")
    return "\n".join(lines)


__all__ = [
    "LDNET_NAMES", "LDNET_TEST_SIZE", "THRESHOLD", "Scores", "EvalSet", "find_datasets", "find_pairs",
    "format_scores", "format_summary", "known_name", "ldnet_image_scores", "load_model", "probabilities",
    "score_test_set",
]
