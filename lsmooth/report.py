"""Summaries of a sweep folder: read its run folders, summarise per arm, compare arms seed by seed.

Data flows one way: the recipe's runs write their folders (:mod:`lsmooth.callbacks`), this module
only reads them. Each finished run is one row: its arm (from its config), seed, final metrics
(temperature scaling included) and run folder. Arms are compared seed by seed against the
baseline (plain cross-entropy, ``eps=0``) at the same noise rate: every arm of a seed trains on the
same split, so the difference is taken within each seed, then averaged, with a Student-t interval.

:func:`write_summary` writes ``summary.json`` (the one source of every reported number),
``summary.md``, ``summary.csv`` and the figures (:mod:`lsmooth.plots`); :func:`snippet` renders the
copies in the README and the recipe headers, which tests keep equal to it.
"""

from __future__ import annotations

import collections
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lsmooth.runs import (
    INCIDENTAL,
    METRICS_FILE,
    PREDS_FILE,
    RUNS_DIR,
    SWEEP_FILE,
    arm_label,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    is_baseline,
    machine_line,
    read_csv_rows,
    read_run,
)

__all__ = [
    "FIGURES", "METRICS", "SUMMARY_CSV", "SUMMARY_JSON", "SUMMARY_MD", "calibration_markdown",
    "describe_arms", "describe_confidence", "describe_difference", "describe_temperature", "describe_vs_noise",
    "format_table", "headline", "load_curves", "load_preds", "load_rows", "load_summary", "markdown_tables",
    "paired_differences", "pooled_preds", "provenance_lines", "resolved_differences", "snippet", "summarize",
    "summary_data", "summary_markdown", "t_interval", "write_summary",
]  # fmt: skip

METRICS = ("error_rate", "nll", "ece", "brier")
"""Metrics summarised per arm and differenced per seed (ECE with 15 bins, as in Müller et al.)."""
TS_METRICS = ("temperature", "ece_ts", "nll_ts", "brier_ts", "error_rate_ts")
# The files write_summary puts in a sweep folder (results/<sweep>/ keeps committed copies of the first two).
SUMMARY_JSON = "summary.json"  # every number below, with the settings, commands and machines behind it
SUMMARY_MD = "summary.md"  # the tables of summary.json in markdown
SUMMARY_CSV = "summary.csv"  # one row per arm
FIGURES = {"error": "error_rate.png", "paired": "paired.png", "curves": "curves.png", "reliability": "reliability.png",
           "noise": "noise.png"}  # what write_summary draws into a sweep folder
TS_NOTE = "2-fold cross-fitting on the validation set: T fitted on one half, evaluated on the other, and vice versa"
# What makes an arm (the rest of a run's settings must be the same across a sweep), and the arms' order.
ARM_KEYS = ("smoothing", "eps", "alpha", "beta", "noise")
_KINDS = ("uniform", "others", "two-stage", "online", "penalty")
_PER_RUN = {*ARM_KEYS, "seed", "loss", *INCIDENTAL}


def _order(row: dict) -> tuple:
    kind = row["kind"]
    return row["noise"], not row["baseline"], _KINDS.index(kind) if kind in _KINDS else len(_KINDS), row["eps"]


