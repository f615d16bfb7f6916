"""One far pixel: a task full attention solves and ESA cannot, because ESA only sees region averages.

**The task.** Every pixel ``p`` of a ``size`` x ``size`` map carries a random
bit ``b_p`` in {-1, +1} (channels 0 and 1, one-hot). One pixel ``m``, anywhere,
is the *marker* (channel 2 is 1 there and 0 elsewhere). A pixel is foreground iff
its bit agrees with the marker's: ``label_p = [b_p == b_m]``. About half the
pixels are foreground; which half depends on a single pixel that can be
anywhere in the map.

**The model** (:class:`FarPixelNet`): an *encoder* in front of the attention,
one attention layer (the package's :class:`~esa_tutorial.ESA` or
:class:`~esa_tutorial.MHSA`, same heads and sizes, same initial weights), and
a per-pixel MLP (1x1 convolutions with ReLU) on the attention's output beside
the input, giving one logit per pixel. With ``encoder="linear"`` the encoder
is a single 1x1 convolution (affine, no non-linearity), so whatever enters
the attention is a linear function of the pixel's three input channels.

Why the two attentions differ: full attention can score the marker's pixel
alone (its key carries the marker channel), put all its weight on it and copy
``b_m`` exactly; the MLP then compares it with ``b_p``. ESA's keys and values
are the averages of the features over its 35 cells, and linear maps commute
with averaging (the average of ``W x`` is ``W`` times the average of ``x``):
a cell's key and value see the cell only through its averages of the three
input channels, the share of +1 bits, the share of -1 bits and ``1/n`` for
the marker (``n`` pixels in the cell). In the cell that holds the marker,
``b_m`` is one vote among ``n``, the other ``n - 1`` random votes are noise,
and nothing before the pooling can weigh the marker's vote apart from the
others (:func:`cell_vote` gives the best guess's accuracy). With
``encoder="conv"`` (a 3x3 convolution and a ReLU, then a 1x1 convolution) the
network can build a feature that is non-zero only where the marker is (e.g.
``relu(plus_p + marker_p - 1)``, 1 only on a marker whose bit is +1); its cell
average keeps ``b_m`` whole. That is the control: the limit is on the
features that enter the pooling, not on the task.

Inputs are (3, size, size) float32 (the bit one-hot in two channels, the marker), masks
(1, size, size) in {0, 1};
sample ``i`` depends only on ``(seed, i)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb
from typing import Literal, Sequence, get_args

import numpy as np
import torch
from einops import rearrange
from torch import nn
from torch.utils.data import Dataset

from ..nn import ESA, MHSA
from ..nn.init import init_parameters, part_generator
from ..nn.ppm import adaptive_bins
from ..validation import check_choice, check_feature_map, check_index, check_positive_int, check_seed

Encoder = Literal["linear", "conv"]
ENCODERS: tuple[str, ...] = get_args(Encoder)
IN_CHANNELS = 3  # the pixel's bit as two one-hot channels (+1, -1), the marker
SIZE = 24  # the book's maps: 576 pixels, so full attention stays cheap on a CPU


@dataclass(frozen=True)
class FarPixelSample:
    """One drawn map and its label.

    ``bits`` int8 (size, size) in {-1, +1}; ``marker`` (row, col) of the
    marker pixel (the top-left pixel of the marked square when ``patch`` > 1);
    ``mask`` bool (size, size), ``bits == bits[marker]``; ``patch`` the side of
    the marked square, whose pixels all carry the marker's bit.
    """

    bits: np.ndarray
    marker: tuple[int, int]
    mask: np.ndarray
    patch: int = 1

    @property
    def image(self) -> np.ndarray:
        """The network's input, float32 of shape (3, size, size), channels ``b_p == +1``, ``b_p == -1`` and the marker.

        Two one-hot channels rather than one signed bit: their sum is 1 at every pixel, so a
        linear map of the input has a constant part, and a query can ask for the marker the
        same way from every pixel, whatever its bit.
        """
        marker = np.zeros(self.bits.shape, np.float32)
        (r, c), k = self.marker, self.patch
        marker[r : r + k, c : c + k] = 1.0
        return np.stack([(self.bits > 0).astype(np.float32), (self.bits < 0).astype(np.float32), marker])


def far_pixel_sample(seed: int, index: int, size: int = SIZE, patch: int = 1) -> FarPixelSample:
    """Draw sample ``index`` of the task, determined by ``(seed, index)`` alone.

    ``patch`` > 1 gives the size control: the marker is a ``patch`` x ``patch``
    square, all of whose pixels carry the marker's bit (the same draws otherwise).
    """
    check_seed(seed)
    check_positive_int("size", size)
    if isinstance(patch, bool) or not isinstance(patch, int) or not 1 <= patch <= size:
        raise ValueError(f"patch must be an integer from 1 to size={size}, got {patch!r}")
    rng = np.random.default_rng([seed, index, 9])
    bits = np.where(rng.random((size, size)) < 0.5, -1, 1).astype(np.int8)
    r, c = int(rng.integers(size - patch + 1)), int(rng.integers(size - patch + 1))
    bits[r : r + patch, c : c + patch] = bits[r, c]
    return FarPixelSample(bits, (r, c), bits == bits[r, c], patch)


class FarPixelBits(Dataset):
    """``n`` samples of the task: ``ds[i]`` = (input (3, S, S), mask (1, S, S)), float32."""

    def __init__(self, n: int, size: int = SIZE, seed: int = 0, patch: int = 1) -> None:
        self.n = check_positive_int("n", n)
        self.size = check_positive_int("size", size)
        self.seed = check_seed(seed)
        self.patch = check_positive_int("patch", patch)

    def __len__(self) -> int:
        return self.n

    def sample(self, i: int) -> FarPixelSample:
        """The full :class:`FarPixelSample` of item ``i`` (bits and marker position)."""
        return far_pixel_sample(self.seed, check_index(i, self.n), self.size, self.patch)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.sample(i)
        return torch.from_numpy(s.image), torch.from_numpy(s.mask[None].astype(np.float32))

    def __repr__(self) -> str:
        patch = f", patch={self.patch}" if self.patch != 1 else ""
        return f"{type(self).__name__}(n={self.n}, size={self.size}, seed={self.seed}{patch})"


class FarPixelNet(nn.Module):
    """Encoder, one attention layer, per-pixel MLP: (B, 3, H, W) -> (B, 1, H, W) logits.

    Args:
        attention: ``"esa"`` (keys and values from the pyramid's cell averages)
            or ``"mhsa"`` (from every pixel); both start from the same weights.
        encoder: ``"linear"`` (one 1x1 convolution with bias: no non-linearity
            before the attention) or ``"conv"`` (3x3 convolution, ReLU, 1x1).
        dim, heads, dim_head: the attention's channels in and out, heads and
            channels per head.
        hidden: channels of the MLP after the attention.
        pooling_sizes: ESA's pyramid (ignored by MHSA).
        seed: initial weights, one generator per part, so the attention and
            the MLP start equal across the variants.
    """

    def __init__(
        self,
        attention: Literal["esa", "mhsa"] = "esa",
        encoder: Encoder = "linear",
        dim: int = 16,
        heads: int = 2,
        dim_head: int = 16,
        hidden: int = 32,
        pooling_sizes: Sequence[int] = (1, 3, 5),
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.attention = check_choice("attention", attention, ("esa", "mhsa"))
        self.encoder_kind = check_choice("encoder", encoder, ENCODERS)
        check_positive_int("dim", dim)
        check_positive_int("hidden", hidden)
        if encoder == "linear":
            self.encoder: nn.Module = nn.Conv2d(IN_CHANNELS, dim, 1)
        else:
            self.encoder = nn.Sequential(nn.Conv2d(IN_CHANNELS, dim, 3, padding=1), nn.ReLU(), nn.Conv2d(dim, dim, 1))
        self.attend = (
            ESA(dim, heads, dim_head, pooling_sizes=pooling_sizes) if attention == "esa" else MHSA(dim, heads, dim_head)
        )
        # The MLP sees the attention's output and the pixel's own input (its bit).
        self.head = nn.Sequential(
            nn.Conv2d(dim + IN_CHANNELS, hidden, 1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
            nn.Conv2d(hidden, 1, 1),
        )
        for name in ("encoder", "attend", "head"):
            init_parameters(getattr(self, name), part_generator(seed, f"{encoder}/{name}" if name == "encoder" else name))

    def shared_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights every variant starts with equal: the attention's (same shapes for ESA and MHSA) and the MLP's."""
        return {k: v for k, v in self.state_dict().items() if k.split(".")[0] in ("attend", "head")}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, IN_CHANNELS, "FarPixelNet")
        features = self.encoder(x)  # (B, dim, H, W)
        attended = rearrange(self.attend(features), "b (x y) c -> b c x y", x=x.shape[-2])
        return self.head(torch.cat([attended, x], dim=1))


