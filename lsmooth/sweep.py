"""Sweeps of paired runs: a resumable results file, sharding, summary statistics and plots.

A sweep is a grid of *arms* (a smoothing ``eps`` and a training-label ``noise`` rate) times
*seeds*. Every arm of a seed trains on the same split, so arms are compared seed by seed (a
paired design): the difference "smoothing − baseline" is taken within each seed, then averaged.

The results file is JSON Lines, one finished run per line, appended with a single ``write`` and
``fsync`` as soon as the run ends. A sweep killed at any moment therefore loses at most the run in
progress; rerunning it skips every (eps, noise, seed) already in the file. ``shard(grid, i, n)``
splits a grid across machines, and :func:`load_results` merges the files they wrote.

This module holds no training code: ``recipes/compare.py`` passes the recipe's ``train`` function
to :func:`run_sweep`; notebooks and tests import the summary and plot helpers from here.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lsmooth.metrics import brier, ece, fit_temperature, nll
from lsmooth.runs import atomic_write_csv, atomic_write_json, atomic_write_text

__all__ = [
    "METRICS",
    "RESULTS_GLOB",
    "Job",
    "append_result",
    "arm_label",
    "calibration_markdown",
    "describe_difference",
    "format_table",
    "grid",
    "load_curves",
    "load_preds",
    "load_results",
    "markdown_tables",
    "paired_differences",
    "parse_shard",
    "plot_curves",
    "plot_error_bars",
    "plot_reliability_arms",
    "plot_vs_noise",
    "read_results",
    "run_sweep",
    "shard",
    "summarize",
    "temperature_scaling",
    "write_summary",
]

METRICS = ("error_rate", "nll", "ece", "brier")
"""Metrics summarised per arm and differenced per seed (ECE with 15 bins, as in Müller et al.)."""
TS_METRICS = ("temperature", "ece_ts", "nll_ts", "brier_ts", "error_rate_ts")
RESULTS_GLOB = "results*.jsonl"
PREDS_FILE = "valid_preds.pt"  # {"probs": (N, K) float, "targets": (N,) long}, in each run folder
TS_SPLIT_SEED = 0  # the fixed halving of the validation set used by temperature_scaling


# ---------------------------------------------------------------- the grid
@dataclass(frozen=True, order=True)
class Job:
    """One run of the grid; ``key`` identifies it in a results file."""

    noise: float
    eps: float
    seed: int

    @property
    def key(self) -> str:
        return run_key(self.eps, self.noise, self.seed)

    @property
    def arm(self) -> str:
        return arm_label(self.eps, self.noise)


def run_key(eps: float, noise: float, seed: int) -> str:
    return f"eps={float(eps):g}|noise={float(noise):g}|seed={int(seed)}"


def arm_label(eps: float, noise: float) -> str:
    """``'eps=0.1'``, or ``'eps=0.1 noise=0.4'`` when the labels are noisy."""
    return f"eps={float(eps):g}" + (f" noise={float(noise):g}" if noise else "")


def grid(eps: Sequence[float], noise: Sequence[float], seeds: Sequence[int]) -> list[Job]:
    """Every (noise, eps, seed) once, in a fixed order (duplicates in the inputs dropped).

    Seeds vary fastest within an arm, so a partial sweep already has complete arms.
    """
    uniq = lambda xs: list(dict.fromkeys(xs))  # noqa: E731
    return [Job(float(n), float(e), int(s)) for n in uniq(noise) for e in uniq(eps) for s in uniq(seeds)]


def parse_shard(text: str) -> tuple[int, int]:
    """``'2/3'`` -> ``(2, 3)``: the second of three shards (1-based); ValueError otherwise."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected I/N with integers, e.g. 1/2") from None
    if not (n >= 1 and 1 <= i <= n):
        raise ValueError(f"--shard {text!r}: need 1 <= I <= N")
    return i, n


def shard(jobs: Sequence[Job], i: int, n: int) -> list[Job]:
    """Shard ``i`` of ``n`` (1-based): every n-th job starting at the (i-1)-th.

    Round-robin over the fixed grid order, so the n shards are disjoint, cover the grid, and each
    gets a mix of arms and seeds. Deterministic: every machine computes the same partition.
    """
    if not (n >= 1 and 1 <= i <= n):
        raise ValueError(f"shard {i}/{n}: need 1 <= i <= n")
    return list(jobs[i - 1 :: n])


# ---------------------------------------------------------------- the results file
def append_result(path: str | os.PathLike, row: dict) -> None:
    """Append ``row`` as one JSON line: one ``write`` on an ``O_APPEND`` file, then ``fsync``.

    A previous writer killed mid-line would leave a tail without a newline; it is cut off first,
    so a whole line is never glued to a broken one.
    """
    path = Path(path)
    line = (json.dumps(row, sort_keys=True, default=str) + "\n").encode()
    if path.exists() and path.stat().st_size:
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            atomic_write_text(path, data[: data.rfind(b"\n") + 1].decode())
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_results(path: str | os.PathLike) -> list[dict]:
    """The rows of one results file; a torn last line (a killed writer) is skipped with a warning."""
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{n}: unreadable line skipped (an interrupted write?)", stacklevel=2)
    return rows


