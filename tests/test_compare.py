"""recipes/compare.py and lsmooth/sweep.py: grid and shards, the results file, statistics, plots, resume.

Fast tests work on run folders faked here (metrics.csv, valid_preds.pt) and on hand-computed
values; the slow ones train real sweeps on the generated ``tiny`` dataset, one of them killed with
SIGKILL in the middle of a run and resumed.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from lsmooth.metrics import ece, fit_temperature, nll
from lsmooth.runs import atomic_write_csv
from lsmooth.sweep import (
    Job,
    append_result,
    format_table,
    grid,
    load_results,
    markdown_tables,
    paired_differences,
    parse_shard,
    read_results,
    run_key,
    shard,
    summarize,
    t_interval,
    temperature_scaling,
    write_summary,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
import compare  # noqa: E402

T_975_DF2 = 4.302652729911275  # Student t quantile 0.975 with 2 degrees of freedom (tables: 4.303)
SETTINGS = {"dataset": "fake", "arch": "resnet18", "epochs": 2, "size": 32}


# ---------------------------------------------------------------- fakes
def fake_row(tmp: Path, eps: float, seed: int, error: float, noise: float = 0.0, **metrics) -> dict:
    """A results row with a run folder: metrics.csv (2 epochs) and over-confident valid_preds.pt."""
    run = tmp / "runs" / f"eps{eps:g}-noise{noise:g}-s{seed}"
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(run / "metrics.csv", ["epoch", "train_loss", "error_rate"],
                     [[0, 1.0, error * 2], [1, 0.5, error]])
    g = torch.Generator().manual_seed(seed * 10 + int(eps * 100))
    targets = torch.randint(0, 5, (200,), generator=g)
    logits = 3 * torch.randn(200, 5, generator=g)
    logits[torch.arange(200), targets] += 2.0
    torch.save({"probs": torch.softmax(logits, 1), "targets": targets}, run / "valid_preds.pt")
    row = {"key": run_key(eps, noise, seed), "eps": eps, "noise": noise, "seed": seed, "settings": SETTINGS,
           "error_rate": error, "nll": 0.1, "ece": 0.05, "brier": 0.2, "run_dir": str(run),
           "run_dir_rel": os.path.relpath(run, tmp), "fit_time_s": 1.0}
    return row | metrics


# ---------------------------------------------------------------- grid and shards
def test_grid_is_every_combination_once_in_a_fixed_order():
    g = grid([0, 0.1, 0.1], [0, 0.4], [2, 1])
    assert len(g) == 2 * 2 * 2 and len({j.key for j in g}) == 8
    assert g[0] == Job(0.0, 0.0, 2) and g[1] == Job(0.0, 0.0, 1)  # seeds vary fastest, order kept
    assert grid([0, 0.1], [0], [0, 1]) == grid([0, 0.1], [0], [0, 1])


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 13])
def test_shards_cover_the_grid_exactly_once(n):
    g = grid([-0.1, 0, 0.1, 0.3], [0, 0.2, 0.4], [0, 1])  # 24 jobs
    parts = [shard(g, i, n) for i in range(1, n + 1)]
    keys = [j.key for p in parts for j in p]
    assert sorted(keys) == sorted(j.key for j in g)  # covered, and no job twice
    assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced
    assert parts == [shard(g, i, n) for i in range(1, n + 1)]  # deterministic


@pytest.mark.parametrize("text", ["0/2", "3/2", "1/0", "a/b", "1", "1/2/3", "-1/2"])
def test_parse_shard_rejects(text):
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)
    assert parse_shard("2/3") == (2, 3)


# ---------------------------------------------------------------- results file
def test_append_whole_lines_and_cut_a_torn_tail(tmp_path):
    f = tmp_path / "results.jsonl"
    append_result(f, {"key": "a", "x": 1})
    with f.open("a") as fh:  # a writer killed mid-line
        fh.write('{"key": "b", "x"')
    with pytest.warns(UserWarning, match="unreadable line"):
        assert [r["key"] for r in read_results(f)] == ["a"]
    append_result(f, {"key": "c", "x": 3})
    assert [r["key"] for r in read_results(f)] == ["a", "c"]
    assert f.read_text().endswith("\n") and f.read_text().count("\n") == 2


def test_load_results_merges_shards_dedups_and_refuses_mixed_settings(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    rows = [fake_row(a, 0.0, 0, 0.1), fake_row(a, 0.1, 0, 0.2), fake_row(b, 0.0, 1, 0.3)]
    append_result(a / "results-shard1of2.jsonl", rows[0])
    append_result(a / "results-shard1of2.jsonl", rows[1])
    append_result(b / "results-shard2of2.jsonl", rows[2])
    append_result(b / "results-shard2of2.jsonl", rows[0])  # the same run twice: kept once
    merged = load_results(a, b / "results-shard2of2.jsonl")
    assert [r["key"] for r in merged] == [run_key(0, 0, 0), run_key(0, 0, 1), run_key(0.1, 0, 0)]
    append_result(b / "results-shard2of2.jsonl", fake_row(b, 0.1, 1, 0.3) | {"settings": SETTINGS | {"epochs": 9}})
    with pytest.raises(ValueError, match="epochs=2 .* epochs=9"):
        load_results(a, b)
    with pytest.raises(FileNotFoundError):
        load_results(tmp_path / "missing")


def test_load_results_finds_moved_run_folders(tmp_path):
    a = tmp_path / "machine1"
    row = fake_row(a, 0.0, 0, 0.1)
    append_result(a / "results.jsonl", row | {"run_dir": "/elsewhere/gone"})
    assert load_results(a)[0]["run_dir"] == str(a / row["run_dir_rel"])


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


def test_one_seed_gives_no_interval_and_says_so(tmp_path):
    rows = [fake_row(tmp_path, 0.0, 0, 0.1), fake_row(tmp_path, 0.1, 0, 0.05)]
    (d,) = paired_differences(rows)
    assert d["error_rate_diff"] == pytest.approx(-0.05) and math.isnan(d["error_rate_ci_lo"])
    assert "no confidence interval" in d["note"]
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


def test_temperature_scaling_is_cross_fitted_on_halves():
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 10, (400,), generator=g)
    logits = 4 * torch.randn(400, 10, generator=g, dtype=torch.float64)
    logits[torch.arange(400), targets] += 3.0  # right often, but far too sure
    probs = torch.softmax(logits, 1)
    ts = temperature_scaling(probs, targets)
    assert ts["temperature"] > 1.5 and ts["ece_ts"] < ece(probs, targets) and ts["nll_ts"] < nll(probs, targets)
    assert ts["error_rate_ts"] == pytest.approx(float((probs.argmax(1) != targets).double().mean()))
    # the same numbers by hand: fit on one half, apply to the other
    perm = torch.randperm(400, generator=torch.Generator().manual_seed(0))
    a, b = perm[:200], perm[200:]
    t_a, t_b = fit_temperature(logits[a], targets[a]), fit_temperature(logits[b], targets[b])
    assert ts["temperature_halves"] == pytest.approx([t_a, t_b], rel=1e-6)  # log(softmax(z)) = z + const
    scaled = torch.empty_like(probs)
    scaled[b], scaled[a] = torch.softmax(logits[b] / t_a, 1), torch.softmax(logits[a] / t_b, 1)
    assert ts["ece_ts"] == pytest.approx(ece(scaled, targets), abs=1e-9)
    assert ts["nll_ts"] == pytest.approx(nll(scaled, targets), rel=1e-9)


# ---------------------------------------------------------------- outputs and command line
def test_write_summary_writes_tables_and_non_empty_plots(tmp_path):
    rows = [fake_row(tmp_path, e, s, 0.1 + 0.01 * s, noise=n) for n in (0.0, 0.4) for e in (0.0, 0.1) for s in (0, 1)]
    rows = [r | temperature_scaling(*map(torch.load(Path(r["run_dir"]) / "valid_preds.pt").get,
                                        ("probs", "targets"))) for r in rows]
    out = tmp_path / "summary"
    res = write_summary(rows, out)
    assert res["notes"] == []
    for name in ("error_rate.png", "curves.png", "reliability.png", "noise.png"):
        f = out / name
        assert f.stat().st_size > 5000 and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "summary.json").read_text())
    assert data["n_runs"] == 8 and len(data["arms"]) == 4 and len(data["paired_differences"]) == 2
    assert (out / "summary.csv").read_text().startswith("arm,eps,noise,n_seeds,")
    assert "Paired difference" in (out / "summary.md").read_text()


def test_write_summary_without_predictions_says_so(tmp_path):
    rows = [fake_row(tmp_path, e, 0, 0.1) for e in (0.0, 0.1)]
    (Path(rows[0]["run_dir"]) / "valid_preds.pt").unlink()
    res = write_summary(rows, tmp_path / "s")
    assert not (tmp_path / "s" / "reliability.png").exists() and "valid_preds.pt" in res["notes"][0]


def test_merge_command_combines_shards(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for s in (0, 1):
        append_result(a / "results-shard1of2.jsonl", fake_row(a, 0.0, s, 0.1 * (s + 1)))
        append_result(b / "results-shard2of2.jsonl", fake_row(b, 0.1, s, 0.1))
    assert compare.main(["--merge", str(a), str(b), "--out", str(tmp_path / "m")]) == 0
    printed = capsys.readouterr().out
    assert "eps=0.1 − eps=0" in printed and "15.00 ± 7.07%" in printed
    assert json.loads((tmp_path / "m" / "summary.json").read_text())["n_runs"] == 4


@pytest.mark.parametrize("argv, message", [
    (["--eps", "0", "1.5"], "--eps 1.5"),
    (["--noise", "1"], "--noise 1.0"),
    (["--epochs", "0"], "--epochs 0"),
    (["--shard", "3/2"], "--shard '3/2'"),
    (["--seeds", "x"], "invalid int value"),
    (["--dataset", "nope"], "invalid choice"),
    (["--arch", "resnet1"], "did you mean"),
    (["--merge", "/nonexistent/sweep"], "no results file"),
])
def test_bad_values_give_one_line_and_no_traceback(argv, message, tmp_path, capsys):
    try:
        rc = compare.main([*argv, "--out", str(tmp_path / "o")])
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not list((tmp_path / "o").glob("results*.jsonl")) if (tmp_path / "o").exists() else True


def test_a_sweep_folder_refuses_other_settings(tmp_path):
    compare.check_sweep_folder(tmp_path, {"dataset": "tiny", "epochs": 1})
    compare.check_sweep_folder(tmp_path, {"dataset": "tiny", "epochs": 1})  # same: resume
    with pytest.raises(compare.SweepError, match="epochs=1, not 2"):
        compare.check_sweep_folder(tmp_path, {"dataset": "tiny", "epochs": 2})


# ---------------------------------------------------------------- end to end on `tiny`
TINY = ["--dataset", "tiny", "--epochs", "1", "--eps", "0", "0.1", "--seeds", "0", "1", "--size", "16"]
COMPARED = ("error_rate", "nll", "ece", "brier")


def _arms(folder: Path) -> dict:
    return {a["arm"]: a for a in json.loads((folder / "summary.json").read_text())["arms"]}


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_sweep(tmp_path):
    killed = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "recipes" / "compare.py"), *TINY, "--out", str(killed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    results = killed / "results.jsonl"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:  # wait for: one run finished, the next one training
            n_done = len(results.read_text().splitlines()) if results.exists() else 0
            started = [d for d in (killed / "runs").glob("*") if (d / "config.json").exists()] \
                if (killed / "runs").exists() else []
            if n_done >= 1 and len(started) > n_done and n_done < 4:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the sweep never got to its second run")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    before = results.read_text().splitlines()
    assert 1 <= len(before) < 4
    assert any(not (d / "final.json").exists() for d in (killed / "runs").iterdir())  # killed mid-run

    assert compare.main([*TINY, "--out", str(killed)]) == 0  # the same command again: resumes
    after = results.read_text().splitlines()
    assert after[: len(before)] == before  # finished runs kept as they were
    keys = [json.loads(line)["key"] for line in after]
    assert len(keys) == 4 and len(set(keys)) == 4  # nothing lost, nothing twice

    assert compare.main([*TINY, "--out", str(killed)]) == 0  # a third time: nothing to run
    assert results.read_text().splitlines() == after

    clean = tmp_path / "clean"
    assert compare.main([*TINY, "--out", str(clean)]) == 0
    got, want = _arms(killed), _arms(clean)
    assert got.keys() == want.keys() == {"eps=0", "eps=0.1"}
    for arm in want:
        for m in COMPARED:
            assert_close(got[arm][f"{m}_mean"], want[arm][f"{m}_mean"], rtol=1e-6, atol=1e-9)


@pytest.mark.slow
def test_shards_run_separately_then_merge_equal_the_whole_sweep(tmp_path):
    for i in (1, 2):
        assert compare.main([*TINY, "--shard", f"{i}/2", "--out", str(tmp_path / f"s{i}")]) == 0
    rows = [read_results(f) for f in sorted(tmp_path.glob("s*/results-shard*.jsonl"))]
    assert [len(r) for r in rows] == [2, 2]
    assert compare.main(["--merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out", str(tmp_path / "m")]) == 0
    merged = _arms(tmp_path / "m")
    assert {a: merged[a]["n_seeds"] for a in merged} == {"eps=0": 2, "eps=0.1": 2}
    for name in ("error_rate.png", "curves.png"):
        assert (tmp_path / "m" / name).stat().st_size > 5000
    assert np.isfinite(merged["eps=0.1"]["error_rate_mean"])
