"""Draw the book's two diagrams: the ESA module and where ESA/LCA sit in LDNet.

    python tools/draw_figures.py      # writes book/figures/esa_module.png, ldnet_overview.png

Diagrams only: no measured number appears in them. Shapes in the labels are
computed from the package so they cannot drift from the code.

Both are drawn for a phone first: every label is ``FONT`` points in a figure at most
``MAX_WIDTH_IN`` inches wide, so that shrunk to a 390 px phone's column (327 px) the
labels are still 70% of the body text (tests/test_figure_legibility.py; the book's
browser test measures them as shown). Words that do not fit that width are in the
figure's caption, where they wrap. The PNGs are drawn at ``DPI`` (sharp on high-density
screens) and shown ``SHOWN_PX_PER_IN`` CSS pixels per inch (the ``:width:`` of the figure
directives in book/intro.md and book/paper.md), which puts the labels at the body text's
size on a desktop.
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
PURPLE, RED = "#6a3d9a", "#b2182b"  # the kernel's arrows; the previous output as LCA's mask
FONT = 11  # points, every label
MAX_WIDTH_IN = 4.3
DPI = 200
SHOWN_PX_PER_IN = 105


def new_figure(width: float, height: float) -> tuple[plt.Figure, plt.Axes]:
    """A figure whose axes cover it, with data coordinates in inches (origin bottom left)."""
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    return fig, ax


def box(ax, cx, cy, w, h, text, kind="plain") -> dict[str, float]:
    """A rounded box centred at (cx, cy) with ``text`` in it; returns its edges."""
    ax.add_patch(FancyBboxPatch((cx - w / 2, cy - h / 2), w, h,
                                boxstyle="round,pad=0,rounding_size=0.06",
                                fc=COLORS[kind], ec="#444444", lw=1))
    ax.text(cx, cy, text, ha="center", va="center", fontsize=FONT, linespacing=1.15)
    return {"l": cx - w / 2, "r": cx + w / 2, "b": cy - h / 2, "t": cy + h / 2, "x": cx, "y": cy}


def arrow(ax, start, end, color="#333333", connection="arc3") -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=11, color=color,
                                 lw=1.2, connectionstyle=connection, shrinkA=0, shrinkB=0))


def labels_fit(fig: plt.Figure) -> list[str]:
    """The labels that run out of their box or past the figure's edge (none, when drawn well)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    boxes = [p.get_window_extent(renderer) for p in ax.patches if isinstance(p, FancyBboxPatch)]
    out = []
    for t in ax.texts:
        e = t.get_window_extent(renderer)
        inside = [b for b in boxes if b.contains(e.x0 + e.width / 2, e.y0 + e.height / 2)]
        edge = fig.bbox
        if inside and not all(inside[0].contains(x, y) for x in (e.x0, e.x1) for y in (e.y0, e.y1)):
            out.append(f"{t.get_text()!r} runs out of its box")
        elif e.x0 < edge.x0 or e.x1 > edge.x1 or e.y0 < edge.y0 or e.y1 > edge.y1:
            out.append(f"{t.get_text()!r} runs past the figure")
    return out


def esa_module_figure() -> plt.Figure:
    """The home page's Fig. 1: ESA top to bottom, queries and pooled keys/values side by side."""
    esa = ESA(64)
    n_kv = num_tokens(esa.ppm.pooling_sizes)
    sizes = ", ".join(f"{s}²" for s in esa.ppm.pooling_sizes)
    width, height = 4.1, 4.6
    fig, ax = new_figure(width, height)
    mid, bw, h = width / 2, 3.5, 0.5
    ax.text(mid, 4.35, f"ESA: N queries, {n_kv} keys\nO(N·{n_kv}) instead of O(N²)",
            ha="center", va="center", fontsize=FONT)
    x = box(ax, mid, 3.65, 2.0, 0.34, "x (B, C, H, W)", "in")
    qkv = box(ax, mid, 2.95, bw, h, "to_qkv: 1×1 conv, no bias\nC → 3·inner")
    q = box(ax, 1.02, 2.05, 1.84, h, "Q: every pixel\n(B, heads, N, d)", "in")
    kv = box(ax, 3.08, 2.05, 1.84, h, f"K, V pooled to\n{sizes} → {n_kv}", "pool")
    att = box(ax, mid, 1.15, bw, h, f"softmax(QKᵀ/√d) V\nscores (B, heads, N, {n_kv})", "attn")
    out = box(ax, mid, 0.3, bw, h, "to_out: Linear inner → C\n(B, N, C)")
    arrow(ax, (mid, x["b"]), (mid, qkv["t"]))
    for part in (q, kv):
        arrow(ax, (part["x"], qkv["b"]), (part["x"], part["t"]))
        arrow(ax, (part["x"], part["b"]), (part["x"], att["t"]))
    arrow(ax, (mid, att["b"]), (mid, out["t"]))
    return fig


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