def marker_cells(size: int, marker: tuple[int, int], pooling_sizes: Sequence[int] = (1, 3, 5)) -> list[tuple[int, slice, slice]]:
    """The pyramid cells that hold ``marker``: (grid size, row slice, column slice) per cell.

    A pixel lies in one cell of each grid, or in two or four where adaptive
    bins overlap (:func:`~esa_tutorial.adaptive_bins`).
    """
    out = []
    for s in pooling_sizes:
        bins = adaptive_bins(size, s)
        rows = [slice(a, b) for a, b in bins if a <= marker[0] < b]
        cols = [slice(a, b) for a, b in bins if a <= marker[1] < b]
        out += [(s, r, c) for r in rows for c in cols]
    return out


def cell_vote(n: int) -> float:
    """P(the sign of a cell's bit sum equals ``b_m``) for a cell of ``n`` pixels, ties broken by a coin.

    The sum is ``b_m`` plus ``n - 1`` independent fair +-1 bits: the best a
    reader of that one average can do to recover ``b_m``. Exact, from the binomial.
    """
    check_positive_int("n", n)
    others = n - 1
    # The other bits sum to 2k - others for k of them at +1; b_m = +1 wins when 1 + 2k - others > 0.
    p = sum(comb(others, k) for k in range(others + 1) if 1 + 2 * k - others > 0)
    tie = sum(comb(others, k) for k in range(others + 1) if 1 + 2 * k - others == 0)
    return (p + tie / 2) / 2**others


