"""recipes/compare.py as users run it: a subprocess, one-line errors, merge, resume after SIGKILL,
Ctrl-C, shards. The library underneath is tested in test_sweep.py and test_report.py; every case
here pays for importing fastai in a fresh process (seconds), so there are few."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_runs import fake_row
from torch.testing import assert_close

from lsmooth.report import SUMMARY_JSON
from lsmooth.runs import CONFIG_FILE, FINAL_FILE
from lsmooth.sweep import append_result, read_results

ROOT = Path(__file__).resolve().parents[1]
ENV = os.environ | {"PYTHONPATH": str(ROOT)}
TINY = ["--dataset", "tiny", "--epochs", "1", "--eps", "0", "0.1", "--seeds", "0", "1", "--size", "16"]
COMPARED = ("error_rate", "nll", "ece", "brier")


def compare(*argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "recipes/compare.py", *map(str, argv)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300, **kw)


def popen(*argv) -> subprocess.Popen:
    # SIGINT back to its default: a test run started in the background inherits it ignored, and
    # Python then installs no KeyboardInterrupt handler
    return subprocess.Popen([sys.executable, "recipes/compare.py", *map(str, argv)], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def one_line_error(res: subprocess.CompletedProcess, message: str) -> None:
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def arms(folder: Path) -> dict:
    return {a["arm"]: a for a in json.loads((folder / SUMMARY_JSON).read_text())["arms"]}


@pytest.mark.parametrize("argv, message", [
    (["--shard", "3/2"], "--shard '3/2'"),  # argparse
    (["--eps", "0", "1.5"], "--eps 1.5"),  # lsmooth.train.resolve, before anything trains
    pytest.param(["--seeds", "x"], "invalid int value", marks=pytest.mark.slow),
    pytest.param(["--dataset", "nope"], "invalid choice", marks=pytest.mark.slow),
    pytest.param(["--arch", "resnet1"], "did you mean", marks=pytest.mark.slow),
    pytest.param(["--merge", "/nonexistent/sweep"], "no results file", marks=pytest.mark.slow),
])
def test_bad_values_give_one_line_and_no_traceback(argv, message, tmp_path):
    one_line_error(compare(*argv, "--out", tmp_path / "o"), message)
    assert not list((tmp_path / "o").glob("results*.jsonl"))


def test_merge_command_combines_shards(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for s in (0, 1):
        append_result(a / "results-shard1of2.jsonl", fake_row(a, 0.0, s, 0.1 * (s + 1)))
        append_result(b / "results-shard2of2.jsonl", fake_row(b, 0.1, s, 0.1))
    res = compare("--merge", a, b, "--out", tmp_path / "m")
    assert res.returncode == 0, res.stderr
    assert "eps=0.1 − eps=0" in res.stdout and "15.00 ± 7.07%" in res.stdout
    data = json.loads((tmp_path / "m" / SUMMARY_JSON).read_text())
    assert data["n_runs"] == 4 and data["provenance"]["command"].startswith("python recipes/compare.py --merge ")


# ---------------------------------------------------------------- end to end on `tiny`
def wait_for_second_run(out: Path, proc: subprocess.Popen, n_runs: int) -> int:
    """Wait until one run has finished and the next one is training; the number finished."""
    results, deadline = out / "results.jsonl", time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        n_done = len(results.read_text().splitlines()) if results.exists() else 0
        started = [d for d in (out / "runs").glob("*") if (d / CONFIG_FILE).exists()] if (out / "runs").exists() else []
        if 1 <= n_done < n_runs and len(started) > n_done:
            return n_done
        time.sleep(0.02)
    pytest.fail("the sweep never got to its second run")


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_sweep(tmp_path):
    killed = tmp_path / "killed"
    proc = popen(*TINY, "--out", killed)
    try:
        wait_for_second_run(killed, proc, 4)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    results = killed / "results.jsonl"
    before = results.read_text().splitlines()
    assert 1 <= len(before) < 4
    assert any(not (d / FINAL_FILE).exists() for d in (killed / "runs").iterdir())  # killed mid-run

    assert compare(*TINY, "--out", killed).returncode == 0  # the same command again: resumes
    after = results.read_text().splitlines()
    assert after[: len(before)] == before  # finished runs kept as they were
    keys = [json.loads(line)["key"] for line in after]
    assert len(keys) == 4 and len(set(keys)) == 4  # nothing lost, nothing twice
    again = compare(*TINY, "--out", killed)  # a third time: nothing to run
    assert "0 to run" in again.stdout and results.read_text().splitlines() == after
    one_line_error(compare(*TINY, "--lr", "0.5", "--out", killed), "holds a sweep with lr=")

    clean = tmp_path / "clean"
    assert compare(*TINY, "--out", clean).returncode == 0
    got, want = arms(killed), arms(clean)
    assert got.keys() == want.keys() == {"eps=0", "eps=0.1"}
    for arm in want:
        for m in COMPARED:
            assert_close(got[arm][f"{m}_mean"], want[arm][f"{m}_mean"], rtol=1e-6, atol=1e-9)


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume(tmp_path):
    proc = popen(*TINY, "--out", tmp_path / "s")
    wait_for_second_run(tmp_path / "s", proc, 4)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == (
        "compare.py: interrupted; rerun the same command to resume (finished runs are kept)")


@pytest.mark.slow
def test_shards_run_separately_then_merge_equal_the_whole_sweep(tmp_path):
    for i in (1, 2):
        assert compare(*TINY, "--shard", f"{i}/2", "--out", tmp_path / f"s{i}").returncode == 0
    rows = [read_results(f) for f in sorted(tmp_path.glob("s*/results-shard*.jsonl"))]
    assert [len(r) for r in rows] == [2, 2]
    assert compare("--merge", tmp_path / "s1", tmp_path / "s2", "--out", tmp_path / "m").returncode == 0
    merged = arms(tmp_path / "m")
    assert {a: merged[a]["n_seeds"] for a in merged} == {"eps=0": 2, "eps=0.1": 2}
    for name in ("error_rate.png", "curves.png", "reliability.png"):
        assert (tmp_path / "m" / name).stat().st_size > 5000
