"""Summaries of a sweep: statistics over seeds, paired differences, tables, plots, summary files.

Input is the list of result rows that :mod:`lsmooth.sweep` writes (one finished run each: its
``eps``, ``noise``, ``seed``, final metrics and ``run_dir``). Arms are compared seed by seed (every
arm of a seed trains on the same split): the difference "smoothing − baseline" is taken within each
seed, then averaged, with a Student-t interval over the seeds.

:func:`write_summary` writes everything a reader of a sweep folder needs (``summary.json`` is the
one source of every reported number; ``summary.md`` and the snippets of :func:`snippet` are rendered
from it); notebooks call the same table and plot helpers.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lsmooth.runs import METRICS_FILE, PREDS_FILE, atomic_write_csv, atomic_write_json, atomic_write_text

__all__ = [
    "METRICS",
    "SUMMARY_CSV",
    "SUMMARY_JSON",
    "SUMMARY_MD",
    "arm_label",
    "calibration_markdown",
    "describe_arms",
    "describe_confidence",
    "describe_difference",
    "describe_temperature",
    "describe_vs_noise",
    "format_table",
    "load_curves",
    "load_preds",
    "load_summary",
    "markdown_tables",
    "paired_differences",
    "plot_curves",
    "plot_error_bars",
    "plot_reliability_arms",
    "plot_vs_noise",
    "pooled_preds",
    "provenance_lines",
    "resolved_differences",
    "snippet",
    "summary_markdown",
    "summarize",
    "t_interval",
    "write_summary",
]

METRICS = ("error_rate", "nll", "ece", "brier")
"""Metrics summarised per arm and differenced per seed (ECE with 15 bins, as in Müller et al.)."""
TS_METRICS = ("temperature", "ece_ts", "nll_ts", "brier_ts", "error_rate_ts")
# The files write_summary puts in a sweep folder (and results/<sweep>/ keeps committed copies of).
SUMMARY_JSON = "summary.json"  # every number below, with the settings, command and machine behind it
SUMMARY_MD = "summary.md"  # the tables of summary.json in markdown
SUMMARY_CSV = "summary.csv"  # one row per arm
PLOTS = {"error": "error_rate.png", "curves": "curves.png", "reliability": "reliability.png", "noise": "noise.png"}
TS_NOTE = "2-fold cross-fitting on the validation set: T fitted on one half, evaluated on the other, and vice versa"


def arm_label(eps: float, noise: float) -> str:
    """``'eps=0.1'``, or ``'eps=0.1 noise=0.4'`` when the labels are noisy."""
    return f"eps={float(eps):g}" + (f" noise={float(noise):g}" if noise else "")


# ---------------------------------------------------------------- run folders
def load_preds(run_dir: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(probs, targets) saved by a run in ``run_dir/valid_preds.pt``; None if absent."""
    f = Path(run_dir) / PREDS_FILE
    if not f.exists():
        return None
    d = torch.load(f, map_location="cpu", weights_only=True)
    return d["probs"].double(), d["targets"].long()


