"""The book's dense figures stay legible in its column: no text below 70% of the body text.

A figure wider than the column is shown shrunk to it, and its text with it. The
column is at least ``COLUMN_PX`` wide on a desktop (the narrowest, at a 992 px
window, book/_static/book.css); body text is 16 px. A text of ``size`` points in a
figure drawn at ``dpi`` and ``width_px`` wide (tight bounding box, as saved) is
shown at ``size * dpi / 72 * min(1, COLUMN_PX / width_px)`` px.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from esa_tutorial.book import plotting  # noqa: E402
from esa_tutorial.book.plotting import show_pyramid, smallest_text  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import draw_figures  # noqa: E402

COLUMN_PX = 750
BODY_PX = 16
NOTEBOOK_DPI = 100  # the stored notebook figures: 100 px per inch (matplotlib-inline)
PHONE_FIGURE_PX = 327  # a figure's width in the column of a 390 px phone (book's browser test)


def smallest_text_px(fig: plt.Figure, dpi: float, column_px: float = COLUMN_PX) -> tuple[float, str]:
    """The smallest text of ``fig`` as a reader sees it in a column ``column_px`` wide, and that text."""
    fig.set_dpi(dpi)
    fig.canvas.draw()
    width_px = fig.get_tightbbox(fig.canvas.get_renderer()).width * dpi
    scale = min(1.0, column_px / width_px)
    size, text = smallest_text(fig)
    return size * dpi / 72 * scale, text


def _last_figure() -> plt.Figure:
    return plt.figure(plt.get_fignums()[-1])


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_the_measure_fails_a_figure_that_is_too_wide():
    """Chapter 4's old layout: 14 panels across with 6 pt weights (shown at about 4 px)."""
    fig, axes = plt.subplots(2, 7, figsize=(13.1, 4.6))
    for ax in axes.flat:
        ax.text(0.5, 0.5, "0.00", fontsize=6)
    px, _ = smallest_text_px(fig, NOTEBOOK_DPI)
    assert px == pytest.approx(6 * 100 / 72 * COLUMN_PX / (fig.get_tightbbox().width * 100))
    assert px < 0.7 * BODY_PX


def test_chapter_4_token_attention_is_legible():
    rows = {"polyp pixel": ((3, 4), [torch.rand(35), torch.rand(35)]),
            "mucosa pixel": ((1, 1), [torch.rand(35), torch.rand(35)])}
    plotting.show_token_attention(np.zeros((8, 8, 3)), np.zeros((8, 8)), rows)
    px, text = smallest_text_px(_last_figure(), NOTEBOOK_DPI)
    assert px >= 0.7 * BODY_PX, f"{text!r} is shown at {px:.1f} px"


def test_chapter_8_pyramid_grids_are_legible():
    fig = show_pyramid(torch.rand(3, 32, 32), (5, 6), torch.softmax(torch.randn(2, 35), -1))
    px, text = smallest_text_px(fig, NOTEBOOK_DPI)
    assert px >= 0.7 * BODY_PX, f"{text!r} is shown at {px:.1f} px"


@pytest.mark.parametrize("draw", [draw_figures.esa_module_figure, draw_figures.ldnet_overview_figure],
                         ids=["fig1_esa_module", "fig2_ldnet_overview"])
def test_the_book_diagrams_are_legible_on_a_phone(draw):
    """Shrunk to a phone's column, Figs. 1 and 2 still show every label at 70% of the body
    text (and larger in a desktop column), and no label runs out of its box."""
    fig = draw()
    assert draw_figures.labels_fit(fig) == []
    for column in (PHONE_FIGURE_PX, COLUMN_PX):
        px, text = smallest_text_px(fig, draw_figures.DPI, column)
        assert px >= 0.7 * BODY_PX, f"{text!r} is shown at {px:.1f} px in a {column} px column"
    width_in = fig.get_tightbbox().width
    assert width_in <= draw_figures.MAX_WIDTH_IN


def test_the_measure_fails_the_old_ldnet_diagram_on_a_phone():
    """The old Fig. 2: 13.5 in wide with 7 pt labels, at 2.8 px in a phone's column."""
    fig, ax = plt.subplots(figsize=(13.5, 7.6))
    ax.text(0.5, 0.5, "head updater", fontsize=7)
    px, _ = smallest_text_px(fig, 150, PHONE_FIGURE_PX)
    assert px < 0.7 * BODY_PX


def _png_text(data: bytes) -> dict[str, str]:
    from io import BytesIO

    from PIL import Image
    with Image.open(BytesIO(data)) as png:
        return dict(png.text)


