"""Draw the book's two diagrams: the ESA module and where ESA/LCA sit in LDNet.

    python tools/draw_figures.py      # writes book/figures/esa_module.png, ldnet_overview.png

Diagrams only: no measured number appears in them. Shapes in the labels are
computed from the package so they cannot drift from the code.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from esa_tutorial import ESA, num_tokens  # noqa: E402
from esa_tutorial.book.plotting import text_record  # noqa: E402
from esa_tutorial.files import save_figure  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "book" / "figures"
COLORS = {"in": "#dbe9f6", "attn": "#f6d7c3", "pool": "#d8f0d2", "head": "#eadcf4", "plain": "#f2f2f2"}


def box(ax, x, y, w, h, text, kind="plain", fontsize=9):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                fc=COLORS[kind], ec="#444444", lw=1))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize)


def arrow(ax, start, end, text=None, style="-|>", color="#333333", rad=0.0):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=12, color=color, lw=1.2,
                                 connectionstyle=f"arc3,rad={rad}"))
    if text:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.12, text, ha="center", fontsize=9)


def esa_module_figure() -> plt.Figure:
    """The home page's Fig. 1. Text of 9 pt or more: at the book's column width (the PNG is
    shrunk to about 750 px) that is 70% of the body text (tests/test_figure_legibility.py)."""
    esa = ESA(64)
    n_kv = num_tokens(esa.ppm.pooling_sizes)
    fig, ax = plt.subplots(figsize=(10, 3.6))
    ax.set_xlim(0, 12.3)
    ax.set_ylim(0, 4.4)
    ax.axis("off")
    box(ax, 0.1, 1.6, 1.6, 1.2, "x\n(B, C, H, W)", "in")
    box(ax, 2.3, 1.6, 1.9, 1.2, "to_qkv\n1x1 conv, no bias\nC → 3·inner", "plain", 9)
    box(ax, 4.9, 3.0, 2.2, 1.0, "Q: all N = H·W pixels\n(B, heads, N, d)", "in", 9)
    box(ax, 4.9, 0.4, 2.2, 1.2, f"PPM on K and V\npool to 1², 3², 5²\n→ {n_kv} tokens", "pool", 9)
    box(ax, 7.6, 1.6, 2.5, 1.2, f"softmax(QKᵀ/√d) V\nscores (B, heads, N, {n_kv})", "attn", 9)
    box(ax, 10.5, 1.6, 1.7, 1.2, "to_out\nLinear inner → C\n(B, N, C)", "plain", 9)
    arrow(ax, (1.7, 2.2), (2.3, 2.2))
    arrow(ax, (4.2, 2.4), (4.9, 3.4), "q")
    arrow(ax, (4.2, 2.0), (4.9, 1.0))
    ax.text(4.2, 1.3, "k, v", ha="center", fontsize=9)
    arrow(ax, (7.1, 3.4), (7.6, 2.5))
    arrow(ax, (7.1, 1.0), (7.6, 1.9))
    arrow(ax, (10.1, 2.2), (10.5, 2.2))
    ax.set_title(f"Efficient Self-Attention: N queries attend to {n_kv} pooled keys, O(N·{n_kv}) instead of O(N²)",
                 fontsize=10)
    return fig


def save(fig: plt.Figure, name: str, dpi: float) -> None:
    """Into book/figures, recording the smallest text for the book's browser test."""
    save_figure(fig, OUT / name, dpi=dpi, bbox_inches="tight", metadata=text_record(fig, dpi))
    plt.close(fig)


def esa_module() -> None:
    fig = esa_module_figure()
    save(fig, "esa_module.png", 150)


def paper_shapes(size: int = 224) -> dict[str, tuple[int, ...]]:
    """(C, H, W) of every map in LDNet.paper_sized() at a size x size input, from meta tensors."""
    import torch

    from esa_tutorial import LDNet

    shapes: dict[str, tuple[int, ...]] = {}
    with torch.device("meta"):
        model = LDNet.paper_sized()
        x = torch.empty(1, 3, size, size)
        hooks = [model.top_decoder.register_forward_hook(
            lambda m, i, o: shapes.__setitem__("D5", tuple(o.shape[1:])))]
        for k, dec in zip((4, 3, 2, 1), model.decoders):
            hooks.append(dec.register_forward_hook(
                lambda m, i, o, k=k: shapes.__setitem__(f"D{k}", tuple(o.shape[1:]))))
        for k, e in enumerate(model.encoder(x), start=1):
            shapes[f"e{k}"] = tuple(e.shape[1:])
        for k, out in enumerate(model(x)):
            shapes[f"out{k}"] = tuple(out.shape[1:])
        for h in hooks:
            h.remove()
    return shapes


def _size(shape: tuple[int, ...], channels: bool = True) -> str:
    c, h, w = shape
    side = f"{h}²" if h == w else f"{h}×{w}"
    return f"{c}×{side}" if channels else side


