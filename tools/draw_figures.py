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
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.12, text, ha="center", fontsize=8)


def esa_module() -> None:
    esa = ESA(64)
    n_kv = num_tokens(esa.ppm.pooling_sizes)
    fig, ax = plt.subplots(figsize=(10, 3.6))
    ax.set_xlim(0, 12.2)
    ax.set_ylim(0, 4.4)
    ax.axis("off")
    box(ax, 0.1, 1.6, 1.6, 1.2, "x\n(B, C, H, W)", "in")
    box(ax, 2.3, 1.6, 1.9, 1.2, "to_qkv\n1x1 conv, no bias\nC → 3·h·d", "plain", 8)
    box(ax, 4.9, 3.0, 2.2, 1.0, f"Q: all N = H·W pixels\n(B, h, N, d)", "in", 8)
    box(ax, 4.9, 0.4, 2.2, 1.2, f"PPM on K and V\npool to 1², 3², 5²\n→ {n_kv} tokens", "pool", 8)
    box(ax, 7.7, 1.6, 2.1, 1.2, f"softmax(QKᵀ/√d) V\nscores (B, h, N, {n_kv})", "attn", 8)
    box(ax, 10.3, 1.6, 1.8, 1.2, "to_out\nLinear h·d → C\n(B, N, C)", "plain", 8)
    arrow(ax, (1.7, 2.2), (2.3, 2.2))
    arrow(ax, (4.2, 2.4), (4.9, 3.4), "q")
    arrow(ax, (4.2, 2.0), (4.9, 1.0), "k, v")
    arrow(ax, (7.1, 3.4), (7.7, 2.5))
    arrow(ax, (7.1, 1.0), (7.7, 1.9))
    arrow(ax, (9.8, 2.2), (10.3, 2.2))
    ax.set_title(f"Efficient Self-Attention: N queries attend to {n_kv} pooled keys, O(N·{n_kv}) instead of O(N²)",
                 fontsize=10)
    fig.savefig(OUT / "esa_module.png", dpi=150, bbox_inches="tight")
    plt.close(fig)


def ldnet_overview() -> None:
    fig, ax = plt.subplots(figsize=(11, 5.2))
    ax.set_xlim(0, 13)
    ax.set_ylim(0, 6.4)
    ax.axis("off")
    box(ax, 0.1, 2.6, 1.3, 1.0, "image\n3×224×224", "in", 8)
    enc = [(1.9, 4.9, "E1 64×112²"), (4.3, 4.9, "E2 64×56²"), (6.7, 4.9, "E3 128×28²"), (9.1, 4.9, "E4 256×14²")]
    for x, y, label in enc:
        box(ax, x, y, 2.0, 0.8, f"encoder {label}", "plain", 8)
        box(ax, x, y - 1.3, 2.0, 0.8, "ESA block", "attn", 9)
        arrow(ax, (x + 1.0, y), (x + 1.0, y - 0.5))
    for (x0, _, _), (x1, _, _) in zip(enc, enc[1:]):
        arrow(ax, (x0 + 2.0, 5.3), (x1, 5.3))
    arrow(ax, (1.4, 3.1), (1.9, 5.1))
    box(ax, 11.4, 4.9, 1.5, 0.8, "top 512×7²", "plain", 8)
    arrow(ax, (11.1, 5.3), (11.4, 5.3))
    box(ax, 11.4, 2.2, 1.5, 1.4, "dynamic\nkernel\n(global\ncontext)", "head", 8)
    arrow(ax, (12.15, 4.9), (12.15, 3.6))
    dec = [(9.1, "D4"), (6.7, "D3"), (4.3, "D2"), (1.9, "D1")]
    for x, name in dec:
        box(ax, x, 1.6, 2.0, 0.8, f"decoder {name}\n+ LCA block", "pool", 8)
        box(ax, x, 0.2, 2.0, 0.8, "head updater\n→ mask logits", "head", 8)
        arrow(ax, (x + 1.0, 3.6), (x + 1.0, 2.4), style="-|>", color="#999999")
        arrow(ax, (x + 1.0, 1.6), (x + 1.0, 1.0))
    for (x0, _), (x1, _) in zip(dec, dec[1:]):
        arrow(ax, (x0, 2.0), (x1 + 2.0, 2.0))
        arrow(ax, (x0, 0.6), (x1 + 1.4, 1.6), "mask", color="#aa3333", rad=-0.2)
    arrow(ax, (11.4, 2.6), (11.1, 0.7), "kernel", color="#6a3d9a")
    ax.text(6.5, 6.2, "LDNet: ESA refines encoder features; LCA refines decoder features with the "
            "previous prediction; a per-image kernel segments", ha="center", fontsize=9)
    fig.savefig(OUT / "ldnet_overview.png", dpi=150, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    esa_module()
    ldnet_overview()
    print(f"wrote {OUT}/esa_module.png and ldnet_overview.png")