def _results_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(p.glob(RESULTS_GLOB))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"no results file or sweep folder at {str(p)!r}")
    return files


def load_results(*paths: str | os.PathLike) -> list[dict]:
    """Rows from results files and/or sweep folders (every ``results*.jsonl`` in them), merged.

    Each (eps, noise, seed) is kept once (the first seen). Rows must come from the same settings
    apart from eps, noise and seed; otherwise a ValueError names the first difference. A row's
    ``run_dir`` that does not exist is looked up relative to its results file's folder, so sweep
    folders copied from other machines still find their run folders.
    """
    rows, seen = [], {}
    for file in _results_files(paths):
        for row in read_results(file):
            rd = Path(row.get("run_dir", ""))
            rel = file.parent / row.get("run_dir_rel", "")
            if row.get("run_dir") and not rd.exists() and row.get("run_dir_rel") and rel.exists():
                row["run_dir"] = str(rel)
            if row["key"] in seen:
                continue
            seen[row["key"]] = row
            rows.append(row)
    if rows:
        ref = rows[0]["settings"]
        for row in rows[1:]:
            diff = [k for k in sorted(set(ref) | set(row["settings"])) if ref.get(k) != row["settings"].get(k)]
            if diff:
                k = diff[0]
                raise ValueError(
                    f"results mix different settings: {k}={ref.get(k)!r} ({rows[0]['key']}) vs "
                    f"{k}={row['settings'].get(k)!r} ({row['key']}); summarise them separately"
                )
    return sorted(rows, key=lambda r: (r["noise"], r["eps"], r["seed"]))