def ldnet_overview() -> None:
    """LDNet's data flow, named as in LDNet, small: e1..e5, D5..D1, F, K5..K1, out0..out4."""
    sh = paper_shapes()
    fig, ax = plt.subplots(figsize=(13.5, 7.6))
    ax.set_xlim(-0.5, 14.3)
    ax.set_ylim(-0.9, 7.45)
    ax.axis("off")
    pitch, w = 2.5, 1.8
    col = {k: 1.5 + (k - 1) * pitch for k in range(1, 6)}  # column of encoder stage k
    w5 = 2.6  # the last column holds the top decoder and the kernel generator side by side
    purple, red = "#6a3d9a", "#b2182b"

    # encoder
    box(ax, -0.4, 6.2, 1.4, 0.8, "image\n3×224²", "in", 8)
    for k in range(1, 6):
        box(ax, col[k], 6.2, w5 if k == 5 else w, 0.8, f"encoder e{k}\n{_size(sh[f'e{k}'])}",
            "plain", 8)
    arrow(ax, (1.0, 6.6), (col[1], 6.6))
    for k in range(1, 5):
        arrow(ax, (col[k] + w, 6.6), (col[k + 1], 6.6))
    # ESA on the four skips, into the decoder stage of the same resolution
    for k in range(1, 5):
        box(ax, col[k], 4.9, w, 0.7, "ESA block", "attn", 9)
        arrow(ax, (col[k] + w / 2, 6.2), (col[k] + w / 2, 5.6))
        arrow(ax, (col[k] + w / 2, 4.9), (col[k] + w / 2, 4.2))
    # kernel generator and top decoder under e5
    box(ax, col[5] + 1.5, 4.7, 1.1, 1.1, "GN, ReLU,\nGAP,\nLinear", "head", 7)
    arrow(ax, (col[5] + 2.05, 6.2), (col[5] + 2.05, 5.8))
    box(ax, col[5], 3.4, 1.35, 0.8, f"top decoder\nD5 {_size(sh['D5'])}", "plain", 7)
    arrow(ax, (col[5] + 0.6, 6.2), (col[5] + 0.6, 4.2))
    arrow(ax, (col[5] + 2.05, 4.7), (col[5] + 2.05, 2.65), color=purple)
    ax.text(col[5] + 2.12, 3.7, "K5", fontsize=8, color=purple)
    # decoder stages: LCA on the coarser decoder feature, concatenated with the ESA skip
    for k in range(1, 5):
        box(ax, col[k], 3.4, w, 0.8, f"LCA + decoder\nD{k} {_size(sh[f'D{k}'])}", "pool", 8)
        arrow(ax, (col[k + 1], 3.8), (col[k] + w, 3.8))  # D(k+1) into stage k's LCA
    # heads: the first prediction, then one head updater per stage
    box(ax, col[5], 1.7, w5, 0.9, "F5 = 1×1 conv(D5)\nout4 = K5 * F5", "head", 8)
    arrow(ax, (col[5] + 0.6, 3.4), (col[5] + 0.6, 2.6))
    for k in range(1, 5):
        box(ax, col[k], 1.7, w, 0.9, f"head updater\nK{k} = U(F{k}, K{k + 1}, out{k})\n"
            f"out{k - 1} = K{k} * F{k}", "head", 7)
        arrow(ax, (col[k] + w / 2, 3.4), (col[k] + w / 2, 2.6))
        # the kernel and the previous (coarser) output pass to the next stage
        arrow(ax, (col[k + 1], 2.15), (col[k] + w, 2.15), color=purple)
        ax.text(col[k] + w + (pitch - w) / 2, 2.3, f"K{k + 1}\nout{k}", ha="center",
                fontsize=7, color=purple)
        # the previous output is also LCA's mask in stage k
        arrow(ax, (col[k + 1] + 0.15, 2.6), (col[k] + w - 0.15, 3.4), color=red)
    # the five outputs, all supervised
    for k in range(1, 6):
        x = col[k] + (0.6 if k == 5 else w / 2)
        arrow(ax, (x, 1.7), (x, 0.75))
        name = f"out{k - 1}"
        ax.text(x, 0.45, f"{name}\n{_size(sh[name], channels=False)}", ha="center", va="center",
                fontsize=8)
    ax.text(7.0, -0.35, "out0..out4: five predictions (out4 the coarsest, made first), "
            "all five supervised.   black: features   purple: kernel   red: the previous "
            "output as LCA's mask", ha="center", fontsize=8)
    ax.text(-0.4, -0.8, "Fk: Dk projected to 64 channels by a 1×1 conv.   U: head updater, pools Fk "
            "under the previous output upsampled ×2 (a plain sum) and gates it with the old "
            "kernel.   *: a per-image 1×1 convolution.",
            ha="left", fontsize=8)
    ax.set_title("LDNet: ESA on the encoder skips, LCA in the decoder, a per-image kernel "
                 "refined at every stage", fontsize=10)
    save(fig, "ldnet_overview.png", 150)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    esa_module()
    ldnet_overview()
    print(f"wrote {OUT}/esa_module.png and ldnet_overview.png")
