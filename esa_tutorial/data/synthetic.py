"""Synthetic endoscopy frames with exact polyp masks, drawn with NumPy (no files, no download)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ..validation import check_index, check_positive_int, check_seed


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
        self.seed = check_seed(seed)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = synthetic_polyp(self.seed, check_index(i, self.n), self.size)
        # Layout and dtype in NumPy: small torch ops cost more than the drawing itself on a busy CPU.
        return (
            torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            torch.from_numpy(mask[None].astype(np.float32)),
        )

    def __repr__(self) -> str:
        return f"SyntheticPolyps(n={self.n}, size={self.size}, seed={self.seed})"