def run_sweep(
    jobs: Sequence[Job],
    train_one: Callable[[Job], dict],
    results: str | os.PathLike,
    settings: dict,
    done_from: Sequence[str | os.PathLike] = (),
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Train every job not yet in ``results`` (or in the files of ``done_from``); return new rows.

    ``train_one(job)`` trains and returns the recipe's final metrics (with ``run_dir``). Each row
    is written with :func:`append_result` the moment its run ends, together with ``settings``
    (everything shared by the grid) and temperature scaling of the run's validation predictions.
    """
    results = Path(results)
    done = {r["key"] for f in [*_results_files(done_from), *([results] if results.exists() else [])]
            for r in read_results(f)}
    todo = [j for j in jobs if j.key not in done]
    log(f"sweep: {len(jobs)} runs in this grid, {len(jobs) - len(todo)} already done, {len(todo)} to run")
    new = []
    for k, job in enumerate(todo, 1):
        log(f"--- run {k}/{len(todo)}: {job.arm} seed={job.seed}")
        final = train_one(job)
        row = {"key": job.key, "eps": job.eps, "noise": job.noise, "seed": job.seed, "settings": settings}
        row |= final
        run_dir = Path(final["run_dir"])
        try:
            row["run_dir_rel"] = os.path.relpath(run_dir, results.parent)
        except ValueError:  # another drive on Windows
            row["run_dir_rel"] = str(run_dir)
        preds = load_preds(run_dir)
        if preds is not None:
            row |= temperature_scaling(*preds)
        append_result(results, row)
        new.append(row)
    return new


# ---------------------------------------------------------------- temperature scaling
def load_preds(run_dir: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(probs, targets) saved by the recipe in ``run_dir/valid_preds.pt``; None if absent."""
    f = Path(run_dir) / PREDS_FILE
    if not f.exists():
        return None
    d = torch.load(f, map_location="cpu", weights_only=True)
    return d["probs"].double(), d["targets"].long()


def _halves(n: int, seed: int = TS_SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[: n // 2], perm[n // 2 :]


def temperature_scaling(probs: torch.Tensor, targets: torch.Tensor) -> dict:
    """Temperature scaling evaluated by 2-fold cross-fitting on the validation set.

    The validation set is split in two fixed random halves (seed ``TS_SPLIT_SEED``, the same for
    every run, so arms stay paired). T is fitted by NLL on one half and applied to the other, and
    vice versa; the metrics after scaling are computed on the whole set, each prediction scaled by
    the T that did not see it. Fitting and evaluating T on the same images would be optimistic.
    ``log(probs)`` serves as logits: softmax(log p / T) equals softmax(z / T) for the original
    logits z (softmax is invariant to the per-row constant log-sum-exp). Probabilities are clamped
    at 1e-30 before the log so an underflowed 0 stays finite.

    Returns ``temperature`` (mean of the two fitted T), ``temperature_halves`` and ``ece_ts``,
    ``nll_ts``, ``brier_ts``, ``error_rate_ts`` (argmax, hence error, is unchanged by T > 0).
    """
    logits = probs.double().clamp_min(1e-30).log()
    targets = targets.long()
    a, b = _halves(len(targets))
    scaled = torch.empty_like(logits)
    temps = []
    for fit_idx, eval_idx in ((a, b), (b, a)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # T at a search bound is reported as the value itself
            t = fit_temperature(logits[fit_idx], targets[fit_idx])
        temps.append(t)
        scaled[eval_idx] = torch.softmax(logits[eval_idx] / t, dim=1)
    return {
        "temperature": float(np.mean(temps)),
        "temperature_halves": [float(t) for t in temps],
        "ece_ts": ece(scaled, targets),
        "nll_ts": nll(scaled, targets),
        "brier_ts": brier(scaled, targets),
        "error_rate_ts": float((scaled.argmax(1) != targets).double().mean()),
    }


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


def describe_difference(d: dict, metric: str = "error_rate") -> str:
    """One sentence reading a paired difference: its size, interval, and whether 0 is inside."""
    pct = metric.startswith("error")
    name = metric.replace("_ts", " after temperature scaling").replace("_", " ")
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


# ---------------------------------------------------------------- per-epoch curves, predictions
def load_curves(rows: Sequence[dict]) -> dict[str, np.ndarray]:
    """Per arm: validation error per epoch, shape (n_seeds, epochs), from each run's metrics.csv."""
    import csv

    curves: dict[str, list[list[float]]] = {}
    for r in rows:
        f = Path(r["run_dir"]) / "metrics.csv"
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


def pooled_preds(rows: Sequence[dict], eps: float, noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Validation predictions of every seed of one arm, concatenated; None if any run lacks them."""
    got = [load_preds(r["run_dir"]) for r in rows if r["eps"] == eps and r["noise"] == noise]
    if not got or any(g is None for g in got):
        return None
    return torch.cat([g[0] for g in got]), torch.cat([g[1] for g in got])


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
    """One reliability diagram per arm at ``noise`` (seeds pooled) on ``fig`` (a new pyplot figure
    when None); returns the figure, or None when some run has no saved predictions."""
    from lsmooth.metrics import plot_reliability

    eps = sorted({r["eps"] for r in rows if r["noise"] == noise}) if eps is None else list(eps)
    preds = {e: pooled_preds(rows, e, noise) for e in eps}
    if not eps or any(p is None for p in preds.values()):
        return None
    if fig is None:
        import matplotlib.pyplot as plt

        fig = plt.figure()
    fig.set_size_inches(4 * len(eps), 4.2)
    axs = fig.subplots(1, len(eps), squeeze=False)
    for ax, e in zip(axs[0], eps, strict=True):
        plot_reliability(*preds[e], n_bins=n_bins, ax=ax, label=arm_label(e, noise))
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
    ax.set_ylabel(metric.replace("_", " ") + (" (%)" if scale == 100 else ""))
    ax.legend(fontsize="small")
    return ax


def write_summary(rows: Sequence[dict], out: str | os.PathLike, baseline_eps: float = 0.0) -> dict:
    """Write summary.csv, summary.json, summary.md and the PNG plots into ``out``; return the summary.

    Plots: ``error_rate.png`` (bars with error bars), ``curves.png`` (per-epoch validation error),
    ``reliability.png`` (baseline vs smoothing at the lowest noise rate, seeds pooled; skipped with
    a note when runs have no saved predictions) and, for several noise rates, ``noise.png``.
    """
    # Figures without pyplot: no GUI backend needed, and a notebook's inline backend is left alone.
    from matplotlib.figure import Figure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    diffs = paired_differences(rows, baseline_eps)
    cols = [k for k in summary[0] if k != "seeds"]
    atomic_write_csv(out / "summary.csv", cols, [[s[k] for k in cols] for s in summary])
    atomic_write_json(out / "summary.json", {
        "n_runs": len(rows), "settings": rows[0]["settings"], "arms": summary, "paired_differences": diffs,
        "temperature_scaling": "2-fold cross-fitting on the validation set: T fitted on one half, "
                               "evaluated on the other, and vice versa",
    })
    atomic_write_text(out / "summary.md", markdown_tables(summary, diffs))
    plots, notes = [], []

    def save(fig, name):
        fig.savefig(out / name, dpi=110, bbox_inches="tight")
        plots.append(str(out / name))

    fig = Figure(figsize=(1.6 * len(summary) + 2, 4))
    plot_error_bars(summary, fig.subplots())
    save(fig, "error_rate.png")
    curves = load_curves(rows)
    if curves:
        fig = Figure(figsize=(6, 4))
        plot_curves(curves, fig.subplots())
        save(fig, "curves.png")
    noises = sorted({r["noise"] for r in rows})
    fig = plot_reliability_arms(rows, noise=noises[0], fig=Figure())
    if fig is None:
        notes.append(f"reliability.png not drawn: some runs have no {PREDS_FILE}")
    else:
        save(fig, "reliability.png")
    if len(noises) > 1:
        fig = Figure(figsize=(11, 4))
        axs = fig.subplots(1, 2)
        plot_vs_noise(summary, "error_rate", axs[0])
        plot_vs_noise(summary, "ece", axs[1])
        save(fig, "noise.png")
    return {"arms": summary, "paired_differences": diffs, "plots": plots, "notes": notes}