def ldnet_overview_figure() -> plt.Figure:
    """The paper page's Fig. 2, one row per resolution: the encoder down the left, ESA on
    each skip, the decoder back up (LCA in every stage but the top one) and the kernel
    head on the right, named as in LDNet: e1..e5, D5..D1, K5..K1, out4..out0.

    Source: LDNet's code (``models/LDNet.py`` of ReaFly/LDNet, ``LDNet.forward``): ESA on
    e4..e1 (none on e5), ``decoder5`` on e5, the first kernel from e5 by GroupNorm, ReLU,
    global average pooling and a Linear layer, stage k's LCA on the coarser decoder map
    under the previous output, and ``headUpdators`` passing the kernel up.
    """
    sh = paper_shapes()
    width, height = 4.2, 4.9
    fig, ax = new_figure(width, height)
    ax.set_ylim(0.45, 0.45 + height)  # the rows below are placed from the top
    col = {"enc": 0.42, "esa": 1.18, "dec": 2.09, "head": 3.66}  # column centres
    wide = {"enc": 0.8, "esa": 0.52, "dec": 0.98, "head": 1.02}
    h, pitch = 0.46, 0.66
    row = {k: 4.2 - (k - 1) * pitch for k in range(1, 6)}  # stage k: e_k, D_k, K_k
    for name, text in (("enc", "encoder"), ("dec", "decoder"), ("head", "kernel\nhead")):
        ax.text(col[name], 5.12, text, ha="center", va="center", fontsize=FONT, style="italic")
    image = box(ax, col["enc"], 4.86, wide["enc"], 0.34, "image", "in")
    enc, dec, head = {}, {}, {}
    for k in range(1, 6):
        enc[k] = box(ax, col["enc"], row[k], wide["enc"], h, f"e{k}\n{_size(sh[f'e{k}'])}")
        text = f"D{k}\n{_size(sh[f'D{k}'])}"
        dec[k] = box(ax, col["dec"], row[k], wide["dec"], h, text, "plain" if k == 5 else "pool")
        head[k] = box(ax, col["head"], row[k], wide["head"], h,
                      f"K{k} → out{k - 1}\n{_size(sh[f'out{k - 1}'], channels=False)}", "head")
    arrow(ax, (col["enc"], image["b"]), (col["enc"], enc[1]["t"]))
    for k in range(1, 5):
        arrow(ax, (col["enc"], enc[k]["b"]), (col["enc"], enc[k + 1]["t"]))
        esa = box(ax, col["esa"], row[k], wide["esa"], 0.3, "ESA", "attn")
        arrow(ax, (enc[k]["r"], row[k]), (esa["l"], row[k]))
        arrow(ax, (esa["r"], row[k]), (dec[k]["l"], row[k]))
        arrow(ax, (col["dec"], dec[k + 1]["t"]), (col["dec"], dec[k]["b"]))  # D(k+1) into LCA
        arrow(ax, (col["head"], head[k + 1]["t"]), (col["head"], head[k]["b"]), PURPLE)  # K
        arrow(ax, (head[k + 1]["l"] + 0.08, head[k + 1]["t"]), (dec[k]["r"] - 0.08, dec[k]["b"]),
              RED)  # out_k: LCA's mask in stage k
    for k in range(1, 6):  # F_k: D_k through a 1x1 conv into the head
        arrow(ax, (dec[k]["r"], row[k]), (head[k]["l"], row[k]))
    arrow(ax, (enc[5]["r"], row[5]), (dec[5]["l"], row[5]))
    kernel = box(ax, col["head"], row[5] - 0.82, 1.14, h, "GN, ReLU,\nGAP, Linear", "head")
    arrow(ax, (col["enc"], enc[5]["b"]), (kernel["l"], kernel["y"]), connection="angle,angleA=-90,angleB=180")
    arrow(ax, (col["head"], kernel["t"]), (col["head"], head[5]["b"]), PURPLE)
    return fig


def save(fig: plt.Figure, name: str) -> None:
    """Into book/figures, recording the smallest text for the book's browser test."""
    save_figure(fig, OUT / name, dpi=DPI, bbox_inches="tight", pad_inches=0.04,
                metadata=text_record(fig, DPI))
    plt.close(fig)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    save(esa_module_figure(), "esa_module.png")
    save(ldnet_overview_figure(), "ldnet_overview.png")
    print(f"wrote {OUT}/esa_module.png and ldnet_overview.png")