def test_a_helper_figure_records_its_smallest_text_in_the_png_a_notebook_shows():
    """The PNG IPython makes of a helper's figure (as a notebook shows it, and as the book
    then serves it) names its smallest text in that PNG's pixels, titles added later too."""
    from IPython.core.pylabtools import print_figure

    plotting.show_values((np.eye(3), "identity"), (np.ones((3, 2)), "ones"))
    fig = _last_figure()
    fig.axes[0].set_title("added by a chapter", fontsize=5)
    png = print_figure(fig, "png", dpi=100)
    assert _png_text(png)[plotting.TEXT_RECORD] == f"{5 * 100 / 72:.2f}"
    saved = io.BytesIO()
    fig.savefig(saved, format="png", dpi=200, metadata={"Title": "kept"})
    text = _png_text(saved.getvalue())
    assert (text[plotting.TEXT_RECORD], text["Title"]) == (f"{5 * 200 / 72:.2f}", "kept")


def _runs() -> list[dict]:
    history = {"eval_step": [10, 20], "val_dice": [0.5, 0.6]}
    return [{"spec": {"variant": v, "seed": s}, "history": history}
            for v in ("ESA", "no attention") for s in (0, 1)]


WIDE_HELPERS = {  # helpers whose figure once ran past a desktop column with small text
    "plot_cost": lambda: plotting.plot_cost(
        [16, 1e4], {"MHSA": [1e6, 1e12], "ESA": [1e6, 1e9]}, {"MHSA": [1e-6, 1.0], "ESA": [1e-6, 1e-3]},
        stage_n=[196, 784], stage_labels=["e4", "e3"], stage_flops=[1e8, 1e9],
        stage_gib={"MHSA": [0.01, 0.1]}, crossover=100),
    "show_grids": lambda: plotting.show_grids([np.random.rand(s, s) for s in (1, 3, 5)],
                                              ["1x1", "3x3", "5x5"]),
    "show_bins": lambda: plotting.show_bins((7, 3), (10, 4)),
    "show_batch": lambda: plotting.show_batch(torch.rand(8, 3, 64, 64), torch.rand(8, 1, 64, 64)),
    "show_samples": lambda: plotting.show_samples(torch.rand(5, 3, 64, 64), torch.rand(5, 1, 64, 64),
                                                  [f"image {i}" for i in range(5)]),
    "plot_curves": lambda: plotting.plot_curves(_runs(), ["ESA", "no attention"]),
}


@pytest.mark.parametrize("name", list(WIDE_HELPERS))
def test_wide_helper_figures_are_legible_at_full_size_in_a_desktop_column(name):
    """Legible in the narrowest desktop column, and no wider than it: shown at full size
    there, and at that size on a phone too, scrolling (book/_static/book.css)."""
    WIDE_HELPERS[name]()
    fig = _last_figure()
    px, text = smallest_text_px(fig, NOTEBOOK_DPI)
    assert px >= 0.7 * BODY_PX, f"{text!r} is shown at {px:.1f} px"
    assert fig.get_tightbbox().width * NOTEBOOK_DPI <= COLUMN_PX


@pytest.mark.parametrize("weight,label", [(0.0, ".00"), (0.05, ".05"), (0.983, ".98"),
                                          (0.994, ".99"), (0.995, "1"), (1.0, "1")])
def test_grid_weights_print_in_three_characters(weight, label):
    from esa_tutorial.book.plotting import weight_label
    assert weight_label(weight) == label


@pytest.mark.parametrize("n", [4, 6])
def test_chapter_10_truth_and_prediction_is_legible(n):
    titles = [f"worst\nDice 0.{i}7" for i in range(n)]
    plotting.show_truth_and_prediction(torch.rand(n, 3, 64, 64), torch.rand(n, 1, 64, 64),
                                       torch.rand(n, 1, 64, 64), titles)
    px, text = smallest_text_px(_last_figure(), NOTEBOOK_DPI)
    assert px >= 0.7 * BODY_PX, f"{text!r} is shown at {px:.1f} px"


def test_chapter_10_attention_on_image_is_legible():
    plotting.show_attention_on_image(torch.rand(3, 64, 64), torch.zeros(1, 64, 64),
                                     torch.rand(2, 4, 64, 64) * 3, [(10, 12), (40, 50)],
                                     ["polyp pixel", "background pixel"],
                                     ["e4 (14x14)", "e3 (28x28)", "e2 (56x56)", "e1 (112x112)"])
    px, text = smallest_text_px(_last_figure(), NOTEBOOK_DPI)
    assert px >= 0.7 * BODY_PX, f"{text!r} is shown at {px:.1f} px"


def test_chapter_8_far_pixel_figure_is_legible():
    from esa_tutorial.book.far_pixel_task import far_pixel_sample, pooling_twin

    s = far_pixel_sample(0, 0)
    probs = {name: torch.rand(2, 24, 24) for name in ("ESA", "full MHSA", "conv + ESA")}
    fig = plotting.show_far_pixel([s, pooling_twin(s)], probs, ["a map", "its twin"])
    px, text = smallest_text_px(fig, NOTEBOOK_DPI)
    assert px >= 0.7 * BODY_PX, f"{text!r} is shown at {px:.1f} px"