# ---------------------------------------------------------------- reading the records
def load_rows(folder: str | os.PathLike) -> list[dict]:
    """One row per finished run under ``folder`` (a sweep folder's ``runs/``, or a folder of run folders):
    arm, seed, settings, final metrics, run folder. ValueError when the runs' other settings differ."""
    folder = Path(folder)
    root = folder / RUNS_DIR if (folder / RUNS_DIR).is_dir() else folder
    rows = []
    for run in filter(None, map(read_run, sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else [])):
        c = run["config"]
        rows.append({"arm": arm_label(c), "variant": arm_label(c, noise=False), "kind": c.get("smoothing", "uniform"),
                     "eps": float(c.get("eps", 0.0)), "noise": float(c.get("noise", 0.0)), "seed": c.get("seed"),
                     "baseline": is_baseline(c), "run_dir": run["run_dir"],
                     "machine": machine_line(run["env"] | {"load_avg": None}) if run["env"] else "unrecorded",
                     "settings": {k: v for k, v in c.items() if k not in _PER_RUN}, **run["final"]})
    for row in rows[1:]:
        k = next((k for k in sorted(rows[0]["settings"].keys() | row["settings"].keys())
                  if rows[0]["settings"].get(k) != row["settings"].get(k)), None)
        if k is not None:
            raise ValueError(f"runs with different settings in {folder}: {k}={rows[0]['settings'].get(k)!r} "
                             f"({rows[0]['run_dir']}) vs {row['settings'].get(k)!r} ({row['run_dir']})")
    return sorted(rows, key=lambda r: (_order(r), r["seed"]))


