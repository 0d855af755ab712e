"""lsmooth.report: arms from configs, statistics against hand-computed values and scipy, tables, sentences,
and a whole summary of a sweep folder (the session's tiny sweep)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lsmooth import report as R
from lsmooth.runs import arm_label, atomic_write_json, is_baseline


def row(eps, seed, error, noise=0.0, kind="uniform", **metrics):
    config = {"smoothing": kind, "eps": eps, "noise": noise, "alpha": 0.5, "beta": 0.1}
    return {"arm": arm_label(config), "variant": arm_label(config, noise=False), "kind": kind, "eps": eps,
            "noise": noise, "seed": seed, "baseline": is_baseline(config), "run_dir": f"/nowhere/{seed}",
            "settings": {"dataset": "x"}, "error_rate": error, "nll": 0.1, "ece": 0.05, "brier": 0.2, **metrics}


@pytest.mark.parametrize("config, label", [
    ({"smoothing": "uniform", "eps": 0.0}, "eps=0"), ({"smoothing": "two-stage", "eps": 0.0}, "eps=0"),
    ({"smoothing": "uniform", "eps": 0.1}, "eps=0.1"), ({"smoothing": "others", "eps": 0.1}, "others eps=0.1"),
    ({"smoothing": "two-stage", "eps": 0.1, "noise": 0.4}, "two-stage eps=0.1 noise=0.4"),
    ({"smoothing": "online", "eps": 0.0, "alpha": 0.5}, "online α=0.5"),
    ({"smoothing": "penalty", "eps": 0.0, "beta": 0.2}, "penalty β=0.2"), ({"smoothing": "online"}, "online"),
])
def test_arm_labels(config, label):
    assert arm_label(config) == label


def test_summary_mean_std_paired_difference_and_interval_by_hand():
    rows = [row(0.0, 0, 0.10), row(0.0, 1, 0.20), row(0.1, 0, 0.05), row(0.1, 1, 0.25)]
    base, ls = R.summarize(rows)
    assert (base["arm"], ls["arm"]) == ("eps=0", "eps=0.1") and base["baseline"] and not ls["baseline"]
    assert base["error_rate_mean"] == pytest.approx(0.15) and base["error_rate_std"] == pytest.approx(0.0707107, 1e-5)
    (d,) = R.paired_differences(rows)
    assert d["error_rate_diffs"] == pytest.approx([-0.05, 0.05]) and d["error_rate_diff"] == pytest.approx(0.0)
    half = 12.706205 * 0.0707107 / math.sqrt(2)  # t(0.975, 1 dof) * sd / sqrt(n)
    assert (d["error_rate_ci_lo"], d["error_rate_ci_hi"]) == pytest.approx((-half, half), rel=1e-5)
    assert d["baseline"] == "eps=0" and d["n_pairs"] == 2


@pytest.mark.parametrize("seed", range(4))
def test_t_interval_matches_scipys_paired_t_test(seed):
    from scipy import stats

    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=7), rng.normal(size=7)
    lo, hi = R.t_interval(a - b)
    res = stats.ttest_rel(a, b)
    assert (lo, hi) == pytest.approx(tuple(res.confidence_interval(0.95)))


def test_pairs_are_by_seed_at_the_same_noise_and_one_seed_gives_no_interval():
    rows = [row(0.0, 0, 0.1), row(0.0, 1, 0.1), row(0.1, 1, 0.3), row(0.0, 0, 0.5, noise=0.4),
            row(0.1, 0, 0.4, noise=0.4), row(0.0, 0, 0.2, kind="online")]
    diffs = {d["arm"]: d for d in R.paired_differences(rows)}
    assert diffs["eps=0.1"]["seeds"] == [1] and diffs["eps=0.1"]["error_rate_diff"] == pytest.approx(0.2)
    assert diffs["eps=0.1 noise=0.4"]["baseline"] == "eps=0 noise=0.4"
    assert diffs["eps=0.1 noise=0.4"]["error_rate_diff"] == pytest.approx(-0.1)
    assert diffs["online α=0.5"]["error_rate_diff"] == pytest.approx(0.1)
    assert math.isnan(diffs["eps=0.1"]["error_rate_ci_lo"]) and diffs["eps=0.1"]["note"].startswith("one seed")
    assert "one seed gives no interval" in R.describe_difference(diffs["eps=0.1"])
    assert [s["arm"] for s in R.summarize(rows)] == ["eps=0", "eps=0.1", "online α=0.5", "eps=0 noise=0.4",
                                                      "eps=0.1 noise=0.4"]  # noise, baseline first, kinds in order
    against = {d["arm"]: d for d in R.paired_differences(rows, against="eps=0.1")}  # eps=0.1 is the reference
    assert against.keys() == {"eps=0", "eps=0 noise=0.4"}  # online: no seed in common with eps=0.1
    assert against["eps=0"]["baseline"] == "eps=0.1" and against["eps=0"]["seeds"] == [1]
    assert against["eps=0"]["error_rate_diff"] == pytest.approx(0.1 - 0.3)
    assert against["eps=0 noise=0.4"]["baseline"] == "eps=0.1 noise=0.4"
    assert against["eps=0 noise=0.4"]["error_rate_diff"] == pytest.approx(0.5 - 0.4)
    with pytest.raises(ValueError, match="against='eps=0.3': no such arm; the arms are eps=0, eps=0.1, online α=0.5"):
        R.paired_differences(rows, against="eps=0.3")


def test_an_interval_that_excludes_zero_is_read_as_a_direction():
    rows = [row(0.0, s, 0.10 + 0.001 * s) for s in range(4)] + [row(0.1, s, 0.05 + 0.001 * s) for s in range(4)]
    (d,) = R.paired_differences(rows)
    assert "excludes 0: lower than eps=0 on these seeds" in R.describe_difference(d)
    assert R.resolved_differences([d]).startswith("1 of 1 error rate difference has a 95% interval that excludes 0")


def test_runs_with_other_settings_are_refused(tmp_path):
    for name, dataset in (("a", "x"), ("b", "y")):
        (tmp_path / "runs" / name).mkdir(parents=True)
        atomic_write_json(tmp_path / "runs" / name / "config.json", {"eps": 0.0, "seed": 0, "dataset": dataset})
        atomic_write_json(tmp_path / "runs" / name / "final.json", {"error_rate": 0.1})
    with pytest.raises(ValueError, match="runs with different settings in .*: dataset='x'"):
        R.load_rows(tmp_path)
    with pytest.raises(ValueError, match="no finished run in"):
        R.write_summary(tmp_path / "empty")


# ---------------------------------------------------------------- a whole sweep
def test_write_summary_of_a_sweep_folder(tiny_sweep):
    data = R.load_summary(tiny_sweep)
    rows = R.load_rows(tiny_sweep)
    assert data["n_runs"] == len(rows) == 20 and data["settings"]["dataset"] == "tiny"
    assert [s["arm"] for s in data["arms"]][:5] == ["eps=0", "eps=0.1", "two-stage eps=0.1", "online α=0.5",
                                                    "penalty β=0.1"]
    assert {d["baseline"] for d in data["paired_differences"]} == {"eps=0", "eps=0 noise=0.4"}
    assert all(s["n_seeds"] == 2 and not math.isnan(s["ece_ts_mean"]) for s in data["arms"])
    assert data["plots"] == ["error_rate.png", "paired.png", "curves.png", "reliability.png", "noise.png"]
    for name in data["plots"]:
        assert (tiny_sweep / name).stat().st_size > 5000
    assert (tiny_sweep / R.SUMMARY_MD).read_text() == R.summary_markdown(data)
    assert json.loads((tiny_sweep / R.SUMMARY_JSON).read_text()) == data
    # where the runs trained, from their env.json (a sweep process's own threads may differ: the jobs' count)
    env = json.loads((Path(rows[0]["run_dir"]) / "env.json").read_text())
    threads = f"{env['torch_threads']} torch thread{'s' * (env['torch_threads'] != 1)}), "
    assert list(data["machines"].values()) == [20] and threads in next(iter(data["machines"]))
    assert f"- machine: {next(iter(data['machines']))} (20 runs)\n" in R.summary_markdown(data)


def test_snippet_and_sentences_read_the_summary(tiny_sweep):
    data, rows = R.load_summary(tiny_sweep), R.load_rows(tiny_sweep)
    text = R.snippet(data, markdown=True)
    assert text.startswith("- command: python recipes/compare.py --dataset tiny")
    assert "| eps=0 | 2 |" in text and "| eps=0.1 − eps=0 | 2 |" in text
    assert R.describe_arms(data["arms"]).startswith("eps=0 ")
    assert "under-confident" in R.describe_confidence(rows) or "over-confident" in R.describe_confidence(rows)
    assert R.describe_temperature(data["arms"]).startswith("eps=0: T = ")
    assert R.describe_vs_noise(data["arms"]).startswith("error rate (mean over seeds) at 0% noise")
    curves = R.load_curves(rows)
    assert curves["eps=0"].shape == (2, 1)
