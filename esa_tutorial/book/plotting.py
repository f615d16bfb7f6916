"""Figures of the book, one function each, so a chapter cell says what it shows in a line.

The package's one plotting home: the chapters' figures, the attention pictures of
:mod:`~esa_tutorial.book.attention_maps`, the stored experiments' curves and the
benchmark's charts (``plot_times`` draws ``python -m esa_tutorial.bench``'s ``time.png``).

Like ``d2l.plot`` and ``d2l.show_heatmaps``: the chapters compute, these helpers only
draw. Every ``show_*``/``plot_*`` function takes plain numbers or CPU tensors/arrays and
draws one new figure, which the notebook shows at the end of the cell. Most return None,
as d2l's do, so that a cell's last line never echoes a figure a second time (nbval
re-executes cells without honouring a trailing ``;``). Nothing here changes global
matplotlib or torch state.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.text import Text

from ..bench import BREAKDOWN_PARTS, MODES, Record
from ..experiments import curves
from ..files import save_figure
from ..validation import check_pooling_sizes
from .attention_maps import effective_pixel_weights, token_grids
from ..nn.ppm import adaptive_bins



# The PNG text chunk in which a saved figure records its smallest text, in pixels of that
# PNG, so that the book's browser test can tell how large it is as shown
# (tests/browser/test_layout.py).
TEXT_RECORD = "esa-tutorial:smallest-text-px"


def smallest_text(fig: Figure) -> tuple[float, str]:
    """The smallest visible text of ``fig``: (its size in points, the text)."""
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    if not texts:
        raise ValueError("the figure has no visible text to measure")
    t = min(texts, key=lambda t: t.get_fontsize())
    return float(t.get_fontsize()), t.get_text()


def text_record(fig: Figure, dpi: float) -> dict[str, str]:
    """PNG metadata for ``fig.savefig(..., dpi=dpi, metadata=...)``: its smallest text in
    pixels of that PNG, :data:`TEXT_RECORD`."""
    size, _ = smallest_text(fig)
    return {TEXT_RECORD: f"{size * dpi / 72:.2f}"}


def record_text_size(fig: Figure) -> Figure:
    """Have every PNG of ``fig`` carry its smallest text (:func:`text_record`), also the one
    a notebook shows. Returns ``fig``.

    IPython shows a figure by saving it through its canvas's ``print_png``; this figure's
    canvas gets one that adds the record, measured as the PNG is written (so it includes
    the titles a chapter adds after the helper returns). Only this figure changes; a
    canvas without ``print_png`` (not a raster one) is left alone.
    """
    canvas = fig.canvas
    plain = getattr(type(canvas), "print_png", None)
    if plain is None:
        return fig

    def print_png(filename_or_obj, *, metadata=None, pil_kwargs=None, **_applied):  # type: ignore[no-untyped-def]
        # print_figure also passes dpi, facecolor and the like, which it has already
        # applied to the figure (matplotlib's own print methods drop them too).
        record = {**text_record(fig, fig.dpi), **(metadata or {})}
        return plain(canvas, filename_or_obj, metadata=record, pil_kwargs=pil_kwargs)

    canvas.print_png = print_png
    return fig


def _subplots(*args: Any, **kwargs: Any) -> tuple[Figure, Any]:
    """``plt.subplots`` for the helpers here: the figure records its text size."""
    fig, axes = plt.subplots(*args, **kwargs)
    return record_text_size(fig), axes


def _np(a: np.ndarray | torch.Tensor) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def annotated_grid(ax: Axes, values: np.ndarray | torch.Tensor, *, vmin: float = 0.0,
                   vmax: float | None = None, fmt: str | Callable[[float], str] = "{:.2f}",
                   cmap: str = "viridis", fontsize: float = 7) -> None:
    """Draw an (s, s) grid as an image with each cell's value written in it (``fmt``: a
    format string or a function of the value)."""
    a = _np(values)
    vmax = float(a.max()) if vmax is None else vmax
    ax.imshow(a, cmap=cmap, vmin=vmin, vmax=vmax)
    for (i, j), v in np.ndenumerate(a):
        # Dark text on bright cells, light text on dark ones.
        light = (v - vmin) < (vmax - vmin) / 2
        label = fmt(float(v)) if callable(fmt) else fmt.format(v)
        ax.text(j, i, label, ha="center", va="center", fontsize=fontsize,
                color="white" if light else "black")
    ax.set_xticks([])
    ax.set_yticks([])


def show_image(ax: Axes, image: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor | None = None,
               *, pixel: tuple[int, int] | None = None, title: str = "") -> None:
    """An (H, W, 3) or (3, H, W) image, the mask outlined in white, a query pixel as a star."""
    record_text_size(ax.figure)
    img = _np(image)
    if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.transpose(1, 2, 0)
    ax.imshow(img.clip(0, 1))
    if mask is not None:
        ax.contour(_np(mask).astype(float), levels=[0.5], colors="white", linewidths=0.8)
    if pixel is not None:
        ax.plot(pixel[1], pixel[0], "c*", ms=13, mec="k")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def _panel_grid(n: int, width: float, height: float, cols: int = 2) -> list[Axes]:
    """``n`` panels of ``width`` x ``height`` inches, ``cols`` a row; unused places blank."""
    rows = -(-n // cols)
    fig, axes = _subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return list(axes.flat[:n])


def show_pooled_grids(image: np.ndarray, mask: np.ndarray, pooled: Mapping[int, np.ndarray]) -> None:
    """The image and each pooled grid blown up to the image size, two a row, the mask outlined on all.

    ``pooled`` maps a grid size s to an (H, W, 3) image of flat s x s blocks.
    """
    # Two panels a row: the figure keeps each panel's size and stays half as wide, so a
    # phone shows it at the same size with half the sideways scrolling (book/_static/book.css).
    axes = _panel_grid(1 + len(pooled), 3.2, 3.4)
    show_image(axes[0], image, mask, title=f"input {image.shape[0]}x{image.shape[1]}")
    for ax, (s, shown) in zip(axes[1:], pooled.items()):
        show_image(ax, shown, mask, title=f"{s}x{s} pooling: {s * s} token{'s' if s > 1 else ''}")
    axes[0].figure.tight_layout()


def show_grids(grids: Sequence[np.ndarray | torch.Tensor], titles: Sequence[str], *,
               vmin: float = 0.0, vmax: float | None = 1.0, cmap: str = "magma",
               fmt: str = "{:.2f}") -> None:
    """Several annotated grids side by side (e.g. the polyp fraction of every pooled cell)."""
    # Values at 9 pt, three grids within a desktop column (tests/test_figure_legibility.py).
    fig, axes = _subplots(1, len(grids), figsize=(2.5 * len(grids), 2.8), squeeze=False)
    for ax, grid, title in zip(axes[0], grids, titles):
        annotated_grid(ax, grid, vmin=vmin, vmax=vmax, cmap=cmap, fmt=fmt, fontsize=9)
        ax.set_title(title, fontsize=10)
    fig.tight_layout()


def show_tokens(tokens: np.ndarray | torch.Tensor, sizes: Sequence[int] = (1, 3, 5)) -> None:
    """(C=3, n) colour tokens as a strip of colours, with a line between the grids."""
    t = _np(tokens)
    fig, ax = _subplots(figsize=(10, 1.3))
    ax.imshow(t.T[None].clip(0, 1), aspect="auto")
    for edge in np.cumsum([s * s for s in sizes])[:-1]:
        ax.axvline(edge - 0.5, color="white", lw=2)
    ax.set_yticks([])
    ax.set_xticks(range(0, t.shape[-1], 5))
    ax.set_title(f"the {t.shape[-1]} tokens as colours: " + " | ".join(f"{s}x{s}" for s in sizes))
    fig.tight_layout()


def _draw_bins(ax: Axes, length: int, bins: int) -> None:
    counts = np.zeros(length, dtype=int)
    for i, (a, b) in enumerate(adaptive_bins(length, bins)):
        ax.barh(i, b - a, left=a - 0.5, height=0.6, color=f"C{i % 10}", alpha=0.8)
        ax.text((a + b - 1) / 2, i, f"[{a}, {b})", ha="center", va="center", fontsize=9, color="white")
        counts[a:b] += 1
    for p in np.flatnonzero(counts > 1):  # pixels that belong to two bins are shaded
        ax.axvspan(p - 0.5, p + 0.5, color="grey", alpha=0.15)
    ax.set(xticks=range(length), yticks=range(bins), xlim=(-0.5, length - 0.5),
           xlabel="pixel", ylabel="bin", title=f"length {length} into {bins} bins")
    ax.invert_yaxis()


def show_bins(*cases: tuple[int, int]) -> None:
    """One panel per (length, bins): a bar per adaptive-pooling bin over the pixels it averages.

    Pixels shared by two bins are shaded grey. One panel under the other: the figure
    stays one panel wide, legible in a desktop column and on a phone.
    """
    fig, axes = _subplots(len(cases), 1, figsize=(5.5, 2.8 * len(cases)), squeeze=False)
    for ax, (length, bins) in zip(axes[:, 0], cases):
        _draw_bins(ax, length, bins)
    fig.tight_layout()


def show_values(*panels: tuple[np.ndarray | torch.Tensor, str], vmin: float | None = None,
                vmax: float | None = None, fmt: str = "{:g}") -> None:
    """Small 2-D arrays side by side with every value written in its cell, one shared colour scale."""
    arrays = [_np(a) for a, _ in panels]
    lo = min(float(a.min()) for a in arrays) if vmin is None else vmin
    hi = max(float(a.max()) for a in arrays) if vmax is None else vmax
    widths = [a.shape[1] for a in arrays]
    fig, axes = _subplots(1, len(panels), figsize=(1.3 * sum(widths), 3),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    for ax, a, (_, title) in zip(axes[0], arrays, panels):
        annotated_grid(ax, a, vmin=lo, vmax=hi, fmt=fmt, fontsize=9)
        ax.set_title(title, fontsize=10)
    fig.tight_layout()


def show_attention_row(image: np.ndarray, mask: np.ndarray | None, pixel: tuple[int, int],
                       weights: np.ndarray | torch.Tensor, *, title: str = "") -> None:
    """One row of a full N x N attention matrix, reshaped to the (H, W) image it attends over.

    Left: the image with the query pixel starred. Right: the weight the pixel puts on every
    pixel of the map, on the same grid (the row has H*W entries summing to one).
    """
    w = _np(weights)
    fig, axes = _subplots(1, 2, figsize=(7.4, 3.4))
    show_image(axes[0], image, mask, pixel=pixel, title="query pixel (star)")
    im = axes[1].imshow(w, cmap="viridis")
    axes[1].plot(pixel[1], pixel[0], "c*", ms=13, mec="k")
    axes[1].set_title(title or f"its {w.size:,} attention weights", fontsize=9)
    axes[1].axis("off")
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    fig.tight_layout()


def show_token_attention(image: np.ndarray, mask: np.ndarray | None,
                         rows: Mapping[str, tuple[tuple[int, int], Sequence[torch.Tensor]]],
                         sizes: Sequence[int] = (1, 3, 5)) -> None:
    """Where pixels look among the pooled tokens: one figure row per pixel and head.

    ``rows`` maps a pixel's name to ``((row, col), [weights of head 0, head 1, ...])``, each
    weight vector of length sum(s^2) (35 for ESA). Each head's weights are drawn as the
    s x s grids over the image, the title says how much of the weight each grid gets.
    """
    # Four panels across (image and three grids) keep the figure within a book column at
    # full size, so its weights print at 8.5 pt (tests/test_figure_legibility.py).
    lines = [(name, pixel, h, w) for name, (pixel, weights) in rows.items()
             for h, w in enumerate(weights)]
    ratios = [1.3] + [1.0] * len(sizes)
    fig, axes = _subplots(len(lines), 1 + len(sizes), figsize=(1.6 * sum(ratios), 1.75 * len(lines)),
                             gridspec_kw={"width_ratios": ratios}, squeeze=False)
    for r, (name, pixel, h, w) in enumerate(lines):
        show_image(axes[r, 0], image, mask, pixel=pixel, title=name)
        vmax = float(_np(w).max())
        for k, (grid, s) in enumerate(zip(token_grids(torch.as_tensor(_np(w)), sizes), sizes)):
            grid = grid.numpy()
            annotated_grid(axes[r, 1 + k], grid, vmax=vmax, fmt=weight_label, fontsize=8.5)
            axes[r, 1 + k].set_title(f"head {h}, {s}x{s}: {grid.sum():.2f}", fontsize=9)
    fig.tight_layout()


def plot_cost(ns: Sequence[int], flops: Mapping[str, Sequence[float]],
              memory_gib: Mapping[str, Sequence[float]], *,
              stage_n: Sequence[int] = (), stage_labels: Sequence[str] = (),
              stage_flops: Sequence[float] | None = None,
              stage_gib: Mapping[str, Sequence[float]] | None = None,
              crossover: float | None = None, styles: Mapping[str, str] | None = None,
              flops_ylabel: str = "FLOPs per image (C = 64)",
              memory_title: str = "attention matrix (float32, 8 heads)") -> None:
    """FLOPs (top) and attention memory (below) against the number of pixels, log-log.

    ``flops`` and ``memory_gib`` map a curve's name to its values at ``ns``. Optional
    markers: LDNet's stages at ``stage_n`` (FLOPs ``stage_flops`` per image, memory
    ``stage_gib`` per curve name, labelled with ``stage_labels``), and a dotted
    vertical line at ``crossover``. One panel under the other, text at 9 pt or more: one
    panel wide, the figure is shown at full size in a desktop column.
    """
    styles = dict(styles or {})
    fig, (ax_f, ax_m) = _subplots(2, 1, figsize=(5.8, 8.2))
    for i, (name, ys) in enumerate(flops.items()):
        ax_f.loglog(ns, ys, styles.get(name, f"C{i}-"), lw=2, label=name)
    if crossover is not None:
        ax_f.axvline(crossover, color="grey", lw=0.8, ls=":")
    if stage_flops is not None:
        ax_f.plot(stage_n, stage_flops, "o", color="C1", label="LDNet stages (own C)")
    ax_f.set(xlabel="pixels N = H·W", ylabel=flops_ylabel, title="FLOPs")
    for i, (name, ys) in enumerate(memory_gib.items()):
        ax_m.loglog(ns, ys, styles.get(name, f"C{i}-"), lw=2, label=name)
    for i, (name, gib) in enumerate((stage_gib or {}).items()):
        ax_m.plot(stage_n, gib, "o", color="C1", label="LDNet stages" if i == 0 else None)
        if i == len(stage_gib) - 1:  # label the last set of markers only, so labels never overlap
            for label, n, g in zip(stage_labels, stage_n, gib):
                ax_m.annotate(f"{label}\n{g:.3g} GiB", (n, g), textcoords="offset points",
                              xytext=(8, -24), fontsize=9)
    ax_m.set(xlabel="pixels N = H·W", ylabel="GiB", title=memory_title)
    ax_m.set_xlim(right=4e4)
    ax_f.legend(fontsize=9)
    ax_m.legend(loc="upper left", fontsize=9)
    fig.tight_layout()


def show_batch(images: torch.Tensor, masks: torch.Tensor) -> None:
    """(B, 3, H, W) images above their (B, 1, H, W) masks, four images a row."""
    n, cols = images.shape[0], min(4, images.shape[0])
    pairs = -(-n // cols)
    fig, axes = _subplots(2 * pairs, cols, figsize=(1.5 * cols, 1.6 * 2 * pairs), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, cols)
        axes[2 * r, c].imshow(_np(images[i]).transpose(1, 2, 0).clip(0, 1))
        axes[2 * r + 1, c].imshow(_np(masks[i, 0]), cmap="gray", vmin=0, vmax=1)
    for r in range(pairs):
        axes[2 * r, 0].set_title(f"image {r * cols}..{min(n, (r + 1) * cols) - 1}", loc="left",
                                 fontsize=10)
        axes[2 * r + 1, 0].set_title("mask", loc="left", fontsize=10)
    fig.tight_layout()


def plot_gradient_norms(norms: Mapping[str, Sequence[float]], title: str) -> None:
    """Gradient norm per block (block 1 nearest the input), one log-scale line per wiring."""
    fig, ax = _subplots(figsize=(5.5, 3.4))
    for name, values in norms.items():
        ax.semilogy(range(1, len(values) + 1), values, marker="o", label=name)
    ax.set(xlabel="block (1 = nearest the input)", ylabel="gradient norm of FFN weight", title=title)
    ax.legend()
    fig.tight_layout()


def show_lesion_attention(mask_probs: torch.Tensor, weights: torch.Tensor) -> None:
    """LCA's lesion weights (H, W) beside one head's attention weight on the lesion token (H, W)."""
    fig, axes = _subplots(1, 2, figsize=(6.4, 3.2))
    axes[0].imshow(_np(mask_probs), cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("lesion weights (mask)")
    image = axes[1].imshow(_np(weights), cmap="viridis")
    axes[1].set_title("weight on lesion token")
    fig.colorbar(image, ax=axes[1], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()


def plot_scaling(ns: Mapping[str, Sequence[int]], ms: Mapping[str, Sequence[float]],
                 mib: Mapping[str, Sequence[float]], title: str) -> None:
    """Forward time (top) and memory saved for backward (below) against pixels, log-log.

    Each mapping goes from a variant's name to its values at that variant's ``ns``.
    """
    fig, (ax_t, ax_m) = _subplots(2, 1, figsize=(5.8, 7.2))
    for name in ns:
        ax_t.loglog(ns[name], ms[name], "o-", label=name)
        ax_m.loglog(ns[name], mib[name], "o-", label=name)
    ax_t.set(xlabel="pixels N = H·W", ylabel="forward time (ms)", title=title)
    ax_m.set(xlabel="pixels N = H·W", ylabel="MiB saved for backward", title="memory for training")
    ax_t.legend()
    fig.tight_layout()


def plot_curve(values: Sequence[float], *, xlabel: str, ylabel: str, title: str) -> None:
    """One curve, e.g. a learning-rate schedule."""
    fig, ax = _subplots(figsize=(4, 2.5))
    ax.plot(values)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    fig.tight_layout()


def plot_history(history: Mapping[str, Sequence[float]], best_epoch: int | None = None) -> None:
    """Training curves of ``esa_tutorial.train.run_experiment``'s history.

    Left: the loss of every training step and the validation loss after each epoch (drawn
    at the epoch's last step). Right: validation Dice and mean IoU per epoch.
    """
    fig, (ax1, ax2) = _subplots(1, 2, figsize=(10, 3.2))
    ax1.plot(history["step_loss"], lw=0.8, label="training step")
    per_epoch = len(history["step_loss"]) // len(history["epoch"])
    ax1.plot([e * per_epoch - 1 for e in history["epoch"]], history["val_loss"], "o-",
             label="validation")
    ax1.set(xlabel="step", ylabel="deep-supervision loss", title="loss (sum of five terms)")
    ax1.legend()
    ax2.plot(history["epoch"], history["val_dice"], "o-", label="Dice")
    ax2.plot(history["epoch"], history["val_miou"], "s-", label="mean IoU")
    if best_epoch:
        ax2.axvline(best_epoch, color="gray", ls=":", label="best epoch")
    ax2.set(xlabel="epoch", ylabel="validation score", ylim=(0, 1), title="validation")
    ax2.legend()
    fig.tight_layout()


def show_predictions(images: torch.Tensor, masks: torch.Tensor, probs: torch.Tensor,
                     scores: torch.Tensor, groups: Mapping[str, Sequence[int]]) -> None:
    """One row per group of image indices: truth outlined in green, prediction (p = 0.5) in red.

    ``images`` (B, 3, H, W), ``masks`` and ``probs`` (B, 1, H, W), ``scores`` (B,) (e.g. Dice).
    """
    cols = max(len(idx) for idx in groups.values())
    fig, axes = _subplots(len(groups), cols, figsize=(2.7 * cols, 2.8 * len(groups)),
                             squeeze=False)
    for r, (name, idx) in enumerate(groups.items()):
        for ax, i in zip(axes[r], idx):
            ax.imshow(_np(images[i]).transpose(1, 2, 0).clip(0, 1))
            ax.contour(_np(masks[i, 0]), levels=[0.5], colors="lime", linewidths=1.5)
            ax.contour(_np(probs[i, 0]), levels=[0.5], colors="red", linewidths=1.5)
            ax.set_title(f"{name}: image {i}, Dice {float(scores[i]):.2f}", fontsize=9)
        for ax in axes[r]:
            ax.axis("off")
    fig.tight_layout()


def show_truth_and_prediction(images: torch.Tensor, masks: torch.Tensor, probs: torch.Tensor,
                              titles: Sequence[str]) -> None:
    """Each image above its ground truth and the model's prediction, one column per image.

    ``images`` (n, 3, H, W) in [0, 1], ``masks`` and ``probs`` (n, 1, H, W); ``titles``
    one per column (e.g. which image and its Dice). Row 3 shows the probability map
    with the 0.5 contour (the threshold LDNet's test.py uses) in red, the truth in green.
    """
    n = images.shape[0]
    if masks.shape != probs.shape or masks.shape[0] != n or len(titles) != n:
        raise ValueError(f"expected n images (n, 3, H, W), masks and probabilities (n, 1, H, W) and n "
                         f"titles; got {tuple(images.shape)}, {tuple(masks.shape)}, {tuple(probs.shape)} "
                         f"and {len(titles)} titles")
    side = min(1.9, 7.0 / n)  # the whole figure fits the book's column, text legible
    fig, axes = _subplots(3, n, figsize=(side * n, 3.1 * side), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(_np(images[i]).transpose(1, 2, 0).clip(0, 1))
        axes[0, i].set_title(titles[i], fontsize=10)
        axes[1, i].imshow(_np(masks[i, 0]), cmap="gray", vmin=0, vmax=1)
        axes[2, i].imshow(_np(probs[i, 0]), cmap="magma", vmin=0, vmax=1)
        axes[2, i].contour(_np(masks[i, 0]), levels=[0.5], colors="lime", linewidths=1)
        axes[2, i].contour(_np(probs[i, 0]), levels=[0.5], colors="red", linewidths=1)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax, label in zip(axes[:, 0], ("image", "ground truth", "prediction")):
        ax.set_ylabel(label, fontsize=10)
    fig.tight_layout()


def show_attention_on_image(image: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor,
                            pixels: Sequence[tuple[int, int]], row_titles: Sequence[str],
                            col_titles: Sequence[str]) -> None:
    """Where one pixel's attention lands, drawn over the image: a row per pixel, a column per map.

    ``image`` (3, H, W), ``mask`` (1, H, W); ``maps`` (pixels, columns, H, W), e.g.
    :func:`~esa_tutorial.book.attention_maps.skip_level_maps` averaged over heads
    (1 = as much as uniform attention); ``pixels`` (row, col) marked with a star.
    Every panel shares one colour scale, shown by the colour bar.
    """
    m = _np(maps)
    if m.ndim != 4 or m.shape[0] != len(pixels) or m.shape[2:] != tuple(image.shape[-2:]):
        raise ValueError(f"maps must be (pixels, columns, H, W) with {len(pixels)} pixels and the image's "
                         f"size {tuple(image.shape[-2:])}, got shape {m.shape}")
    if len(row_titles) != m.shape[0] or len(col_titles) != m.shape[1]:
        raise ValueError(f"expected {m.shape[0]} row titles and {m.shape[1]} column titles, "
                         f"got {len(row_titles)} and {len(col_titles)}")
    rows, cols = m.shape[:2]
    side = min(2.3, 6.6 / cols)  # the whole figure fits the book's column, text legible
    fig, axes = _subplots(rows, cols, figsize=(side * cols + 0.9, side * rows), squeeze=False)
    picture = _np(image).transpose(1, 2, 0).clip(0, 1)
    vmax = float(m.max())
    for r, (y, x) in enumerate(pixels):
        for c in range(cols):
            ax = axes[r, c]
            ax.imshow(picture)
            im = ax.imshow(m[r, c], cmap="magma", alpha=0.6, vmin=0, vmax=vmax)
            ax.contour(_np(mask[0]), levels=[0.5], colors="lime", linewidths=0.8)
            ax.plot(x, y, "c*", ms=12, mec="k")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col_titles[c], fontsize=10)
        axes[r, 0].set_ylabel(row_titles[r], fontsize=10)
    fig.colorbar(im, ax=axes, shrink=0.8, label="weight / uniform")


def show_outputs(image: torch.Tensor, mask: torch.Tensor, outputs: Sequence[torch.Tensor]) -> None:
    """An image with its truth, then the probability map of every output, coarse to fine.

    ``image`` (3, H, W), ``mask`` (1, H, W); ``outputs`` are (1, h, w) logits, finest first,
    as LDNet returns them.
    """
    axes = _panel_grid(1 + len(outputs), 2.2, 2.4, cols=3)  # three a row: half as wide
    fig = axes[0].figure
    axes[0].imshow(_np(image).transpose(1, 2, 0).clip(0, 1))
    axes[0].contour(_np(mask[0]), levels=[0.5], colors="lime")
    axes[0].set_title("image + truth", fontsize=9)
    size = image.shape[-1]
    for ax, k in zip(axes[1:], reversed(range(len(outputs)))):  # coarse to fine
        out = outputs[k]
        ax.imshow(_np(torch.sigmoid(out[0])), vmin=0, vmax=1, cmap="magma")
        ax.set_title(f"out{k}: {out.shape[-1]}x{out.shape[-2]} (1/{size // out.shape[-1]})",
                     fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()


def scatter(x: Sequence[float] | torch.Tensor, y: Sequence[float] | torch.Tensor, *,
            xlabel: str, ylabel: str, title: str = "", logx: bool = False) -> None:
    """A plain scatter plot, e.g. per-image Dice against lesion area."""
    fig, ax = _subplots(figsize=(4.2, 3.2))
    ax.scatter(_np(torch.as_tensor(x)), _np(torch.as_tensor(y)), s=14, alpha=0.7)
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    fig.tight_layout()


def show_mask_pooling(image: torch.Tensor, mask: np.ndarray, weights: torch.Tensor,
                      colours: Mapping[str, torch.Tensor]) -> None:
    """What mask average pooling sums, and the colours it gives.

    ``image`` (3, H, W) with its exact ``mask`` (H, W) outlined; ``weights`` (H, W) in
    [0, 1]; ``colours`` maps a label to an RGB vector (3,), drawn one swatch per row.
    """
    axes = _panel_grid(4, 3.0, 3.2)  # two a row, as show_pooled_grids
    fig = axes[0].figure
    show_image(axes[0], image, mask, title="frame, exact polyp outlined")
    axes[1].imshow(_np(weights), cmap="gray", vmin=0, vmax=1)
    axes[1].set_title(r"weights $m = \sigma(\ell)$", fontsize=9)
    weighted = _np(image) * _np(weights)[None]
    axes[2].imshow(weighted.transpose(1, 2, 0).clip(0, 1))
    axes[2].set_title(r"$x \cdot m$ (what is summed)", fontsize=9)
    for ax in axes[1:3]:
        ax.axis("off")
    swatches = np.stack([_np(c) for c in colours.values()])
    axes[3].imshow(swatches[:, None, :].clip(0, 1), aspect=0.5)
    axes[3].set_yticks(range(len(colours)), list(colours))
    axes[3].set_xticks([])
    axes[3].set_title("one colour per row", fontsize=9)
    fig.tight_layout()


def show_heatmaps(
    matrices: torch.Tensor | np.ndarray,
    row_titles: Sequence[str] | None = None,
    col_titles: Sequence[str] | None = None,
    cmap: str = "viridis",
    size: float = 2.2,
    colorbar: bool = True,
    title: str | None = None,
) -> plt.Figure:
    """Draw (rows, cols, h, w) matrices as a grid of heatmaps sharing one colour scale (like d2l's)."""
    m = np.asarray(matrices.detach().cpu() if isinstance(matrices, torch.Tensor) else matrices)
    if m.ndim != 4:
        raise ValueError(f"show_heatmaps expects (rows, cols, h, w), got shape {m.shape}")
    rows, cols = m.shape[:2]
    fig, axes = _subplots(rows, cols, figsize=(size * cols + 0.8, size * rows), squeeze=False)
    vmax = float(m.max())
    for r in range(rows):
        for c in range(cols):
            im = axes[r, c].imshow(m[r, c], cmap=cmap, vmin=0, vmax=vmax)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if col_titles is not None and r == 0:
                axes[r, c].set_title(col_titles[c], fontsize=9)
            if row_titles is not None and c == 0:
                axes[r, c].set_ylabel(row_titles[r], fontsize=9)
    if colorbar:
        fig.colorbar(im, ax=axes, shrink=0.8)
    if title is not None:
        fig.suptitle(title)
    return fig


def weight_label(v: float) -> str:
    """A weight in [0, 1] in three characters, as ``.98`` (``1`` for 1.00), so that five fit
    across a small grid at a legible size."""
    return "1" if v >= 0.995 else f".{round(100 * v):02d}"


def show_pyramid(
    image: torch.Tensor | np.ndarray,
    pixel: tuple[int, int],
    weights: torch.Tensor,
    pooling_sizes: Sequence[int] = (1, 3, 5),
    titles: Sequence[str] | None = None,
    mask: np.ndarray | None = None,
    numbers: bool = True,
) -> plt.Figure:
    """One row per head: the image with the pixel (star) and where its weight lands, then the grids.

    ``image`` (H, W, 3) or (3, H, W) in [0, 1]; ``pixel`` (row, col) in image
    coordinates; ``weights`` (heads, n_kv). The first panel overlays
    :func:`~esa_tutorial.book.attention_maps.effective_pixel_weights` (upsampled to the image) on the image; the
    grid panels print each cell's weight and their titles the level's share.
    """
    img = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image)
    if img.ndim == 3 and img.shape[0] == 3:
        img = img.transpose(1, 2, 0)
    sizes = check_pooling_sizes(pooling_sizes)
    heads = weights.shape[0]
    w = weights.detach().cpu().double()
    fig, axes = _subplots(
        # About 7.5 in across: a book column shows it at full size, weights at 8.5 pt.
        heads, 1 + len(sizes), figsize=(1.7 * (1.4 + len(sizes)), 1.75 * heads), squeeze=False,
        gridspec_kw={"width_ratios": [1.4] + [1] * len(sizes)},
    )
    density = effective_pixel_weights(w, img.shape[0], img.shape[1], sizes)
    for h in range(heads):
        ax = axes[h, 0]
        ax.imshow(img)
        ax.imshow(density[h].numpy(), cmap="magma", alpha=0.55)
        if mask is not None:
            ax.contour(mask, levels=[0.5], colors="white", linewidths=0.8)
        ax.plot(pixel[1], pixel[0], "c*", ms=13, mec="k")
        ax.set_title(titles[h] if titles else f"head {h}", fontsize=9)
        vmax = float(w[h].max())
        for ax, grid, s in zip(axes[h, 1:], token_grids(w[h], sizes), sizes):
            ax.imshow(grid.numpy(), cmap="viridis", vmin=0, vmax=vmax)
            if numbers and s <= 5:
                for i in range(s):
                    for j in range(s):
                        v = float(grid[i, j])
                        ax.text(j, i, weight_label(v), ha="center", va="center", fontsize=8.5,
                                color="w" if v < vmax / 2 else "k")
            ax.set_title(f"{s}x{s}: {float(grid.sum()):.2f}", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


COLOURS = {
    "no attention": "tab:gray", "ESA": "tab:blue", "full MHSA": "tab:red", "ESA + LCA": "tab:green",
    "global token": "tab:orange", "conv + ESA": "tab:purple", "ESA 6x6 marker": "tab:cyan",
}


def plot_curves(
    runs: Sequence[dict[str, Any]],
    variants: Sequence[str],
    key: str = "val_dice",
    ax: plt.Axes | None = None,
    title: str | None = None,
) -> plt.Axes:
    """Mean over seeds (line) and min-max over seeds (band) of ``key`` against the training step."""
    ax = ax or _subplots(figsize=(5.5, 3.4))[1]
    record_text_size(ax.figure)
    for v in variants:
        steps, ys = curves(runs, v, key)
        colour = COLOURS.get(v)
        ax.plot(steps, ys.mean(0), "o-", ms=3, color=colour, label=f"{v} ({len(ys)} seeds)")
        ax.fill_between(steps, ys.min(0), ys.max(0), color=colour, alpha=0.2)
    ax.set(xlabel="training step", ylabel=key.replace("_", " "), title=title)
    ax.legend(fontsize=9)
    return ax


def show_samples(images: torch.Tensor, masks: torch.Tensor, titles: Sequence[str] | None = None) -> plt.Figure:
    """Images (n, 3, H, W) with their masks outlined in white, side by side."""
    n = len(images)
    # 1.5 in a panel: five across still fit a desktop column at full size, titles at 9 pt.
    fig, axes = _subplots(1, n, figsize=(1.5 * n, 1.9), squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.imshow(images[i].permute(1, 2, 0).numpy())
        ax.contour(masks[i, 0].numpy(), levels=[0.5], colors="white", linewidths=1.0)
        ax.set_xticks([])
        ax.set_yticks([])
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
    fig.tight_layout()
    return fig


def plot_breakdown(breakdown: dict[str, float], ax=None):  # type: ignore[no-untyped-def]
    """A horizontal stacked bar of :func:`~esa_tutorial.bench.forward_breakdown`'s parts, in ms. Returns the axes."""
    if ax is None:
        _, ax = _subplots(figsize=(8, 1.8))
    else:
        record_text_size(ax.figure)
    left = 0.0
    for part in BREAKDOWN_PARTS:
        ms = max(0.0, 1e3 * breakdown[part])
        ax.barh(0, ms, left=left, label=f"{part} ({ms:.0f} ms)")
        left += ms
    ax.set_yticks([])
    ax.set_xlabel("ms of one folded forward pass")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=3, frameon=False)
    return ax


def plot_shares(rows: Sequence[dict[str, object]], ax=None):  # type: ignore[no-untyped-def]
    """Bars of :func:`~esa_tutorial.bench.speedup_table`'s share of the matmul rate per map, each beside its ceiling. Returns the axes."""
    rows = [r for r in rows if "share_of_matmul" in r and "share_ceiling" in r]
    if ax is None:
        _, ax = _subplots(figsize=(8, 3))
    else:
        record_text_size(ax.figure)
    at = range(len(rows))
    ax.bar([i - 0.2 for i in at], [100 * float(r["share_ceiling"]) for r in rows], width=0.4, color="0.8",
           label="ceiling: every counted FLOP at the matmul rate")
    ax.bar([i + 0.2 for i in at], [100 * float(r["share_of_matmul"]) for r in rows], width=0.4,
           label="measured")
    ax.set_xticks(list(at), ["x".join(map(str, r["shape"])) for r in rows])  # type: ignore[call-overload]
    ax.set_ylabel("% of the dense matmul rate")
    ax.set_ylim(0, 125)  # room above the bars for the legend
    ax.set_yticks(range(0, 101, 20))
    ax.legend(loc="upper center", ncol=2, frameon=False)
    return ax


def plot_times(records: Sequence[Record], out_dir: Path) -> list[Path]:
    """Bar charts of time per shape and variant, log scale, into ``out_dir/time.png``. Returns the paths."""
    shapes = list(dict.fromkeys(r.shape for r in records))
    variants = list(dict.fromkeys(r.variant for r in records))
    fig, axes = _subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, mode in zip(axes, MODES):
        width = 0.8 / len(variants)
        for i, v in enumerate(variants):
            vals = []
            for s in shapes:
                rec = next(r for r in records if r.shape == s and r.variant == v)
                vals.append(1e3 * rec.seconds.get(mode, math.nan))
            ax.bar([j + i * width for j in range(len(shapes))], vals, width, label=v)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))])
        ax.set_xticklabels(["x".join(map(str, s)) for s in shapes], rotation=20)
        ax.set_yscale("log")
        ax.set_title(mode.replace("_", "+"))
        ax.set_ylabel("ms")
    axes[0].legend()
    fig.tight_layout()
    path = save_figure(fig, out_dir / "time.png", dpi=120)
    plt.close(fig)
    return [path]


