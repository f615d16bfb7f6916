"""Plots and tables of stored experiment results, so chapter cells stay one line each."""

from __future__ import annotations

from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from . import summarise

COLOURS = {
    "no attention": "tab:gray", "ESA": "tab:blue", "full MHSA": "tab:red", "ESA + LCA": "tab:green",
    "global token": "tab:orange",
}


def curves(runs: Sequence[dict[str, Any]], variant: str, key: str = "val_dice") -> tuple[np.ndarray, np.ndarray]:
    """Evaluation steps (n_evals,) and the ``key`` curves of every seed of ``variant`` (n_seeds, n_evals)."""
    chosen = [r for r in runs if r["spec"]["variant"] == variant]
    if not chosen:
        raise ValueError(f"no runs of variant {variant!r}")
    return np.array(chosen[0]["history"]["eval_step"]), np.array([r["history"][key] for r in chosen])


def plot_curves(
    runs: Sequence[dict[str, Any]],
    variants: Sequence[str],
    key: str = "val_dice",
    ax: plt.Axes | None = None,
    title: str | None = None,
) -> plt.Axes:
    """Mean over seeds (line) and min-max over seeds (band) of ``key`` against the training step."""
    ax = ax or plt.subplots(figsize=(5.5, 3.4))[1]
    for v in variants:
        steps, ys = curves(runs, v, key)
        colour = COLOURS.get(v)
        ax.plot(steps, ys.mean(0), "o-", ms=3, color=colour, label=f"{v} ({len(ys)} seeds)")
        ax.fill_between(steps, ys.min(0), ys.max(0), color=colour, alpha=0.2)
    ax.set(xlabel="training step", ylabel=key.replace("_", " "), title=title)
    ax.legend(fontsize=8)
    return ax


def results_table(runs: Sequence[dict[str, Any]], variants: Sequence[str], key: str = "val_dice") -> str:
    """One line per variant: final ``key`` mean +- std over seeds, the seeds' values, parameters and cost."""
    stats = summarise(runs, key)
    lines = [f"{'variant':<14}{'mean':>7}{'std':>7}   per seed{'':<14}{'params':>9}{'saved MiB':>10}{'ms/step':>9}"]
    for v in variants:
        chosen = [r for r in runs if r["spec"]["variant"] == v]
        finals = " ".join(f"{r['history'][key][-1]:.3f}" for r in chosen)
        cost = chosen[0]["cost"]
        ms = np.median([r["cost"]["ms_per_step"] for r in chosen])
        lines.append(
            f"{v:<14}{stats[v]['mean']:>7.3f}{stats[v]['std']:>7.3f}   {finals:<22}"
            f"{cost['params'] / 1e3:>8.1f}k{cost['saved_mb']:>10.1f}{ms:>9.0f}"
        )
    return "\n".join(lines)


def show_samples(images: torch.Tensor, masks: torch.Tensor, titles: Sequence[str] | None = None) -> plt.Figure:
    """Images (n, 3, H, W) with their masks outlined in white, side by side."""
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(2.3 * n, 2.5), squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.imshow(images[i].permute(1, 2, 0).numpy())
        ax.contour(masks[i, 0].numpy(), levels=[0.5], colors="white", linewidths=1.0)
        ax.set_xticks([])
        ax.set_yticks([])
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
    fig.tight_layout()
    return fig