def same_cells(size: int, pixel: tuple[int, int], pooling_sizes: Sequence[int] = (1, 3, 5)) -> np.ndarray:
    """Bool (size, size): the pixels that lie in exactly the same pyramid cells as ``pixel``.

    Pooling cannot tell such pixels apart: swapping their inputs leaves all
    ``sum(s * s)`` cell averages unchanged.
    """
    def membership(bins: list[tuple[int, int]], i: np.ndarray) -> np.ndarray:  # (len(i), n_bins)
        return np.stack([(a <= i) & (i < b) for a, b in bins], axis=1)

    idx = np.arange(size)
    rows = np.ones(size, bool)
    cols = np.ones(size, bool)
    for s in pooling_sizes:
        bins = adaptive_bins(size, s)
        rows &= (membership(bins, idx) == membership(bins, idx[pixel[0] : pixel[0] + 1])).all(1)
        cols &= (membership(bins, idx) == membership(bins, idx[pixel[1] : pixel[1] + 1])).all(1)
    return rows[:, None] & cols[None, :]


def pooling_twin(sample: FarPixelSample, pooling_sizes: Sequence[int] = (1, 3, 5)) -> FarPixelSample:
    """The sample with the marker's bit swapped with that of a pixel in the same cells: the opposite label.

    Every cell average of every input channel is the same in both maps (the
    swapped pixels share all their cells, and the marker stays in place), yet
    ``b_m`` flips, and with it the label of every pixel. The partner is the
    nearest pixel (row-major first among equals) with the other bit. Raises
    ``ValueError`` when no pixel in the marker's cells has the other bit.
    """
    size = sample.bits.shape[0]
    m = sample.marker
    candidates = same_cells(size, m, pooling_sizes) & (sample.bits != sample.bits[m])
    if not candidates.any():
        raise ValueError(f"no pixel shares all cells with the marker at {m} and has the other bit")
    found = np.argwhere(candidates)
    q = tuple(int(v) for v in found[np.argmin(((found - np.array(m)) ** 2).sum(1))])  # first of the nearest
    bits = sample.bits.copy()
    bits[m], bits[q] = sample.bits[q], sample.bits[m]
    return FarPixelSample(bits, m, bits == bits[m])
