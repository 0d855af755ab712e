"""lsmooth/report.py: statistics over seeds and paired differences (against hand values and scipy),
tables, plots and the summary files, on run folders faked by tests/fake_runs.py."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_runs import fake_row
from scipy import stats
from torch.testing import assert_close

from lsmooth.metrics import ece, temperature_scaling
from lsmooth.report import (
    SUMMARY_CSV,
    SUMMARY_JSON,
    SUMMARY_MD,
    describe_arms,
    describe_confidence,
    describe_difference,
    describe_temperature,
    describe_vs_noise,
    format_table,
    load_curves,
    load_summary,
    markdown_tables,
    paired_differences,
    plot_reliability_arms,
    pooled_preds,
    resolved_differences,
    snippet,
    summarize,
    t_interval,
    write_summary,
)
from lsmooth.runs import PREDS_FILE

T_975_DF2 = 4.302652729911275  # Student t quantile 0.975 with 2 degrees of freedom (tables: 4.303)


def with_ts(rows):
    return [r | temperature_scaling(*map(torch.load(Path(r["run_dir"]) / PREDS_FILE).get, ("probs", "targets")))
            for r in rows]


# ---------------------------------------------------------------- statistics against hand values
def test_summary_mean_std_paired_difference_and_t_interval(tmp_path):
    base, ls = [0.10, 0.20, 0.30], [0.08, 0.15, 0.31]
    rows = [fake_row(tmp_path, 0.0, s, e) for s, e in enumerate(base)]
    rows += [fake_row(tmp_path, 0.1, s, e) for s, e in enumerate(ls)]
    summary = {s["arm"]: s for s in summarize(rows)}
    assert summary["eps=0"]["n_seeds"] == 3
    assert summary["eps=0"]["error_rate_mean"] == pytest.approx(0.2)
    assert summary["eps=0"]["error_rate_std"] == pytest.approx(0.1)  # sqrt((0.01 + 0 + 0.01) / 2)
    assert summary["eps=0.1"]["error_rate_mean"] == pytest.approx(0.18)
    # per-seed differences -0.02, -0.05, +0.01: mean -0.02, sd 0.03, CI -0.02 ± 4.303 * 0.03 / sqrt(3)
    (d,) = paired_differences(rows)
    assert d["n_pairs"] == 3 and d["baseline"] == "eps=0"
    assert_close(d["error_rate_diffs"], [-0.02, -0.05, 0.01], rtol=0, atol=1e-12)
    assert d["error_rate_diff"] == pytest.approx(-0.02)
    half = T_975_DF2 * 0.03 / math.sqrt(3)
    assert d["error_rate_ci_lo"] == pytest.approx(-0.02 - half, abs=1e-9)
    assert d["error_rate_ci_hi"] == pytest.approx(-0.02 + half, abs=1e-9)
    assert d["nll_diff"] == 0 and d["nll_ci_lo"] == 0  # identical metric in both arms
    table = markdown_tables(list(summary.values()), [d])
    assert "| eps=0 | 3 | 20.00 ± 10.00% |" in table and "-2.00 pts [-9.45, +5.45]" in table
    assert "contains 0" in describe_difference(d)


@pytest.mark.parametrize("seed", range(3))
def test_t_interval_matches_scipy_paired_t_test(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0.1, 0.02, 5), rng.normal(0.12, 0.02, 5)
    lo, hi = t_interval(a - b)
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (lo, hi) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_one_seed_gives_no_interval_and_says_so(tmp_path):
    rows = [fake_row(tmp_path, 0.0, 0, 0.1), fake_row(tmp_path, 0.1, 0, 0.05)]
    (d,) = paired_differences(rows)
    assert d["error_rate_diff"] == pytest.approx(-0.05) and math.isnan(d["error_rate_ci_lo"])
    assert "no confidence interval" in d["note"] and "no conclusion" in describe_difference(d)
    assert math.isnan(summarize(rows)[0]["error_rate_std"])
    assert "(no CI, n=1)" in format_table(summarize(rows), [d])
    assert all(math.isnan(v) for v in t_interval([1.0]))


def test_pairs_only_on_common_seeds_and_per_noise_baseline(tmp_path):
    rows = [fake_row(tmp_path, 0.0, 0, 0.1), fake_row(tmp_path, 0.1, 0, 0.2), fake_row(tmp_path, 0.1, 1, 0.9),
            fake_row(tmp_path, 0.0, 0, 0.3, noise=0.4), fake_row(tmp_path, -0.1, 0, 0.25, noise=0.4)]
    diffs = {d["arm"]: d for d in paired_differences(rows)}
    assert diffs["eps=0.1"]["seeds"] == [0] and diffs["eps=0.1"]["error_rate_diff"] == pytest.approx(0.1)
    assert diffs["eps=-0.1 noise=0.4"]["baseline"] == "eps=0 noise=0.4"
    assert diffs["eps=-0.1 noise=0.4"]["error_rate_diff"] == pytest.approx(-0.05)


def test_an_interval_that_excludes_zero_is_read_as_a_direction(tmp_path):
    rows = [fake_row(tmp_path, e, s, 0.1 + e + 0.001 * s * s) for e in (0.0, 0.1) for s in range(3)]
    (d,) = paired_differences(rows)
    assert "excludes 0: higher with smoothing" in describe_difference(d)


# ---------------------------------------------------------------- files and plots
def test_write_summary_writes_tables_and_non_empty_plots(tmp_path):
    rows = with_ts([fake_row(tmp_path, e, s, 0.1 + 0.01 * s, noise=n)
                    for n in (0.0, 0.4) for e in (0.0, 0.1) for s in (0, 1)])
    out = tmp_path / "summary"
    res = write_summary(rows, out, provenance={"command": "python recipes/compare.py"})
    assert res["notes"] == [] and res == json.loads(json.dumps(load_summary(out)))
    for name in ("error_rate.png", "curves.png", "reliability.png", "noise.png"):
        f = out / name
        assert f.stat().st_size > 5000 and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / SUMMARY_JSON).read_text())
    assert data["n_runs"] == 8 and len(data["arms"]) == 4 and len(data["paired_differences"]) == 2
    assert (out / SUMMARY_CSV).read_text().startswith("arm,eps,noise,n_seeds,")
    md = (out / SUMMARY_MD).read_text()
    assert md.startswith("- command: python recipes/compare.py\n") and "Paired difference" in md


def test_write_summary_without_predictions_says_so(tmp_path):
    rows = [fake_row(tmp_path, e, 0, 0.1) for e in (0.0, 0.1)]
    (Path(rows[0]["run_dir"]) / PREDS_FILE).unlink()
    res = write_summary(rows, tmp_path / "s")
    assert not (tmp_path / "s" / "reliability.png").exists() and PREDS_FILE in res["notes"][0]


def test_reliability_arms_draw_a_counts_panel_under_each_diagram(tmp_path):
    from matplotlib.figure import Figure

    rows = [fake_row(tmp_path, e, s, 0.1) for e in (0.0, 0.1) for s in (0, 1)]
    fig = plot_reliability_arms(rows, fig=Figure())
    diagrams, counts = fig.axes[:2], fig.axes[2:]
    assert [ax.get_title() for ax in diagrams] == ["eps=0 (2 seeds pooled)", "eps=0.1 (2 seeds pooled)"]
    assert [ax.get_ylabel() for ax in counts] == ["samples", "samples"]
    heights = sum(p.get_height() for p in counts[0].patches)
    assert heights == 400  # both seeds' 200 validation predictions, counted per bin


def test_curves_per_arm_and_seed(tmp_path):
    rows = [fake_row(tmp_path, e, s, 0.1 * (s + 1)) for e in (0.0, 0.1) for s in (0, 1, 2)]
    curves = load_curves(rows)
    assert set(curves) == {"eps=0", "eps=0.1"} and curves["eps=0"].shape == (3, 2)
    assert_close(curves["eps=0"][:, 1], np.array([0.1, 0.2, 0.3]))


def test_snippet_renders_the_headline_of_a_summary(tmp_path):
    rows = with_ts([fake_row(tmp_path, e, s, 0.1 + 0.01 * s - e / 10) for e in (0.0, 0.1) for s in (0, 1, 2)])
    env = {"cpu": "Some CPU", "cpu_count": 2, "torch_threads": 1, "device": "cpu", "torch": "2.x", "fastai": "2.y",
           "load_avg": 1.25}
    data = write_summary(rows, tmp_path / "s", provenance={
        "command": "python recipes/compare.py", "sweeps": [{"commands": [{"environment": env}, {"environment": env}]}]})
    text = snippet(data)
    assert text.splitlines()[:2] == [
        "command: python recipes/compare.py",
        "machine: Some CPU (2 CPUs, 1 torch thread, load 1.2), no GPU; torch 2.x, fastai 2.y"]
    assert "eps=0.1  3      10.00 ± 1.00%" in text and "eps=0.1 − eps=0  3      -1.00 pts [-1.00, -1.00]" in text
    md = snippet(data, markdown=True)
    assert "| eps=0 | 3 | 11.00 ± 1.00% |" in md and md.startswith("- command: ")


# ---------------------------------------------------------------- sentences the notebooks show
def test_sentences_read_the_numbers_of_the_summary(tmp_path):
    rows = with_ts([fake_row(tmp_path, e, s, 0.1 + 0.01 * s + e / 10, noise=n)
                    for n in (0.0, 0.4) for e in (0.0, 0.1) for s in range(3)])
    summary, diffs = summarize(rows), paired_differences(rows)
    assert describe_arms(summary[:2]) == "eps=0 11.00 ± 1.00% (3 seeds), eps=0.1 12.00 ± 1.00% (3 seeds)"
    assert describe_vs_noise(summary) == ("error rate (mean over seeds) at 0% noise 11.00%–12.00% (lowest: eps=0); "
                                          "at 40% noise 11.00%–12.00% (lowest: eps=0).")
    assert resolved_differences(diffs) == ("2 of 2 error rate differences have a 95% interval that excludes 0: "
                                           "eps=0.1 (+1.00 pts [+1.00, +1.00]); "
                                           "eps=0.1 noise=0.4 (+1.00 pts [+1.00, +1.00]).")
    assert resolved_differences(diffs, "nll").startswith("No NLL difference has a 95% interval that excludes 0")
    s = summary[0]  # fake rows state NLL 0.1, so scaling "raises" it
    assert describe_temperature(summary[:1]) == (
        f"eps=0: T = {s['temperature_mean']:.2f} ± {s['temperature_std']:.2f} (softens the predictions); ECE "
        f"0.050 → {s['ece_ts_mean']:.3f}, and it raises the held-out NLL (0.100 → {s['nll_ts_mean']:.3f}).")
    probs, y = pooled_preds(rows, 0.0)
    conf, acc = float(probs.max(1).values.mean()), float((probs.argmax(1) == y).double().mean())
    assert conf > acc and describe_confidence(rows).startswith(
        f"eps=0: pooled ECE {ece(probs, y):.3f}, mean confidence {100 * conf:.1f}% against {100 * acc:.1f}% "
        f"accuracy (over-confident by {100 * (conf - acc):.1f} points); eps=0.1: ")
