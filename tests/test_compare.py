"""recipes/compare.py as users run it: the grid as pets.py jobs, one-line errors, the summary, a sweep killed
and run again, the local executor giving the serial one's numbers. The library: test_sweep.py, test_report.py."""

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ROOT, one_line, recipe, recipe_env, run_recipe
from torch.testing import assert_close

from lsmooth.report import SUMMARY_JSON
from lsmooth.runs import CONFIG_FILE, FINAL_FILE

TINY = ["--dataset", "tiny", "--epochs", "1", "--eps", "0", "0.1", "--seeds", "0", "1", "--size", "16"]
COMPARED = ("error_rate", "nll", "ece", "brier", "ece_ts")


def arms(folder: Path) -> dict:
    return {a["arm"]: a for a in json.loads((folder / SUMMARY_JSON).read_text())["arms"]}


@pytest.mark.parametrize("argv, message", [
    (["--name", "x"], "compare.py: error: --name is set for each job by the sweep; drop it"),
    (["--executor", "cloud"], "compare.py: error: --executor 'cloud': use one of serial, local, slurm"),
    (["--shard", "1/2"], "unrecognized arguments: --shard 1/2"),  # gone: executors replace shards
    (["--epochs", "0"], "compare.py: error: eps=0: pets.py: error: --epochs 0: must be an integer >= 1"),
], ids=["per-job", "executor", "shard", "forwarded"])
def test_bad_input_is_one_line_before_anything_trains(argv, message, tmp_path):
    res = run_recipe("compare.py", "--dataset", "tiny", "--out", tmp_path / "o", *argv, cwd=ROOT)
    assert res.returncode == 1 and message in one_line(res.stderr)
    assert not (tmp_path / "o" / "runs").exists()


def test_the_readme_command_alone_reads_its_flags(tmp_path):
    """`python recipes/compare.py` forwards nothing to the jobs: the digits default (here stopped at the executor)."""
    res = run_recipe("compare.py", "--executor", "cloud", cwd=tmp_path)
    assert res.returncode == 1 and one_line(res.stderr) == \
        "compare.py: error: --executor 'cloud': use one of serial, local, slurm", res.stderr


def wait_for_second_run(out: Path, proc: subprocess.Popen) -> None:
    """Until one run has finished and the next is training."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        runs = list((out / "runs").glob("*")) if (out / "runs").exists() else []
        done = [r for r in runs if (r / FINAL_FILE).exists()]
        if done and any((r / CONFIG_FILE).exists() and r not in done for r in runs):
            return
        time.sleep(0.05)
    pytest.fail(f"the sweep never got to its second run: {proc.communicate()}")


def jobs_running(out: Path) -> list[str]:
    """The command lines of the processes writing into ``out`` (Linux's /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:  # ended meanwhile
            continue
        if str(out / "runs") in argv:
            found.append(" ".join(argv))
    return found


@pytest.mark.slow
def test_a_killed_sweep_run_again_ends_like_one_never_killed_and_local_gives_the_same(tmp_path):
    killed = tmp_path / "killed"
    proc = subprocess.Popen(recipe("compare.py", *TINY, "--out", killed), cwd=ROOT, env=recipe_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_second_run(killed, proc)
    finally:
        proc.kill()  # the sweep alone: the job it runs must stop too (SIGINT, from the kernel when the sweep dies)
        proc.wait(timeout=30)
    deadline = time.monotonic() + 60
    while jobs_running(killed) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not jobs_running(killed), "a job trains on after its sweep was killed"
    first = {p.parent.name: p.read_text() for p in killed.glob("runs/*/final.json")}
    assert 1 <= len(first) < 4

    again = run_recipe("compare.py", *TINY, "--out", killed, cwd=ROOT)
    assert again.returncode == 0, again.stderr
    assert f"sweep: 4 runs in {killed}, {len(first)} finished already, {4 - len(first)} to run" in again.stdout
    assert {n: t for n, t in ((p.parent.name, p.read_text()) for p in killed.glob("runs/*/final.json"))
            if n in first} == first  # finished runs untouched
    assert "eps=0.1 − eps=0" in again.stdout and "written to" in again.stdout
    assert len(json.loads((killed / "sweep.json").read_text())["commands"]) == 2

    local = tmp_path / "local"
    res = run_recipe("compare.py", *TINY, "--out", local, "--executor", "local", "--jobs", 2, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    got, want = arms(killed), arms(local)
    assert got.keys() == want.keys() == {"eps=0", "eps=0.1"}
    for arm in want:
        for m in COMPARED:
            assert_close(got[arm][f"{m}_mean"], want[arm][f"{m}_mean"], rtol=0, atol=0)


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume(tmp_path):
    proc = subprocess.Popen(recipe("compare.py", *TINY, "--out", tmp_path / "s"), cwd=ROOT, env=recipe_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for_second_run(tmp_path / "s", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "compare.py: interrupted; rerun the same command to resume (finished runs " \
                                           "are kept)"


@pytest.mark.slow
def test_a_folder_without_dataset_gets_the_lessons_settings_and_dataset_eq_value_is_read(tiny_dir, tmp_path):
    """--data alone means Pets (as for pets.py), never the digits preset; --dataset=tiny names the folder too."""
    small = ["--epochs", "1", "--eps", "0", "--seeds", "0", "--no-pretrained", "--arch", "resnet18", "--size", "16",
             "--item-size", "16", "--bs", "32"]
    res = run_recipe("compare.py", "--data", tiny_dir, *small, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    config = json.loads((tmp_path / "runs" / "compare-pets" / "runs" / "eps0-s0" / CONFIG_FILE).read_text())
    assert config["dataset"] == "pets" and config["lr"] == 3e-3 and config["min_scale"] == 0.75  # the lesson's
    res = run_recipe("compare.py", "--dataset=tiny", *small, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "runs" / "compare-tiny" / "runs" / "eps0-s0" / FINAL_FILE).exists()