def pooled_preds(rows: Sequence[dict], eps: float, noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Validation predictions of every seed of one arm, concatenated; None if any run lacks them."""
    got = [load_preds(r["run_dir"]) for r in rows if r["eps"] == eps and r["noise"] == noise]
    if not got or any(g is None for g in got):
        return None
    return torch.cat([g[0] for g in got]), torch.cat([g[1] for g in got])


def load_curves(rows: Sequence[dict]) -> dict[str, np.ndarray]:
    """Per arm: validation error per epoch, shape (n_seeds, epochs), from each run's metrics.csv."""
    curves: dict[str, list[list[float]]] = {}
    for r in rows:
        f = Path(r["run_dir"]) / METRICS_FILE
        if not f.exists():
            continue
        with f.open() as fh:
            errs = [float(row["error_rate"]) for row in csv.DictReader(fh)]
        curves.setdefault(arm_label(r["eps"], r["noise"]), []).append(errs)
    out = {}
    for arm, runs in curves.items():
        n = min(map(len, runs))
        out[arm] = np.array([c[:n] for c in runs])
    return out


# ---------------------------------------------------------------- statistics
def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1); std is NaN for a single value."""
    x = np.asarray(values, dtype=np.float64)
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else math.nan


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Two-sided Student-t confidence interval for the mean; (NaN, NaN) when n < 2."""
    from scipy.stats import t as student_t

    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return math.nan, math.nan
    half = student_t.ppf(0.5 + level / 2, df=len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def _arms(rows: Sequence[dict]) -> list[tuple[float, float]]:
    return sorted({(r["noise"], r["eps"]) for r in rows})


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Per arm (noise, eps): n seeds and mean ± std of each metric (and after temperature scaling).

    Metrics missing from some rows (temperature scaling without saved predictions) give NaN.
    """
    out = []
    for noise, eps in _arms(rows):
        mine = [r for r in rows if r["eps"] == eps and r["noise"] == noise]
        s = {"arm": arm_label(eps, noise), "eps": eps, "noise": noise, "n_seeds": len(mine),
             "seeds": sorted(r["seed"] for r in mine)}
        for m in (*METRICS, *TS_METRICS, "fit_time_s"):
            vals = [r[m] for r in mine if m in r]
            s[f"{m}_mean"], s[f"{m}_std"] = _mean_std(vals) if len(vals) == len(mine) else (math.nan, math.nan)
        out.append(s)
    return out


def paired_differences(rows: Sequence[dict], baseline_eps: float = 0.0, level: float = 0.95) -> list[dict]:
    """Per non-baseline arm: mean (smoothing − baseline) over the seeds both arms ran, with a CI.

    The baseline is the ``baseline_eps`` arm at the same noise rate. The interval is the Student-t
    interval of the per-seed differences (n − 1 degrees of freedom); with one common seed there is
    no interval (NaN) and ``note`` says so. Arms without a baseline are left out.
    """
    out = []
    index = {(r["noise"], r["eps"], r["seed"]): r for r in rows}
    for noise, eps in _arms(rows):
        if eps == baseline_eps:
            continue
        seeds = sorted(s for (n, e, s) in index if n == noise and e == eps and (noise, baseline_eps, s) in index)
        if not seeds:
            continue
        d = {"arm": arm_label(eps, noise), "eps": eps, "noise": noise,
             "baseline": arm_label(baseline_eps, noise), "n_pairs": len(seeds), "seeds": seeds}
        for m in (*METRICS, "ece_ts", "nll_ts"):
            pairs = [(index[noise, eps, s], index[noise, baseline_eps, s]) for s in seeds]
            if not all(m in a and m in b for a, b in pairs):
                continue
            diffs = [a[m] - b[m] for a, b in pairs]
            d[f"{m}_diffs"] = diffs
            d[f"{m}_diff"] = float(np.mean(diffs))
            d[f"{m}_ci_lo"], d[f"{m}_ci_hi"] = t_interval(diffs, level)
        d["note"] = "one seed: no confidence interval" if len(seeds) < 2 else f"{level:.0%} t-interval, n={len(seeds)}"
        out.append(d)
    return out


# ---------------------------------------------------------------- tables
def _pm(mean: float, std: float, pct: bool = False, digits: int = 4) -> str:
    if math.isnan(mean):
        return "n/a"
    if pct:
        return f"{100 * mean:.2f} ± {100 * std:.2f}%" if not math.isnan(std) else f"{100 * mean:.2f}%"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if not math.isnan(std) else f"{mean:.{digits}f}"


def _ci(d: dict, m: str, pct: bool = False) -> str:
    if f"{m}_diff" not in d:
        return "n/a"
    f = (lambda v: f"{100 * v:+.2f}") if pct else (lambda v: f"{v:+.4f}")
    unit = " pts" if pct else ""
    if math.isnan(d[f"{m}_ci_lo"]):
        return f"{f(d[f'{m}_diff'])}{unit} (no CI, n=1)"
    return f"{f(d[f'{m}_diff'])}{unit} [{f(d[f'{m}_ci_lo'])}, {f(d[f'{m}_ci_hi'])}]"


def _arm_table(summary: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["arm", "seeds", "error rate", "NLL", "ECE", "Brier", "T", "ECE after TS", "NLL after TS"]
    body = [[s["arm"], str(s["n_seeds"]), _pm(s["error_rate_mean"], s["error_rate_std"], pct=True),
             _pm(s["nll_mean"], s["nll_std"]), _pm(s["ece_mean"], s["ece_std"]), _pm(s["brier_mean"], s["brier_std"]),
             _pm(s["temperature_mean"], s["temperature_std"], digits=2), _pm(s["ece_ts_mean"], s["ece_ts_std"]),
             _pm(s["nll_ts_mean"], s["nll_ts_std"])] for s in summary]
    return head, body


def _diff_table(diffs: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["arm − baseline", "pairs", "Δ error rate", "Δ NLL", "Δ ECE", "Δ Brier"]
    body = [[f"{d['arm']} − {d['baseline']}", str(d["n_pairs"]), _ci(d, "error_rate", pct=True), _ci(d, "nll"),
             _ci(d, "ece"), _ci(d, "brier")] for d in diffs]
    return head, body


def _calibration_table(summary: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["arm", "seeds", "ECE", "ECE after TS", "NLL", "NLL after TS", "Brier", "Brier after TS", "T"]
    body = [[s["arm"], str(s["n_seeds"])] + [_pm(s[f"{m}_mean"], s[f"{m}_std"])
             for m in ("ece", "ece_ts", "nll", "nll_ts", "brier", "brier_ts")]
            + [_pm(s["temperature_mean"], s["temperature_std"], digits=2)] for s in summary]
    return head, body


def calibration_markdown(summary: Sequence[dict]) -> str:
    """Calibration before and after temperature scaling per arm (mean ± std over seeds), markdown."""
    return _markdown(*_calibration_table(summary)) + "\n"


def _name(metric: str) -> str:
    """``'ece_ts'`` -> ``'ECE after temperature scaling'``."""
    base = metric.removesuffix("_ts")
    name = {"ece": "ECE", "nll": "NLL", "brier": "Brier"}.get(base, base.replace("_", " "))
    return name + (" after temperature scaling" if metric.endswith("_ts") else "")


def describe_difference(d: dict, metric: str = "error_rate") -> str:
    """One sentence reading a paired difference: its size, interval, and whether 0 is inside."""
    pct = metric.startswith("error")
    name = _name(metric)
    head = f"{d['arm']} − {d['baseline']}: {name} {_ci(d, metric, pct=pct)} over {d['n_pairs']} paired seed(s)"
    lo, hi = d.get(f"{metric}_ci_lo", math.nan), d.get(f"{metric}_ci_hi", math.nan)
    if math.isnan(lo):
        return head + "; one seed gives no interval, so no conclusion."
    if lo <= 0 <= hi:
        return head + "; the 95% interval contains 0: these seeds cannot tell the two arms apart."
    return head + f"; the 95% interval excludes 0: {'lower' if hi < 0 else 'higher'} with smoothing on these seeds."


def _markdown(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


def _plain(head: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, body)])


def markdown_tables(summary: Sequence[dict], diffs: Sequence[dict]) -> str:
    """The per-arm table (mean ± std over seeds) and the paired-difference table, in markdown."""
    text = _markdown(*_arm_table(summary))
    if diffs:
        text += "\n\nPaired difference per seed, mean [95% t-interval]:\n\n" + _markdown(*_diff_table(diffs))
    return text + "\n"


def format_table(summary: Sequence[dict], diffs: Sequence[dict]) -> str:
    """The same two tables as plain text for the terminal."""
    text = _plain(*_arm_table(summary))
    if diffs:
        text += "\n\npaired difference per seed, mean [95% t-interval]\n" + _plain(*_diff_table(diffs))
    return text


# ---------------------------------------------------------------- sentences (notebook prose from the data)
def _value(mean: float, metric: str) -> str:
    return f"{100 * mean:.2f}%" if metric.startswith("error") else f"{mean:.3f}"


def describe_arms(summary: Sequence[dict], metric: str = "error_rate") -> str:
    """``'eps=0 1.02 ± 0.32% (3 seeds), eps=0.1 0.93 ± 0.43% (3 seeds)'``: mean ± std per arm."""
    pct, digits = metric.startswith("error"), 2 if metric == "temperature" else 3
    return ", ".join(f"{s['arm']} {_pm(s[f'{metric}_mean'], s[f'{metric}_std'], pct=pct, digits=digits)} "
                     f"({s['n_seeds']} seed{'s' * (s['n_seeds'] > 1)})" for s in summary)


def describe_confidence(rows: Sequence[dict], noise: float = 0.0) -> str:
    """Per arm at ``noise``, seeds pooled: ECE, mean confidence against accuracy, and which way it errs."""
    from lsmooth.metrics import ece

    parts = []
    for e in sorted({r["eps"] for r in rows if r["noise"] == noise}):
        got = pooled_preds(rows, e, noise)
        if got is None:
            return f"some runs have no {PREDS_FILE}: no pooled calibration"
        probs, y = got
        conf, acc = float(probs.max(1).values.mean()), float((probs.argmax(1) == y).double().mean())
        way = "over-confident" if conf > acc else "under-confident"
        parts.append(f"{arm_label(e, noise)}: pooled ECE {ece(probs, y):.3f}, mean confidence {100 * conf:.1f}% "
                     f"against {100 * acc:.1f}% accuracy ({way} by {100 * abs(conf - acc):.1f} points)")
    return "; ".join(parts) + "."


def describe_temperature(summary: Sequence[dict]) -> str:
    """Per arm: the fitted T, what it does, and ECE and NLL before → after scaling (held-out halves)."""
    parts = []
    for s in summary:
        t = s["temperature_mean"]
        if math.isnan(t):
            continue
        way = "sharpens" if t < 1 else "softens"
        nll_way = "lowers" if s["nll_ts_mean"] < s["nll_mean"] else "raises"
        parts.append(f"{s['arm']}: T = {_pm(t, s['temperature_std'], digits=2)} ({way} the predictions); ECE "
                     f"{s['ece_mean']:.3f} → {s['ece_ts_mean']:.3f}, and it {nll_way} the held-out NLL "
                     f"({s['nll_mean']:.3f} → {s['nll_ts_mean']:.3f})")
    return "; ".join(parts) + "." if parts else "No temperature scaling: the runs saved no predictions."


def describe_vs_noise(summary: Sequence[dict], metric: str = "error_rate") -> str:
    """Per noise rate: the range of ``metric`` over the eps arms and the arm with the lowest mean."""
    parts = []
    for n in sorted({s["noise"] for s in summary}):
        mine = sorted((s[f"{metric}_mean"], s["eps"]) for s in summary if s["noise"] == n)
        parts.append(f"at {100 * n:g}% noise {_value(mine[0][0], metric)}–{_value(mine[-1][0], metric)} "
                     f"(lowest: eps={mine[0][1]:g})")
    return f"{_name(metric)} (mean over seeds) " + "; ".join(parts) + "."


def resolved_differences(diffs: Sequence[dict], metric: str = "error_rate") -> str:
    """Which paired differences have a 95% interval that excludes 0 (the ones these seeds resolve)."""
    pct = metric.startswith("error")
    clear = [d for d in diffs if f"{metric}_ci_lo" in d and not math.isnan(d[f"{metric}_ci_lo"])
             and (d[f"{metric}_ci_lo"] > 0 or d[f"{metric}_ci_hi"] < 0)]
    name = _name(metric)
    if not clear:
        return f"No {name} difference has a 95% interval that excludes 0: these seeds resolve none of them."
    verb = "has" if len(clear) == 1 else "have"
    return (f"{len(clear)} of {len(diffs)} {name} difference{'s' * (len(diffs) > 1)} {verb} a 95% interval that "
            "excludes 0: "
            + "; ".join(f"{d['arm']} ({_ci(d, metric, pct=pct)})" for d in clear) + ".")


# ---------------------------------------------------------------- plots
def _new_ax(ax, figsize=(6, 4)):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_error_bars(summary: Sequence[dict], ax=None, metric: str = "error_rate"):
    """Bars of ``metric`` per arm (mean over seeds, in %) with ± 1 std error bars and the seeds' dots."""
    ax = _new_ax(ax)
    x = np.arange(len(summary))
    mean = np.array([s[f"{metric}_mean"] for s in summary]) * 100
    std = np.nan_to_num(np.array([s[f"{metric}_std"] for s in summary]) * 100)
    ax.bar(x, mean, yerr=std, capsize=6, color=["tab:gray" if s["eps"] == 0 else "tab:blue" for s in summary],
           alpha=0.8, edgecolor="black")
    ax.set_xticks(x, [s["arm"].replace(" ", "\n") for s in summary])
    ax.set_ylabel(f"validation {metric.replace('_', ' ')} (%)")
    n = sorted({s["n_seeds"] for s in summary})
    ax.set_title(f"mean ± std over {'/'.join(map(str, n))} seed(s)")
    return ax


def plot_curves(curves: dict[str, np.ndarray], ax=None):
    """Validation error per epoch: mean over seeds per arm, shaded ± 1 std."""
    ax = _new_ax(ax)
    for arm, c in curves.items():
        ep = np.arange(1, c.shape[1] + 1)
        m, s = c.mean(0) * 100, (c.std(0, ddof=1) if len(c) > 1 else np.zeros(c.shape[1])) * 100
        ax.plot(ep, m, marker="o", label=f"{arm} (n={len(c)})")
        ax.fill_between(ep, m - s, m + s, alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation error (%)")
    ax.set_yscale("log")
    ax.legend(fontsize="small")
    return ax


def plot_reliability_arms(rows: Sequence[dict], eps: Sequence[float] | None = None, noise: float = 0.0,
                          n_bins: int = 15, fig=None):
    """Per arm at ``noise`` (seeds pooled): a reliability diagram over its per-bin counts, one column
    per arm, on ``fig`` (a new pyplot figure when None); the figure, or None when some run has no
    saved predictions."""
    from lsmooth.metrics import plot_reliability

    eps = sorted({r["eps"] for r in rows if r["noise"] == noise}) if eps is None else list(eps)
    preds = {e: pooled_preds(rows, e, noise) for e in eps}
    if not eps or any(p is None for p in preds.values()):
        return None
    if fig is None:
        import matplotlib.pyplot as plt

        fig = plt.figure()
    fig.set_size_inches(4 * len(eps), 5.6)
    axs = fig.subplots(2, len(eps), squeeze=False, height_ratios=[3, 1], sharex="col")
    for col, e in enumerate(eps):
        n = sum(r["eps"] == e and r["noise"] == noise for r in rows)
        plot_reliability(*preds[e], n_bins=n_bins, ax=axs[0, col], counts_ax=axs[1, col],
                         label=f"{arm_label(e, noise)} ({n} seed{'s' * (n > 1)} pooled)")
    fig.tight_layout()
    return fig


def plot_vs_noise(summary: Sequence[dict], metric: str = "error_rate", ax=None):
    """``metric`` (mean ± std over seeds) against the label-noise rate, one line per eps."""
    ax = _new_ax(ax)
    scale = 100 if metric.startswith("error") else 1
    for e in sorted({s["eps"] for s in summary}):
        pts = sorted((s["noise"], s[f"{metric}_mean"], s[f"{metric}_std"]) for s in summary if s["eps"] == e)
        n, m, sd = (np.array(v, dtype=float) for v in zip(*pts, strict=True))
        ax.errorbar(n * 100, m * scale, yerr=np.nan_to_num(sd) * scale, marker="o", capsize=4, label=f"eps={e:g}")
    ax.set_xlabel("training-label noise (%)")
    ax.set_ylabel(_name(metric) + (" (%)" if scale == 100 else ""))
    ax.legend(fontsize="small")
    return ax




# ---------------------------------------------------------------- summary files
def provenance_lines(data: dict) -> list[str]:
    """Where the numbers of a summary.json come from: command, machine(s), settings."""
    p = data.get("provenance", {})
    lines = [f"command: {p['command']}"] if p.get("command") else []
    machines = [_machine(c["environment"]) for sw in p.get("sweeps", []) for c in sw.get("commands", [])]
    lines += [f"machine: {m}" for m in dict.fromkeys(machines)]
    s = data["settings"]
    time_s = f" ({data['run_time_s']:.0f} s of run time in all)" if data.get("run_time_s") else ""
    lines.append(f"{data['n_runs']} runs{time_s}: {s.get('dataset')} {s.get('arch')}, {s.get('epochs')} epochs, "
                 f"size {s.get('size')}, metrics on the validation set")
    lines.append("ECE with 15 bins; TS = temperature scaling, 2-fold cross-fitted")
    return lines


def _machine(env: dict) -> str:
    """``'AMD EPYC 7B13 (2 CPUs, 1 torch thread, load 4.5), no GPU; torch 2.14.1, fastai 2.8.12'``."""
    device = env.get("device_name") if str(env.get("device", "cpu")).startswith("cuda") else "no GPU"
    threads = env.get("torch_threads")
    load = f", load {env['load_avg']:.1f}" if env.get("load_avg") is not None else ""
    return (f"{env.get('cpu') or env.get('platform')} ({env.get('cpu_count')} CPUs, {threads} torch "
            f"thread{'s' * (threads != 1)}{load}), {device}; torch {env.get('torch')}, fastai {env.get('fastai')}")


def write_summary(rows: Sequence[dict], out: str | os.PathLike, baseline_eps: float = 0.0,
                  provenance: dict | None = None) -> dict:
    """Write summary.json, summary.md, summary.csv and the PNG plots into ``out``; return summary.json's dict.

    ``provenance`` (the command that ran the sweep and each sweep folder's sweep.json, with its
    machine) is stored in summary.json and printed at the top of summary.md. Plots:
    ``error_rate.png`` (bars with error bars), ``curves.png`` (per-epoch validation error),
    ``reliability.png`` (each arm at the lowest noise rate, seeds pooled, counts per bin under it;
    skipped with a note when runs have no saved predictions) and, for several noise rates, ``noise.png``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    diffs = paired_differences(rows, baseline_eps)
    cols = [k for k in summary[0] if k != "seeds"]
    atomic_write_csv(out / SUMMARY_CSV, cols, [[s[k] for k in cols] for s in summary])
    data = {"n_runs": len(rows), "run_time_s": sum(r.get("wall_time_s", 0) for r in rows),
            "settings": rows[0]["settings"], "provenance": provenance or {},
            "arms": summary, "paired_differences": diffs, "temperature_scaling": TS_NOTE}
    data["plots"], data["notes"] = _write_plots(rows, summary, out)
    atomic_write_json(out / SUMMARY_JSON, data)
    atomic_write_text(out / SUMMARY_MD, summary_markdown(data))
    return data


def summary_markdown(data: dict) -> str:
    """summary.md: the provenance lines and both tables of a summary.json."""
    head = "".join(f"- {line}\n" for line in provenance_lines(data))
    return head + "\n" + markdown_tables(data["arms"], data["paired_differences"])


def _write_plots(rows: Sequence[dict], summary: Sequence[dict], out: Path) -> tuple[list[str], list[str]]:
    # Figures without pyplot: no GUI backend needed, and a notebook's inline backend is left alone.
    from matplotlib.figure import Figure

    plots, notes = [], []

    def save(fig, name):
        fig.savefig(out / name, dpi=110, bbox_inches="tight")
        plots.append(name)

    fig = Figure(figsize=(1.6 * len(summary) + 2, 4))
    plot_error_bars(summary, fig.subplots())
    save(fig, PLOTS["error"])
    curves = load_curves(rows)
    if curves:
        fig = Figure(figsize=(6, 4))
        plot_curves(curves, fig.subplots())
        save(fig, PLOTS["curves"])
    noises = sorted({r["noise"] for r in rows})
    fig = plot_reliability_arms(rows, noise=noises[0], fig=Figure())
    if fig is None:
        notes.append(f"{PLOTS['reliability']} not drawn: some runs have no {PREDS_FILE}")
    else:
        save(fig, PLOTS["reliability"])
    if len(noises) > 1:
        fig = Figure(figsize=(11, 4))
        axs = fig.subplots(1, 2)
        plot_vs_noise(summary, "error_rate", axs[0])
        plot_vs_noise(summary, "ece", axs[1])
        save(fig, PLOTS["noise"])
    return plots, notes


def load_summary(folder: str | os.PathLike) -> dict:
    """The summary.json of a sweep folder (or of a committed copy under ``results/``)."""
    return json.loads((Path(folder) / SUMMARY_JSON).read_text())


def _snippet_tables(data: dict) -> tuple[tuple[list[str], list[list[str]]], tuple[list[str], list[list[str]]]]:
    arms = (["arm", "seeds", "error rate", "NLL", "ECE", "Brier", "ECE after TS"],
            [[s["arm"], str(s["n_seeds"]), _pm(s["error_rate_mean"], s["error_rate_std"], pct=True)]
             + [_pm(s[f"{m}_mean"], s[f"{m}_std"]) for m in ("nll", "ece", "brier", "ece_ts")] for s in data["arms"]])
    diffs = (["arm − baseline", "pairs", "Δ error rate", "Δ ECE"],
             [[f"{d['arm']} − {d['baseline']}", str(d["n_pairs"]), _ci(d, "error_rate", pct=True), _ci(d, "ece")]
              for d in data["paired_differences"]])
    return arms, diffs


def snippet(data: dict, markdown: bool = False) -> str:
    """The headline of a summary.json for a recipe header (plain text) or the README (markdown).

    The per-arm table (mean ± std over seeds), the paired differences (mean [95% t-interval]) and
    the provenance lines; tests compare the copies in headers and README with this text.
    """
    arms, diffs = _snippet_tables(data)
    table = _markdown if markdown else _plain
    lines = provenance_lines(data)
    prov = "\n".join(f"- {line}" for line in lines) if markdown else "\n".join(lines)
    text = f"{prov}\n\n{table(*arms)}\n"
    if diffs[1]:
        gap = "\n\n" if markdown else "\n"  # a markdown table needs a blank line above it
        text += f"\npaired difference per seed, mean [95% t-interval]:{gap}{table(*diffs)}\n"
    return text
