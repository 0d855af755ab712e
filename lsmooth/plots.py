"""Every figure of lsmooth: each takes numbers (summaries, rows, predictions) and an optional ``ax``.

The notebooks call these one per cell; ``lsmooth.report.write_summary`` saves them into a sweep folder.

- :func:`plot_error_bars`: a metric per arm, mean ± std over seeds, each seed's value drawn.
- :func:`plot_paired`: each seed's value per arm, lines joining the same seed across arms.
- :func:`plot_curves`: a metric per epoch, mean over seeds, shaded ± 1 std.
- :func:`plot_reliability` / :func:`plot_reliability_arms`: reliability diagrams with their bin counts.
- :func:`plot_vs_noise`: a metric against the label-noise rate, one line per arm.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from lsmooth.metrics import ReliabilityBins, reliability_bins

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["plot_curves", "plot_error_bars", "plot_paired", "plot_reliability", "plot_reliability_arms",
           "plot_vs_noise"]


def _new_ax(ax, figsize=(6, 4)):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=figsize)
    return ax


def _label(metric: str) -> tuple[str, float]:
    """Axis label and scale: error rates in percent."""
    names = {"error_rate": "error rate (%)", "nll": "NLL", "ece": "ECE", "brier": "Brier", "ece_ts": "ECE after TS"}
    return "validation " + names.get(metric, metric), 100.0 if metric.startswith("error") else 1.0


def plot_error_bars(summary: Sequence[dict], rows: Sequence[dict] = (), metric: str = "error_rate", ax=None):
    """Bars of ``metric`` per arm (mean over seeds) with ± 1 std error bars, and each seed's value as a dot."""
    ax = _new_ax(ax)
    label, scale = _label(metric)
    x = np.arange(len(summary))
    mean = np.array([s[f"{metric}_mean"] for s in summary]) * scale
    std = np.nan_to_num(np.array([s[f"{metric}_std"] for s in summary]) * scale)
    ax.bar(x, mean, yerr=std, capsize=6, color=["tab:gray" if s["baseline"] else "tab:blue" for s in summary],
           alpha=0.7, edgecolor="black")
    for i, s in enumerate(summary):
        vals = [r[metric] * scale for r in rows if r["arm"] == s["arm"]]
        ax.scatter(np.full(len(vals), i) + np.linspace(-0.15, 0.15, len(vals)), vals, color="black", s=12, zorder=3)
    ax.set_xticks(x, [s["arm"].replace(" ", "\n") for s in summary])
    ax.set_ylabel(label)
    ax.set_title(f"mean ± std over {'/'.join(map(str, sorted({s['n_seeds'] for s in summary})))} seed(s), dots: seeds")
    return ax


def plot_paired(rows: Sequence[dict], metric: str = "error_rate", noise: float = 0.0, ax=None):
    """Each seed's ``metric`` per arm at ``noise``, one line per seed joining its arms (the paired design:
    parallel lines mean a shift common to every seed)."""
    ax = _new_ax(ax)
    label, scale = _label(metric)
    mine = [r for r in rows if r["noise"] == noise]
    arms = list(dict.fromkeys(r["arm"] for r in mine))
    for seed in sorted({r["seed"] for r in mine}):
        by_arm = {r["arm"]: r[metric] * scale for r in mine if r["seed"] == seed}
        x = [i for i, a in enumerate(arms) if a in by_arm]
        ax.plot(x, [by_arm[arms[i]] for i in x], marker="o", alpha=0.6, color="tab:blue", linewidth=1)
    ax.set_xticks(range(len(arms)), [a.replace(" ", "\n") for a in arms])
    ax.set_ylabel(label)
    ax.set_title("each line: one seed across arms")
    return ax


def plot_curves(curves: dict[str, np.ndarray], metric: str = "error_rate", ax=None):
    """``metric`` per epoch: mean over seeds per arm, shaded ± 1 std (curves from ``report.load_curves``), on a
    log scale that turns linear below 1 (a shaded band may reach 0)."""
    ax = _new_ax(ax)
    label, scale = _label(metric)
    for arm, c in curves.items():
        ep = np.arange(1, c.shape[1] + 1)
        m, s = c.mean(0) * scale, (c.std(0, ddof=1) if len(c) > 1 else np.zeros(c.shape[1])) * scale
        ax.plot(ep, m, marker="o", label=f"{arm} (n={len(c)})")
        ax.fill_between(ep, m - s, m + s, alpha=0.2)
    ax.set(xlabel="epoch", ylabel=label)
    ax.set_yscale("symlog", linthresh=1)
    ax.legend(fontsize="small")
    return ax


def plot_vs_noise(summary: Sequence[dict], metric: str = "error_rate", ax=None):
    """``metric`` (mean ± std over seeds) against the label-noise rate, one line per arm."""
    ax = _new_ax(ax)
    label, scale = _label(metric)
    for variant in dict.fromkeys(s["variant"] for s in summary):
        pts = sorted((s["noise"], s[f"{metric}_mean"], s[f"{metric}_std"]) for s in summary if s["variant"] == variant)
        n, m, sd = (np.array(v, dtype=float) for v in zip(*pts, strict=True))
        ax.errorbar(n * 100, m * scale, yerr=np.nan_to_num(sd) * scale, marker="o", capsize=4, label=variant)
    ax.set(xlabel="training-label noise (%)", ylabel=label)
    ax.legend(fontsize="small")
    return ax


