"""Training augmentation for image/mask pairs, with the steps of LDNet's code.

LDNet's training transform (``datasets/Polyp.py`` with the classes of
``utils/transform_multi.py`` in GitHub ReaFly/LDNet) is, in this order:

1. resize to 256 x 256;
2. horizontal flip with p = 0.5;
3. vertical flip with p = 0.5;
4. with p = 0.5, rotation about the centre by an angle drawn uniformly from
   [-90, 90] degrees (continuous), corners filled with 0;
5. with p = 0.5, zoom about the centre by a factor drawn uniformly from
   [0.9, 1.1] (zoom in crops the centre, zoom out pads with 0);
6. a random 224 x 224 crop, last.

:class:`AugmentRecipe` has these steps, order and probabilities
(``LDNET_RECIPE``), written here with Pillow and NumPy. Where this code
differs from LDNet's: the mask is resampled with nearest neighbour in every
step, so it stays binary (LDNet's code resizes the mask bilinearly and zooms it
with a cubic spline); the image is resized, rotated and zoomed bilinearly
(LDNet's code rotates with nearest neighbour and zooms with a cubic spline).

For smaller training images the sizes scale with the crop:
``AugmentRecipe.for_size(64)`` resizes to 73 (= round(64 * 256 / 224)) and
crops 64. That is a scaled version of the recipe, not LDNet's 256/224.

Random numbers come from a ``numpy.random.Generator`` or a ``torch.Generator``
passed in; nothing global is read or seeded.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..validation import check_index

Generator = Union[np.random.Generator, torch.Generator]


@dataclass(frozen=True)
class AugmentParams:
    """One draw of the recipe: what :meth:`AugmentRecipe.apply` does to a pair.

    ``angle`` in degrees, counter-clockwise (``None``: no rotation); ``zoom``
    the scale factor (``None``: no zoom); ``top``, ``left`` the crop's corner
    in the resized image.
    """

    hflip: bool = False
    vflip: bool = False
    angle: float | None = None
    zoom: float | None = None
    top: int = 0
    left: int = 0


def _uniform(rng: Generator, low: float, high: float) -> float:
    if isinstance(rng, torch.Generator):
        return low + (high - low) * float(torch.rand((), generator=rng, dtype=torch.float64))
    if isinstance(rng, np.random.Generator):
        return float(rng.uniform(low, high))
    raise TypeError(f"rng must be a numpy.random.Generator or a torch.Generator, got {type(rng).__name__}")


def _integer(rng: Generator, high: int) -> int:
    """Uniform integer in [0, high]."""
    if isinstance(rng, torch.Generator):
        return int(torch.randint(0, high + 1, (), generator=rng))
    return int(rng.integers(0, high + 1))


def resize_float(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of float32 (H, W, C) -> (height, width, C), channel by channel."""
    if image.shape[:2] == (height, width):
        return image
    channels = [Image.fromarray(np.ascontiguousarray(image[..., c], dtype=np.float32), mode="F")
                for c in range(image.shape[2])]
    return np.stack([np.asarray(c.resize((width, height), Image.BILINEAR)) for c in channels], axis=2)


def _resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of bool (H, W) -> (height, width): stays binary."""
    if mask.shape == (height, width):
        return mask
    im = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    return np.asarray(im.resize((width, height), Image.NEAREST)) > 127


def _rotate(image: np.ndarray, mask: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate both about the centre by ``angle`` degrees counter-clockwise, same size, corners 0."""
    channels = [Image.fromarray(np.ascontiguousarray(image[..., c], dtype=np.float32), mode="F")
                for c in range(image.shape[2])]
    image = np.stack([np.asarray(c.rotate(angle, Image.BILINEAR, fillcolor=0.0)) for c in channels], axis=2)
    m = Image.fromarray(mask.astype(np.uint8) * 255, mode="L").rotate(angle, Image.NEAREST, fillcolor=0)
    return image, np.asarray(m) > 127


