"""lsmooth.plots: each figure draws what its data says (bars, seeds, lines, bins) on the axes it is given."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lsmooth import plots, report  # noqa: E402
from lsmooth.metrics import ece, reliability_bins  # noqa: E402

HAND = (torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.7, 0.2], [0.15, 0.1, 0.75], [0.9, 0.05, 0.05]]),
        torch.tensor([0, 2, 2, 0]))


@pytest.fixture(scope="module")
def sweep(tiny_sweep):
    return report.load_rows(tiny_sweep), report.load_summary(tiny_sweep)["arms"]


def test_error_bars_draw_one_bar_per_arm_and_a_dot_per_seed(sweep):
    rows, summary = sweep
    ax = plots.plot_error_bars(summary, rows, ax=Figure().subplots())
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([100 * s["error_rate_mean"] for s in summary])
    from matplotlib.collections import PathCollection

    dots = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections if isinstance(c, PathCollection)])
    assert sorted(dots) == pytest.approx(sorted(100 * r["error_rate"] for r in rows))


def test_paired_plot_draws_one_line_per_seed_across_the_arms(sweep):
    rows, _ = sweep
    ax = plots.plot_paired(rows, "ece", noise=0.4, ax=Figure().subplots())
    assert len(ax.lines) == 2  # seeds 0 and 1
    seed0 = [r["ece"] for r in rows if r["noise"] == 0.4 and r["seed"] == 0]
    assert list(ax.lines[0].get_ydata()) == pytest.approx(seed0)


def test_curves_and_noise_plots(sweep):
    rows, summary = sweep
    curves = report.load_curves(rows)
    ax = plots.plot_curves(curves, ax=Figure().subplots())
    assert len(ax.lines) == 10 and ax.get_yscale() == "symlog"
    first = next(iter(curves.values()))
    assert list(ax.lines[0].get_ydata()) == pytest.approx(list(100 * first.mean(0)))  # percent, mean over seeds
    ax = plots.plot_vs_noise(summary, "ece", ax=Figure().subplots())
    assert len(ax.get_legend().get_texts()) == 5  # one line per arm, across the two noise rates


def test_reliability_diagram_bars_are_the_bins(tmp_path):
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(500, 4, generator=g), 1)
    targets = torch.randint(0, 4, (500,), generator=g)
    fig = Figure()
    ax, counts = fig.subplots(2, 1)
    plots.plot_reliability(probs, targets, n_bins=10, ax=ax, counts_ax=counts)
    bins = reliability_bins(probs, targets, 10)
    full = bins.counts > 0
    accuracy_bars = [p.get_height() for p in ax.patches[: full.sum()]]
    assert sorted(accuracy_bars) == pytest.approx(sorted(bins.accuracy[full]))
    assert sorted(p.get_height() for p in counts.patches) == sorted(bins.counts[full])
    assert f"ECE {bins.ece:.3f}" in " ".join(t.get_text() for t in ax.get_legend().get_texts())
    fig = plots.plot_reliability_arms({"a": (probs, targets), "b": (probs, targets)}, fig=Figure())
    assert len(fig.axes) == 4


def test_plot_reliability_draws_diagram_gaps_and_counts_panel(tmp_path):
    from matplotlib.figure import Figure

    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.full(4, 0.3), size=400)
    targets = np.where(rng.random(400) < 0.5, probs.argmax(1), rng.integers(0, 4, size=400))
    fig = Figure(figsize=(8, 5.6))
    axs = fig.subplots(2, 2, height_ratios=[3, 1])
    sharp = probs**2 / (probs**2).sum(1, keepdims=True)
    assert plots.plot_reliability(probs, targets, ax=axs[0, 0], counts_ax=axs[1, 0], label="baseline") is axs[0, 0]
    ax = plots.plot_reliability(sharp, targets, n_bins=10, ax=axs[0, 1], counts_ax=axs[1, 1], min_count=30)
    assert ax is axs[0, 1]
    bins = reliability_bins(probs, targets)
    full = bins.counts > 0
    # accuracy bars (full bins) + gap bars (full bins); the gap of a bin spans accuracy -> mean confidence
    assert len(axs[0, 0].patches) == 2 * full.sum()
    gaps = sorted(axs[0, 0].patches[-int(full.sum()):], key=lambda p: p.get_x())
    np.testing.assert_allclose([p.get_y() + p.get_height() for p in gaps], bins.confidence[full], rtol=0, atol=1e-12)
    np.testing.assert_allclose([p.get_y() for p in gaps], bins.accuracy[full], rtol=0, atol=1e-12)
    # the counts panel holds every sample, bin by bin
    assert [p.get_height() for p in axs[1, 0].patches] == bins.counts[full].tolist()
    legend = [t.get_text() for t in axs[0, 0].get_legend().get_texts()]
    assert f"accuracy (ECE {ece(probs, targets):.3f})" in legend and axs[0, 0].get_title() == "baseline"
    sparse_bins = reliability_bins(sharp, targets, 10)
    if ((sparse_bins.counts > 0) & (sparse_bins.counts < 30)).any():
        assert "accuracy, bin with < 30 samples" in [t.get_text() for t in axs[0, 1].get_legend().get_texts()]
    path = tmp_path / "reliability.png"
    fig.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000


def test_counts_panel_is_log_scaled_when_counts_span_orders_of_magnitude():
    from matplotlib.figure import Figure

    probs = torch.tensor([[0.99, 0.01]] * 500 + [[0.55, 0.45]] * 2, dtype=torch.float64)
    targets = torch.zeros(502, dtype=torch.long)
    fig = Figure()
    ax = plots.plot_reliability(probs, targets, ax=fig.subplots())  # counts panel carved out of ax
    counts_ax = [a for a in fig.axes if a is not ax][0]
    assert counts_ax.get_yscale() == "log" and counts_ax.get_ylabel() == "samples"
    assert plots.plot_reliability(*HAND, n_bins=5, ax=Figure().subplots()).figure.axes[1].get_yscale() \
        == "linear"


def test_plot_reliability_creates_figure_when_no_axes(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = plots.plot_reliability(*HAND, n_bins=5)
    assert len(ax.figure.axes) == 2
    path = tmp_path / "one.png"
    ax.figure.savefig(path)
    plt.close(ax.figure)
    assert path.stat().st_size > 0