def load_preds(run_dir: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(probs, targets) of a run's validation set (valid_preds.pt); None if absent."""
    f = Path(run_dir) / PREDS_FILE
    if not f.exists():
        return None
    d = torch.load(f, map_location="cpu", weights_only=True)
    return d["probs"].double(), d["targets"].long()


def pooled_preds(rows: Sequence[dict], arm: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Validation predictions of every seed of ``arm``, concatenated; None if any run lacks them."""
    got = [load_preds(r["run_dir"]) for r in rows if r["arm"] == arm]
    if not got or any(g is None for g in got):
        return None
    return torch.cat([g[0] for g in got]), torch.cat([g[1] for g in got])


def load_curves(rows: Sequence[dict], metric: str = "error_rate") -> dict[str, np.ndarray]:
    """Per arm: ``metric`` per epoch, shape (n_seeds, epochs), from each run's metrics.csv."""
    curves: dict[str, list[list[float]]] = {}
    for r in rows:
        f = Path(r["run_dir"]) / METRICS_FILE
        if f.exists():
            curves.setdefault(r["arm"], []).append([float(row[metric]) for row in read_csv_rows(f)])
    return {arm: np.array([c[: min(map(len, runs))] for c in runs]) for arm, runs in curves.items()}


def load_summary(folder: str | os.PathLike) -> dict:
    """The summary.json of a sweep folder (or of a committed copy under ``results/``)."""
    return json.loads((Path(folder) / SUMMARY_JSON).read_text())


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


def _arms(rows: Sequence[dict]) -> list[dict]:
    """The first row of each arm, in the arms' order."""
    first: dict[str, dict] = {}
    for r in sorted(rows, key=_order):
        first.setdefault(r["arm"], r)
    return list(first.values())


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Per arm: its seeds and mean ± std of each metric (and after temperature scaling; NaN where missing)."""
    out = []
    for first in _arms(rows):
        mine = [r for r in rows if r["arm"] == first["arm"]]
        s = {k: first[k] for k in ("arm", "variant", "kind", "eps", "noise", "baseline")}
        s |= {"n_seeds": len(mine), "seeds": sorted(r["seed"] for r in mine)}
        for m in (*METRICS, *TS_METRICS, "fit_time_s"):
            vals = [r[m] for r in mine if r.get(m) is not None]
            s[f"{m}_mean"], s[f"{m}_std"] = _mean_std(vals) if len(vals) == len(mine) else (math.nan, math.nan)
        out.append(s)
    return out


def paired_differences(rows: Sequence[dict], level: float = 0.95, against: str | None = None) -> list[dict]:
    """Per arm: mean (arm − reference) over the seeds both ran, at the same noise rate, with the Student-t
    interval of the per-seed differences; with one common seed no interval (NaN, ``note`` says so).

    The reference is plain cross-entropy (the baseline), or the variant named ``against`` (an arm's label
    without its noise rate, e.g. ``'eps=0.1'``: how online smoothing does against uniform smoothing).
    """
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    if against is not None and against not in variants:
        raise ValueError(f"against={against!r}: no such arm; the arms are {', '.join(variants)}")
    is_ref = (lambda r: r["baseline"]) if against is None else (lambda r: r["variant"] == against)
    out = []
    base = {(r["noise"], r["seed"]): r for r in rows if is_ref(r)}
    for first in _arms(rows):
        if is_ref(first):
            continue
        pairs = [(r, base[r["noise"], r["seed"]]) for r in rows
                 if r["arm"] == first["arm"] and (r["noise"], r["seed"]) in base]
        if not pairs:
            continue
        d = {k: first[k] for k in ("arm", "variant", "kind", "eps", "noise")}
        d |= {"baseline": pairs[0][1]["arm"], "n_pairs": len(pairs), "seeds": [a["seed"] for a, _ in pairs]}
        for m in (*METRICS, "ece_ts", "nll_ts"):
            if all(a.get(m) is not None and b.get(m) is not None for a, b in pairs):
                diffs = [a[m] - b[m] for a, b in pairs]
                d[f"{m}_diffs"], d[f"{m}_diff"] = diffs, float(np.mean(diffs))
                d[f"{m}_ci_lo"], d[f"{m}_ci_hi"] = t_interval(diffs, level)
        d["note"] = "one seed: no confidence interval" if len(pairs) < 2 else f"{level:.0%} t-interval, n={len(pairs)}"
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


def _arm_table(summary: Sequence[dict], calibration: bool = False) -> tuple[list[str], list[list[str]]]:
    if calibration:
        cols = [("ece", "ECE"), ("ece_ts", "ECE after TS"), ("nll", "NLL"), ("nll_ts", "NLL after TS"),
                ("brier", "Brier"), ("brier_ts", "Brier after TS")]
    else:
        cols = [("nll", "NLL"), ("ece", "ECE"), ("brier", "Brier"), ("ece_ts", "ECE after TS")]
    head = ["arm", "seeds", *([] if calibration else ["error rate"]), *(name for _, name in cols), "T"]
    body = [[s["arm"], str(s["n_seeds"]), *([] if calibration else [_pm(s["error_rate_mean"], s["error_rate_std"],
                                                                         pct=True)])]
            + [_pm(s[f"{m}_mean"], s[f"{m}_std"]) for m, _ in cols]
            + [_pm(s["temperature_mean"], s["temperature_std"], digits=2)] for s in summary]
    return head, body


def _diff_table(diffs: Sequence[dict], metrics=("error_rate", "nll", "ece", "brier")) -> tuple[list, list]:
    names = {"error_rate": "Δ error rate", "nll": "Δ NLL", "ece": "Δ ECE", "brier": "Δ Brier",
             "ece_ts": "Δ ECE after TS"}
    head = ["arm − baseline", "pairs", *(names[m] for m in metrics)]
    body = [[f"{d['arm']} − {d['baseline']}", str(d["n_pairs"]), *(_ci(d, m, pct=m == "error_rate") for m in metrics)]
            for d in diffs]
    return head, body


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


def calibration_markdown(summary: Sequence[dict]) -> str:
    """Calibration before and after temperature scaling per arm (mean ± std over seeds), markdown."""
    return _markdown(*_arm_table(summary, calibration=True)) + "\n"


def format_table(summary: Sequence[dict], diffs: Sequence[dict]) -> str:
    """The two tables of :func:`markdown_tables` as plain text for the terminal."""
    text = _plain(*_arm_table(summary))
    if diffs:
        text += "\n\npaired difference per seed, mean [95% t-interval]\n" + _plain(*_diff_table(diffs))
    return text


# ---------------------------------------------------------------- sentences (notebook prose from the data)
def _name(metric: str) -> str:
    """``'ece_ts'`` -> ``'ECE after temperature scaling'``."""
    base = metric.removesuffix("_ts")
    name = {"ece": "ECE", "nll": "NLL", "brier": "Brier"}.get(base, base.replace("_", " "))
    return name + (" after temperature scaling" if metric.endswith("_ts") else "")


def _value(mean: float, metric: str) -> str:
    return f"{100 * mean:.2f}%" if metric.startswith("error") else f"{mean:.3f}"


def describe_difference(d: dict, metric: str = "error_rate") -> str:
    """One sentence reading a paired difference: its size, interval, and whether 0 is inside."""
    head = f"{d['arm']} − {d['baseline']}: {_name(metric)} {_ci(d, metric, metric.startswith('error'))} over " \
           f"{d['n_pairs']} paired seed(s)"
    lo, hi = d.get(f"{metric}_ci_lo", math.nan), d.get(f"{metric}_ci_hi", math.nan)
    if math.isnan(lo):
        return head + "; one seed gives no interval, so no conclusion."
    if lo <= 0 <= hi:
        return head + "; the 95% interval contains 0: these seeds cannot tell the two arms apart."
    way = "lower" if hi < 0 else "higher"
    return head + f"; the 95% interval excludes 0: {way} than {d['baseline']} on these seeds."


def describe_arms(summary: Sequence[dict], metric: str = "error_rate") -> str:
    """``'eps=0 1.02 ± 0.32% (3 seeds), eps=0.1 0.93 ± 0.43% (3 seeds)'``: mean ± std per arm."""
    pct, digits = metric.startswith("error"), 2 if metric == "temperature" else 3
    return ", ".join(f"{s['arm']} {_pm(s[f'{metric}_mean'], s[f'{metric}_std'], pct=pct, digits=digits)} "
                     f"({s['n_seeds']} seed{'s' * (s['n_seeds'] > 1)})" for s in summary)


def describe_confidence(rows: Sequence[dict], noise: float = 0.0) -> str:
    """Per arm at ``noise``, seeds pooled: ECE, mean confidence against accuracy, and which way it errs."""
    from lsmooth.metrics import ece

    parts = []
    for first in _arms([r for r in rows if r["noise"] == noise]):
        got = pooled_preds(rows, first["arm"])
        if got is None:
            return f"some runs have no {PREDS_FILE}: no pooled calibration"
        probs, y = got
        conf, acc = float(probs.max(1).values.mean()), float((probs.argmax(1) == y).double().mean())
        way = "over-confident" if conf > acc else "under-confident"
        parts.append(f"{first['arm']}: pooled ECE {ece(probs, y):.3f}, mean confidence {100 * conf:.1f}% against "
                     f"{100 * acc:.1f}% accuracy ({way} by {100 * abs(conf - acc):.1f} points)")
    return "; ".join(parts) + "."


def describe_temperature(summary: Sequence[dict]) -> str:
    """Per arm: the fitted T, what it does, and ECE and NLL before → after scaling (held-out halves)."""
    parts = []
    for s in summary:
        t = s["temperature_mean"]
        if math.isnan(t):
            continue
        nll_way = "lowers" if s["nll_ts_mean"] < s["nll_mean"] else "raises"
        parts.append(f"{s['arm']}: T = {_pm(t, s['temperature_std'], digits=2)} ({'sharpens' if t < 1 else 'softens'} "
                     f"the predictions); ECE {s['ece_mean']:.3f} → {s['ece_ts_mean']:.3f}, and it {nll_way} the "
                     f"held-out NLL ({s['nll_mean']:.3f} → {s['nll_ts_mean']:.3f})")
    return "; ".join(parts) + "." if parts else "No temperature scaling: the runs saved no predictions."


def describe_vs_noise(summary: Sequence[dict], metric: str = "error_rate") -> str:
    """Per noise rate: the range of ``metric`` over the arms and the arm with the lowest mean."""
    parts = []
    for n in sorted({s["noise"] for s in summary}):
        mine = sorted((s[f"{metric}_mean"], s["variant"]) for s in summary if s["noise"] == n)
        parts.append(f"at {100 * n:g}% noise {_value(mine[0][0], metric)}–{_value(mine[-1][0], metric)} "
                     f"(lowest: {mine[0][1]})")
    return f"{_name(metric)} (mean over seeds) " + "; ".join(parts) + "."


def resolved_differences(diffs: Sequence[dict], metric: str = "error_rate") -> str:
    """Which paired differences have a 95% interval that excludes 0 (the ones these seeds resolve)."""
    clear = [d for d in diffs if f"{metric}_ci_lo" in d and not math.isnan(d[f"{metric}_ci_lo"])
             and (d[f"{metric}_ci_lo"] > 0 or d[f"{metric}_ci_hi"] < 0)]
    name = _name(metric)
    if not clear:
        return f"No {name} difference has a 95% interval that excludes 0: these seeds resolve none of them."
    verb = "has" if len(clear) == 1 else "have"
    return (f"{len(clear)} of {len(diffs)} {name} difference{'s' * (len(diffs) > 1)} {verb} a 95% interval that "
            "excludes 0: " + "; ".join(f"{d['arm']} ({_ci(d, metric, metric.startswith('error'))})" for d in clear)
            + ".")


# ---------------------------------------------------------------- summary files
def provenance_lines(data: dict) -> list[str]:
    """Where the numbers of a summary.json come from: command, machine(s), settings."""
    p = data.get("provenance", {})
    lines = [f"command: {p['command']}"] if p.get("command") else []
    lines += [f"machine: {m} ({n} run{'s' * (n != 1)})" for m, n in data["machines"].items()]  # where runs trained
    s = data["settings"]
    time_s = f" ({data['fit_time_s']:.0f} s of training in all)" if data.get("fit_time_s") else ""
    lines.append(f"{data['n_runs']} runs{time_s}: {s.get('dataset')} {s.get('arch')}, {s.get('epochs')} epochs, "
                 f"size {s.get('size')}, metrics on the validation set")
    lines.append("ECE with 15 bins; TS = temperature scaling, 2-fold cross-fitted")
    return lines


def summary_data(rows: Sequence[dict], provenance: dict | None = None) -> dict:
    """What summary.json holds for ``rows``: settings, provenance, per-arm statistics, paired differences."""
    return {"n_runs": len(rows), "fit_time_s": sum(r.get("fit_time_s") or 0 for r in rows),
            "machines": dict(collections.Counter(r["machine"] for r in rows)),
            "settings": rows[0]["settings"], "provenance": provenance or {}, "arms": summarize(rows),
            "paired_differences": paired_differences(rows), "temperature_scaling": TS_NOTE}


def _write_figures(rows: Sequence[dict], summary: Sequence[dict], folder: Path) -> tuple[list[str], list[str]]:
    """The figures of a sweep folder (:data:`FIGURES`), drawn by :mod:`lsmooth.plots`; the files and notes."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, and a notebook's inline backend is left alone

    from lsmooth import plots

    written, notes = [], []

    def save(fig, key):
        fig.savefig(folder / FIGURES[key], dpi=110, bbox_inches="tight")
        written.append(FIGURES[key])

    noise = min(r["noise"] for r in rows)
    arms = [s["arm"] for s in summary if s["noise"] == noise]
    ax = Figure(figsize=(1.6 * len(summary) + 2, 4)).subplots()
    save(plots.plot_error_bars(summary, rows, ax=ax).figure, "error")
    save(plots.plot_paired(rows, noise=noise, ax=Figure(figsize=(1.6 * len(arms) + 2, 4)).subplots()).figure, "paired")
    curves = load_curves(rows)
    if curves:
        save(plots.plot_curves(curves, ax=Figure(figsize=(6, 4)).subplots()).figure, "curves")
    preds = {arm: pooled_preds(rows, arm) for arm in arms}
    if any(p is None for p in preds.values()):
        notes.append(f"{FIGURES['reliability']} not drawn: some runs saved no predictions")
    else:
        save(plots.plot_reliability_arms(preds, fig=Figure()), "reliability")
    if len({r["noise"] for r in rows}) > 1:
        axs = Figure(figsize=(11, 4)).subplots(1, 2)
        plots.plot_vs_noise(summary, "error_rate", axs[0])
        save(plots.plot_vs_noise(summary, "ece", axs[1]).figure, "noise")
    return written, notes


def write_summary(folder: str | os.PathLike, command: str | None = None) -> dict:
    """Summarise the sweep folder ``folder`` into it: summary.json, summary.md, summary.csv and the figures
    (:data:`FIGURES`); summary.json's dict. ValueError when it holds no finished run."""
    folder = Path(folder)
    rows = load_rows(folder)
    if not rows:
        raise ValueError(f"no finished run in {folder}")
    sweep = folder / SWEEP_FILE
    commands = json.loads(sweep.read_text())["commands"] if sweep.exists() else []
    data = summary_data(rows, {"command": command, "commands": commands})
    cols = [k for k in data["arms"][0] if k != "seeds"]
    atomic_write_csv(folder / SUMMARY_CSV, cols, [[s[k] for k in cols] for s in data["arms"]])
    data["plots"], data["notes"] = _write_figures(rows, data["arms"], folder)
    atomic_write_json(folder / SUMMARY_JSON, data)
    atomic_write_text(folder / SUMMARY_MD, summary_markdown(data))
    return data


def summary_markdown(data: dict) -> str:
    """summary.md: the provenance lines and both tables of a summary.json."""
    head = "".join(f"- {line}\n" for line in provenance_lines(data))
    return head + "\n" + markdown_tables(data["arms"], data["paired_differences"])


def headline(data: dict) -> list[str]:
    """Two lines for a recipe's header: what ran, on what, with the baseline's error (mean ± std over seeds);
    then each arm's paired difference from it with its 95% interval, at the lowest noise rate."""
    s, arms = data["settings"], data["arms"]
    noise = min(a["noise"] for a in arms)
    base = next(a for a in arms if a["baseline"] and a["noise"] == noise)
    envs = [c["environment"] for c in data.get("provenance", {}).get("commands", [])]
    where = (envs[0].get("device_name") or f"{envs[0].get('cpu_count')}-core CPU") if envs else "machine unrecorded"
    diffs = "; ".join(f"{d['arm']} {_ci(d, 'error_rate', pct=True)}" for d in data["paired_differences"]
                      if d["noise"] == noise)
    return [f"{s.get('dataset')}, {s.get('arch')}, {s.get('epochs')} epochs, {base['n_seeds']} paired seeds, {where}: "
            f"error {base['arm']} {_pm(base['error_rate_mean'], base['error_rate_std'], pct=True)};",
            f"difference per seed, mean [95% interval]: {diffs}"]


def snippet(data: dict, markdown: bool = False) -> str:
    """The headline of a summary.json for a recipe header (plain) or the README (markdown): per arm error and
    ECE (mean ± std over seeds), each difference from the baseline with its 95% interval, and the provenance."""
    arms = (["arm", "seeds", "error rate", "ECE", "ECE after TS"],
            [[s["arm"], str(s["n_seeds"]), _pm(s["error_rate_mean"], s["error_rate_std"], pct=True),
              _pm(s["ece_mean"], s["ece_std"]), _pm(s["ece_ts_mean"], s["ece_ts_std"])] for s in data["arms"]])
    diffs = _diff_table(data["paired_differences"], ("error_rate", "ece"))
    table = _markdown if markdown else _plain
    lines = provenance_lines(data)
    text = ("\n".join(f"- {line}" for line in lines) if markdown else "\n".join(lines)) + f"\n\n{table(*arms)}\n"
    if diffs[1]:
        gap = "\n\n" if markdown else "\n"  # a markdown table needs a blank line above it
        text += f"\npaired difference per seed, mean [95% t-interval]:{gap}{table(*diffs)}\n"
    return text