def _zoom(image: np.ndarray, mask: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Scale both about the centre by ``factor``, same size: zoom in crops the centre, zoom out pads with 0."""
    h, w = mask.shape
    if factor >= 1:
        ch, cw = max(1, round(h / factor)), max(1, round(w / factor))
        top, left = (h - ch) // 2, (w - cw) // 2
        return (resize_float(image[top : top + ch, left : left + cw], h, w),
                _resize_mask(mask[top : top + ch, left : left + cw], h, w))
    zh, zw = max(1, round(h * factor)), max(1, round(w * factor))
    top, left = (h - zh) // 2, (w - zw) // 2
    out_image, out_mask = np.zeros_like(image), np.zeros_like(mask)
    out_image[top : top + zh, left : left + zw] = resize_float(image, zh, zw)
    out_mask[top : top + zh, left : left + zw] = _resize_mask(mask, zh, zw)
    return out_image, out_mask


@dataclass(frozen=True)
class AugmentRecipe:
    """Resize, flips, rotation, zoom, random crop (see the module docstring), applied to a pair alike.

    The defaults are the sizes and probabilities of LDNet's code
    (``LDNET_RECIPE``); :meth:`for_size` scales the sizes to another crop.
    """

    resize: int = 256
    crop: int = 224
    p_hflip: float = 0.5
    p_vflip: float = 0.5
    p_rotate: float = 0.5
    max_angle: float = 90.0
    p_zoom: float = 0.5
    zoom_range: tuple[float, float] = (0.9, 1.1)

    def __post_init__(self) -> None:
        if not (isinstance(self.crop, int) and isinstance(self.resize, int) and 0 < self.crop <= self.resize):
            raise ValueError(f"AugmentRecipe needs integers 0 < crop <= resize, got crop={self.crop!r}, "
                             f"resize={self.resize!r}")
        for name in ("p_hflip", "p_vflip", "p_rotate", "p_zoom"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)!r}")
        lo, hi = self.zoom_range
        if not 0 < lo <= hi:
            raise ValueError(f"zoom_range must satisfy 0 < low <= high, got {self.zoom_range!r}")

    @classmethod
    def for_size(cls, size: int, **overrides: object) -> "AugmentRecipe":
        """The recipe scaled to crop ``size``: resize to ``round(size * 256 / 224)``, same probabilities."""
        return replace(cls(), resize=round(size * 256 / 224), crop=size, **overrides)

    def draw(self, rng: Generator) -> AugmentParams:
        """Draw one set of parameters from ``rng`` (numpy or torch Generator)."""
        hflip = _uniform(rng, 0, 1) < self.p_hflip
        vflip = _uniform(rng, 0, 1) < self.p_vflip
        angle = _uniform(rng, -self.max_angle, self.max_angle) if _uniform(rng, 0, 1) < self.p_rotate else None
        zoom = _uniform(rng, *self.zoom_range) if _uniform(rng, 0, 1) < self.p_zoom else None
        slack = self.resize - self.crop
        return AugmentParams(hflip, vflip, angle, zoom, _integer(rng, slack), _integer(rng, slack))

    def apply(self, image: np.ndarray, mask: np.ndarray, params: AugmentParams) -> tuple[np.ndarray, np.ndarray]:
        """Apply ``params`` to image float32 (H, W, C) and mask bool (H, W).

        Returns image float32 (crop, crop, C) and mask bool (crop, crop).
        """
        if image.ndim != 3 or mask.shape != image.shape[:2]:
            raise ValueError(f"augment expects image (H, W, C) and mask (H, W) of one size, got "
                             f"{image.shape} and {mask.shape}")
        image = resize_float(image.astype(np.float32, copy=False), self.resize, self.resize)
        mask = _resize_mask(mask.astype(bool, copy=False), self.resize, self.resize)
        if params.hflip:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if params.vflip:
            image, mask = image[::-1], mask[::-1]
        if params.angle is not None:
            image, mask = _rotate(image, mask, params.angle)
        if params.zoom is not None:
            image, mask = _zoom(image, mask, params.zoom)
        t, l, c = params.top, params.left, self.crop
        if not (0 <= t <= self.resize - c and 0 <= l <= self.resize - c):
            raise ValueError(f"crop corner ({t}, {l}) does not fit a {c} crop of {self.resize}")
        image, mask = image[t : t + c, l : l + c], mask[t : t + c, l : l + c]
        return np.clip(np.ascontiguousarray(image), 0.0, 1.0), np.ascontiguousarray(mask)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw parameters from ``rng`` and apply them to the pair (see :meth:`apply`)."""
        return self.apply(image, mask, self.draw(rng))


LDNET_RECIPE = AugmentRecipe()
"""The sizes, steps and probabilities of LDNet's training transform (``datasets/Polyp.py``)."""


def augment_pair(
    image: np.ndarray, mask: np.ndarray, rng: Generator, recipe: AugmentRecipe = LDNET_RECIPE
) -> tuple[np.ndarray, np.ndarray]:
    """Augment image float32 (H, W, C) and mask bool (H, W) together with ``recipe``.

    Returns image float32 (crop, crop, C) in [0, 1] and mask bool (crop, crop).
    """
    return recipe(image, mask, rng)


def sample_rng(seed: int | None, epoch: int, index: int) -> np.random.Generator:
    """The generator of one augmented sample.

    With a ``seed``: determined by ``(seed, epoch, index)``, in any worker and
    order. Without: seeded from torch's default generator, which DataLoader
    seeds differently in each worker and epoch (read, never set, here).
    """
    if seed is None:
        return np.random.default_rng(int(torch.randint(0, 2**62, ())))
    return np.random.default_rng([seed, epoch, index])


def pair_to_tensors(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W, 3) float image and (H, W) mask -> float32 tensors (3, H, W) and (1, H, W)."""
    return (torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)),
            torch.from_numpy(mask[None].astype(np.float32)))


class Augmented(Dataset):
    """Apply an :class:`~esa_tutorial.data.AugmentRecipe` to the pairs of another dataset.

    ``dataset[i]`` must be ``(image (3, H, W), mask (1, H, W))`` tensors, e.g.
    :class:`~esa_tutorial.data.SyntheticPolyps`. ``seed`` and :meth:`set_epoch`
    work as in :class:`~esa_tutorial.data.PolypFolder`. ``Augmented(SyntheticPolyps(n, 64),
    AugmentRecipe.for_size(64))`` is the recipe scaled to 64-pixel images.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, recipe: AugmentRecipe, seed: int | None = None) -> None:
        self.dataset, self.recipe, self.seed, self.epoch = dataset, recipe, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (only matters with a ``seed``)."""
        self.epoch = int(epoch)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = check_index(i, len(self))
        image, mask = self.dataset[index]
        image, mask = self.recipe(image.numpy().transpose(1, 2, 0), mask[0].numpy() >= 0.5,
                                  sample_rng(self.seed, self.epoch, index))
        return pair_to_tensors(image, mask)

    def __repr__(self) -> str:
        return f"Augmented({self.dataset!r}, {self.recipe!r})"