def show_far_pixel(
    samples: Sequence[Any],
    predictions: Mapping[str, torch.Tensor],
    row_titles: Sequence[str],
    marks: Sequence[Sequence[tuple[int, int]]] | None = None,
) -> plt.Figure:
    """The far-pixel task, one row per map: input, label, and each model's thresholded prediction.

    Args:
        samples: n :class:`~esa_tutorial.book.far_pixel_task.FarPixelSample`.
        predictions: per model, probabilities (n, H, W); shown as foreground
            where >= 0.5, with the map's Dice in the title.
        row_titles: n labels, written left of each row.
        marks: per map, pixels to outline in orange (e.g. the two swapped pixels of a twin).

    The input panel shows the bits (white +1, black -1), the marker as a red
    square and the 5x5-grid cells that hold it as red rectangles.
    """
    from matplotlib.patches import Rectangle

    from ..metrics import dice
    from .far_pixel_task import marker_cells

    n, names = len(samples), list(predictions)
    if len(row_titles) != n or any(len(p) != n for p in predictions.values()):
        raise ValueError(f"show_far_pixel needs one row title and one prediction per map ({n} maps), got "
                         f"{len(row_titles)} titles and {[len(p) for p in predictions.values()]} predictions")
    cols = 2 + len(names)
    fig, axes = _subplots(n, cols, figsize=(1.75 * cols, 1.95 * n), squeeze=False)
    for i, s in enumerate(samples):
        size = s.bits.shape[0]
        ax = axes[i, 0]
        ax.imshow(s.bits, cmap="gray", vmin=-1.5, vmax=1.5)
        ax.add_patch(Rectangle((s.marker[1] - 0.5, s.marker[0] - 0.5), 1, 1, color="red"))
        for grid, rows, cols_ in marker_cells(size, s.marker):
            if grid == 5:
                ax.add_patch(Rectangle((cols_.start - 0.5, rows.start - 0.5), cols_.stop - cols_.start,
                                       rows.stop - rows.start, fill=False, ec="red", lw=1.5))
        for r, c in (marks[i] if marks is not None else []):
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, ec="orange", lw=2))
        ax.set_ylabel(row_titles[i], fontsize=10)
        axes[i, 1].imshow(s.mask, cmap="gray", vmin=0, vmax=1)
        truth = torch.from_numpy(s.mask).float()
        for j, name in enumerate(names):
            pred = (predictions[name][i] >= 0.5).float()
            axes[i, 2 + j].imshow(pred.numpy(), cmap="gray", vmin=0, vmax=1)
            axes[i, 2 + j].set_title(f"Dice {float(dice(pred[None], truth[None])[0]):.2f}", fontsize=10)
    axes[0, 0].set_title("input", fontsize=10)
    axes[0, 1].set_title("label", fontsize=10)
    for j, name in enumerate(names):
        axes[0, 2 + j].set_title(f"{name}\n{axes[0, 2 + j].get_title()}", fontsize=10)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig
