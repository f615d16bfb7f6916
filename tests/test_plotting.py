"""esa_tutorial.book.plotting: the book's figure helpers draw what they say, and reject bad input."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless; the tests only inspect the figures they draw

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from esa_tutorial import adaptive_bins  # noqa: E402
from esa_tutorial.book import plotting  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    plt.close("all")
    yield
    plt.close("all")


def _only_figure():
    numbers = plt.get_fignums()
    assert len(numbers) == 1, f"expected one new figure, got {len(numbers)}"
    return plt.figure(numbers[0])


def test_annotated_grid_writes_every_value():
    fig, ax = plt.subplots()
    values = np.array([[0.1, 0.25], [0.5, 1.0]])
    plotting.annotated_grid(ax, values, fmt="{:.2f}")
    assert sorted(t.get_text() for t in ax.texts) == ["0.10", "0.25", "0.50", "1.00"]


def test_show_bins_draws_one_bar_per_bin_and_shades_shared_pixels():
    assert plotting.show_bins((7, 3), (7, 5)) is None
    fig = _only_figure()
    ax3, ax5 = fig.axes
    for ax, bins in ((ax3, 3), (ax5, 5)):
        bars = [p for p in ax.patches if p.get_height() == pytest.approx(0.6)]
        assert [(round(b.get_x() + 0.5), round(b.get_x() + 0.5 + b.get_width())) for b in bars] \
            == adaptive_bins(7, bins)
    shaded = [p for p in ax5.patches if p.get_height() != pytest.approx(0.6)]
    assert len(shaded) == 4  # pixels 1, 2, 4 and 5 belong to two of the five bins


def test_show_token_attention_lays_out_one_row_per_pixel_and_head():
    rows = {"a": ((1, 2), [torch.rand(35), torch.rand(35)]), "b": ((3, 4), [torch.rand(35)] * 2)}
    plotting.show_token_attention(np.zeros((8, 8, 3)), np.zeros((8, 8)), rows)
    fig = _only_figure()
    assert len(fig.axes) == 2 * 2 * (1 + 3)
    titles = [ax.get_title() for ax in fig.axes]
    assert [titles[i] for i in (0, 4, 8, 12)] == ["a", "a", "b", "b"]
    assert titles[1].startswith("head 0, 1x1") and titles[7].startswith("head 1, 5x5")
    assert titles[13].startswith("head 1, 1x1")


def test_show_attention_row_draws_the_row_on_the_image_grid():
    weights = torch.softmax(torch.randn(6 * 5), dim=0).reshape(6, 5)
    plotting.show_attention_row(np.zeros((6, 5, 3)), None, (2, 3), weights)
    fig = _only_figure()
    heat = fig.axes[1].images[0].get_array()
    np.testing.assert_allclose(np.asarray(heat), weights.numpy())


def test_plot_cost_draws_every_curve_and_labels_the_last_stage_markers():
    ns = [64, 256, 1024]
    plotting.plot_cost(ns, {"MHSA": [1, 4, 16], "ESA": [1, 2, 4]}, {"MHSA": [1, 16, 256]},
                       stage_n=[64, 1024], stage_labels=["s1", "s2"],
                       stage_gib={"MHSA": [2.0, 3.0], "ESA": [0.5, 0.25]}, crossover=128)
    ax_f, ax_m = _only_figure().axes
    assert [line.get_label() for line in ax_f.get_lines()][:2] == ["MHSA", "ESA"]
    labels = [t.get_text() for t in ax_m.texts]
    assert labels == ["s1\n0.5 GiB", "s2\n0.25 GiB"]  # only the last set of markers is labelled


def test_show_outputs_orders_panels_coarse_to_fine():
    outputs = [torch.zeros(1, 16 // 2**k, 16 // 2**k) for k in range(5)]  # finest first
    plotting.show_outputs(torch.zeros(3, 16, 16), torch.zeros(1, 16, 16), outputs)
    titles = [ax.get_title() for ax in _only_figure().axes]
    assert titles[1].startswith("out4: 1x1") and titles[-1].startswith("out0: 16x16")


def test_show_truth_and_prediction_puts_image_truth_and_prediction_in_columns():
    images, masks = torch.rand(3, 3, 16, 16), (torch.rand(3, 1, 16, 16) > 0.5).float()
    probs = torch.rand(3, 1, 16, 16)
    plotting.show_truth_and_prediction(images, masks, probs, ["a", "b", "c"])
    fig = _only_figure()
    assert len(fig.axes) == 9
    assert [ax.get_title() for ax in fig.axes[:3]] == ["a", "b", "c"]
    assert [fig.axes[i].get_ylabel() for i in (0, 3, 6)] == ["image", "ground truth", "prediction"]
    np.testing.assert_array_equal(np.asarray(fig.axes[4].images[0].get_array()), masks[1, 0].numpy())
    np.testing.assert_allclose(np.asarray(fig.axes[8].images[0].get_array()), probs[2, 0].numpy())


def test_show_truth_and_prediction_names_mismatched_shapes():
    with pytest.raises(ValueError, match=r"got \(2, 3, 8, 8\), \(2, 1, 8, 8\), \(2, 1, 4, 4\) and 2 titles"):
        plotting.show_truth_and_prediction(torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 8),
                                           torch.rand(2, 1, 4, 4), ["a", "b"])


def test_show_attention_on_image_draws_each_map_over_the_image():
    maps = torch.rand(2, 4, 16, 16)
    plotting.show_attention_on_image(torch.rand(3, 16, 16), torch.zeros(1, 16, 16), maps,
                                     [(1, 2), (10, 12)], ["polyp", "background"], list("abcd"))
    fig = _only_figure()
    panels = fig.axes[:8]  # then the colour bar
    assert len(fig.axes) == 9
    assert [ax.get_title() for ax in panels[:4]] == list("abcd")
    np.testing.assert_allclose(np.asarray(panels[6].images[1].get_array()), maps[1, 2].numpy())
    star = panels[4].get_lines()[0]
    assert (star.get_xdata()[0], star.get_ydata()[0]) == (12, 10)  # (col, row) of pixel (10, 12)


def test_show_attention_on_image_names_the_expected_shape():
    with pytest.raises(ValueError, match=r"2 pixels and the image's size \(16, 16\), got shape \(2, 4, 8, 8\)"):
        plotting.show_attention_on_image(torch.rand(3, 16, 16), torch.zeros(1, 16, 16),
                                         torch.rand(2, 4, 8, 8), [(0, 0), (1, 1)], ["a", "b"], list("abcd"))


def test_show_far_pixel_draws_input_label_and_each_thresholded_prediction():
    from esa_tutorial.book.far_pixel_task import far_pixel_sample, pooling_twin

    s = far_pixel_sample(0, 0)
    twin = pooling_twin(s)
    truth = torch.from_numpy(np.stack([s.mask, twin.mask])).float()
    wrong = 1 - truth  # every pixel wrong: Dice 0
    fig = plotting.show_far_pixel([s, twin], {"right": truth * 0.9, "wrong": wrong}, ["map", "twin"],
                                  marks=[[(5, 19)], [(5, 19)]])
    assert fig.axes[0].get_ylabel() == "map" and fig.axes[4].get_ylabel() == "twin"
    assert fig.axes[2].get_title() == "right\nDice 1.00" and fig.axes[3].get_title() == "wrong\nDice 0.00"
    np.testing.assert_array_equal(np.asarray(fig.axes[6].images[0].get_array()), truth[1].numpy())
    np.testing.assert_array_equal(np.asarray(fig.axes[1].images[0].get_array()), s.mask)
    # The marker (red square), its two 5x5 cells (column 19 lies where two bins overlap: red frames)
    # and the marked pixel (orange frame).
    edges = [p.get_edgecolor()[:3] for p in fig.axes[0].patches]
    assert len(fig.axes[0].patches) == 1 + 2 + 1 and edges[-1] == matplotlib.colors.to_rgb("orange")
    with pytest.raises(ValueError, match=r"one prediction per map \(2 maps\), got 2 titles and \[1\]"):
        plotting.show_far_pixel([s, twin], {"x": truth[:1]}, ["a", "b"])


def test_plot_gradient_norms_draws_one_log_line_per_wiring():
    norms = {"ldnet": [1.0, 0.5, 0.25], "post-norm": [4.0, 2.0, 1.0]}
    assert plotting.plot_gradient_norms(norms, "gradients") is None
    (ax,) = _only_figure().axes
    assert ax.get_yscale() == "log" and ax.get_title() == "gradients"
    assert [tuple(line.get_ydata()) for line in ax.lines] == [(1.0, 0.5, 0.25), (4.0, 2.0, 1.0)]
    assert [tuple(line.get_xdata()) for line in ax.lines] == [(1, 2, 3)] * 2  # block 1 nearest the input
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ldnet", "post-norm"]


def test_show_lesion_attention_shows_the_mask_and_the_weights_with_a_scale():
    mask, weights = torch.rand(6, 5), torch.rand(6, 5) / 10
    assert plotting.show_lesion_attention(mask, weights) is None
    fig = _only_figure()
    left, right, colorbar = fig.axes
    np.testing.assert_array_equal(left.images[0].get_array(), mask.numpy())
    np.testing.assert_array_equal(right.images[0].get_array(), weights.numpy())
    assert left.images[0].get_clim() == (0, 1) and colorbar.get_label() == "<colorbar>"


def test_plot_scaling_puts_time_over_memory_per_variant():
    ns = {"a": [64, 256], "b": [64, 256, 1024]}
    ms = {"a": [1.0, 4.0], "b": [0.5, 1.0, 2.0]}
    mib = {"a": [2.0, 8.0], "b": [1.0, 1.0, 1.0]}
    assert plotting.plot_scaling(ns, ms, mib, title="time") is None
    top, bottom = _only_figure().axes
    assert top.get_title() == "time" and bottom.get_title() == "memory for training"
    assert [tuple(line.get_ydata()) for line in top.lines] == [(1.0, 4.0), (0.5, 1.0, 2.0)]
    assert [tuple(line.get_ydata()) for line in bottom.lines] == [(2.0, 8.0), (1.0, 1.0, 1.0)]
    assert top.get_xscale() == top.get_yscale() == "log"