# ---------------------------------------------------------------- reliability diagrams
def plot_reliability(probs, targets, n_bins: int = 15, ax: Axes | None = None, label: str | None = None, *,
                     counts_ax: Axes | None = None, min_count: int = 10) -> Axes:
    """A reliability diagram (Guo et al. 2017) on ``ax`` and the bin counts under it; returns ``ax``.

    Top: the accuracy of each non-empty confidence bin (:func:`lsmooth.metrics.reliability_bins`) and,
    in red, its gap to the bin's mean confidence, against the diagonal of perfect calibration (bars
    below it: over-confident; above: under-confident); the legend carries the ECE. Bottom
    (``counts_ax``; carved out of ``ax`` when None): the samples per bin, log scale when the counts span
    more than two orders of magnitude. Bins with fewer than ``min_count`` samples are hatched and
    faded: their accuracy is a handful of images, not a finding. Side by side: ``fig, axs =
    plt.subplots(2, 2, height_ratios=[3, 1])``, then ``ax=axs[0, 0], counts_ax=axs[1, 0]``.
    """
    bins = reliability_bins(probs, targets, n_bins)
    ax, counts_ax = _reliability_axes(ax, counts_ax)
    left, width = bins.edges[:-1], np.diff(bins.edges)
    full = bins.counts > 0
    sparse = full & (bins.counts < min_count)
    for mask, faded in ((full & ~sparse, False), (sparse, True)):
        if mask.any():
            style = {"alpha": 0.35, "hatch": "//"} if faded else {"alpha": 0.8}
            ax.bar(left[mask], bins.accuracy[mask], width=width[mask], align="edge", color="tab:blue",
                   edgecolor="black", label=f"accuracy, bin with < {min_count} samples" if faded
                   else f"accuracy (ECE {bins.ece:.3f})", **style)
    for mask, alpha in ((full & ~sparse, 0.3), (sparse, 0.12)):
        ax.bar(left[mask], bins.confidence[mask] - bins.accuracy[mask], bottom=bins.accuracy[mask], width=width[mask],
               align="edge", color="tab:red", alpha=alpha, edgecolor="tab:red",
               label="gap to mean confidence" if alpha == 0.3 else None)
    ax.plot([0, 1], [0, 1], linestyle="--", color="tab:gray", label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=label or "")
    ax.tick_params(labelbottom=False)
    ax.legend(loc="lower right", fontsize="x-small")  # over the bars' feet, which carry no information
    _plot_counts(counts_ax, bins, min_count)
    return ax


def _reliability_axes(ax, counts_ax):
    if ax is None:
        import matplotlib.pyplot as plt

        ax, counts_ax = plt.figure(figsize=(4, 5.4)).subplots(2, 1, height_ratios=[3, 1], sharex=True)
    elif counts_ax is None:
        from mpl_toolkits.axes_grid1 import make_axes_locatable

        counts_ax = make_axes_locatable(ax).append_axes("bottom", size="33%", pad=0.1, sharex=ax)
    return ax, counts_ax


def _plot_counts(ax, bins: ReliabilityBins, min_count: int) -> None:
    left, width = bins.edges[:-1], np.diff(bins.edges)
    full = bins.counts > 0
    colors = np.where(bins.counts[full] < min_count, "0.8", "0.5")
    ax.bar_label(ax.bar(left[full], bins.counts[full], width=width[full], align="edge", color=colors,
                        edgecolor="black"), fontsize="x-small")
    if bins.counts[full].max() / bins.counts[full].min() > 100:
        ax.set_yscale("log")
    ax.axhline(min_count, color="tab:red", linewidth=0.8, linestyle=":")
    ax.margins(y=0.3)  # room for the count above the tallest bar
    ax.set(xlim=(0, 1), xlabel="confidence (max probability)", ylabel="samples")


def plot_reliability_arms(preds: dict, n_bins: int = 15, fig=None):
    """One reliability diagram per arm, side by side on ``fig`` (a new pyplot figure when None); ``preds``
    maps each arm's label to its (probs, targets), seeds pooled (``report.pooled_preds``)."""
    if fig is None:
        import matplotlib.pyplot as plt

        fig = plt.figure()
    fig.set_size_inches(4 * len(preds), 5.6)
    axs = fig.subplots(2, len(preds), squeeze=False, height_ratios=[3, 1], sharex="col")
    for col, (arm, (probs, targets)) in enumerate(preds.items()):
        plot_reliability(probs, targets, n_bins=n_bins, ax=axs[0, col], counts_ax=axs[1, col],
                         label=f"{arm}, seeds pooled")
    fig.tight_layout()
    return fig
