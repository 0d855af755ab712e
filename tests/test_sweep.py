"""lsmooth.sweep with a stand-in recipe (tests/fake_recipe.py: the command-line contract of pets.py, no
training): jobs and their names, the serial and local executors, rerunning, failures, refusals. The real
recipe through compare.py: test_compare.py; on SLURM: test_slurm.py."""

import json
from pathlib import Path

import pytest

import lsmooth.sweep as S
from lsmooth.runs import FINAL_FILE
from lsmooth.sweep import Job, SweepError, run_sweep

FAKE = Path(__file__).with_name("fake_recipe.py")


def grid(eps=(0.0, 0.1), seeds=(0, 1, 2)) -> list[Job]:
    return [Job.of(f"eps={e:g}", s, ["--smoothing", "uniform", "--eps", e, "--noise", 0]) for e in eps for s in seeds]


def test_job_names_are_plain_and_the_command_is_the_recipes():
    job = Job.of("online α=0.5 noise=0.4", 3, ["--smoothing", "online"])
    assert job.name == "online-alpha0.5-noise0.4-s3" and job.argv == ("--smoothing", "online", "--seed", "3")
    cmd = job.command(FAKE, ["--dataset", "x"], Path("/sw"))
    assert cmd[1:] == [str(FAKE), "--dataset", "x", "--smoothing", "online", "--seed", "3", "--out", "/sw/runs",
                       "--name", "online-alpha0.5-noise0.4-s3"]
    with pytest.raises(SweepError, match="same name"):
        run_sweep([job, job], FAKE, [], "/tmp/never")


@pytest.mark.parametrize("executor, slots", [("serial", 1), ("local", 2)])
def test_every_job_runs_into_its_own_folder_and_a_rerun_runs_nothing(tmp_path, executor, slots, capsys):
    out = tmp_path / "sw"
    assert run_sweep(grid(), FAKE, ["--dataset", "d", "--sleep", "0.2"], out, executor=executor, slots=slots,
                     command="cmd") == {}
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(j.name for j in grid())
    assert all((out / "runs" / j.name / FINAL_FILE).exists() for j in grid())
    log = capsys.readouterr().out
    assert "sweep: 6 runs in" in log and "[6/6 finished, 0 running, 0 queued] " in log
    assert (out / "logs" / "eps0.1-s2.log").read_text() == "trained eps0.1-s2\n"
    record = json.loads((out / "sweep.json").read_text())
    assert record["recipe"] == "fake_recipe.py" and record["args"] == ["--dataset", "d", "--sleep", "0.2"]
    assert [c["executor"] for c in record["commands"]] == [executor] and "cpu" in record["commands"][0]["environment"]
    assert run_sweep(grid(), FAKE, ["--dataset", "d", "--sleep", "0.2"], out, executor=executor) == {}
    assert "6 finished already, 0 to run" in capsys.readouterr().out
    assert len(json.loads((out / "sweep.json").read_text())["commands"]) == 1  # a rerun with nothing to do


def test_failures_are_named_with_their_logs_and_a_rerun_runs_only_them(tmp_path, capsys, monkeypatch):
    out = tmp_path / "sw"
    monkeypatch.setenv("FAKE_FAIL_SEED", "2")
    failed = run_sweep(grid(), FAKE, ["--dataset", "d"], out, executor="local", slots=2)
    assert sorted(failed) == ["eps0-s2", "eps0.1-s2"]
    assert failed["eps0-s2"] == f"exit code 3; log: {out / 'logs' / 'eps0-s2.log'}"
    assert "boom" in (out / "logs" / "eps0-s2.log").read_text()
    assert "[4/6 finished, 0 running, 0 queued, 2 failed]" in capsys.readouterr().out
    done = {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*/final.json")}
    monkeypatch.delenv("FAKE_FAIL_SEED")
    assert run_sweep(grid(), FAKE, ["--dataset", "d"], out) == {}
    assert "4 finished already, 2 to run" in capsys.readouterr().out
    assert {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*/final.json")}.items() > done.items()
    with pytest.raises(SweepError, match="holds a sweep of fake_recipe.py --dataset d, not fake_recipe.py --dataset e"):
        run_sweep(grid(seeds=(7,)), FAKE, ["--dataset", "e"], out)  # other shared arguments: refused


def test_every_arm_is_checked_before_any_job_trains(tmp_path):
    with pytest.raises(SweepError, match="eps=1.5: fake_recipe.py: error: --eps 1.5: too large"):
        run_sweep(grid(eps=(0.0, 1.5)), FAKE, ["--dataset", "d"], tmp_path / "sw")
    assert not (tmp_path / "sw" / "runs").exists()


def test_bad_executors_and_folders_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(SweepError, match="--executor 'cloud': use one of serial, local, slurm"):
        run_sweep(grid(), FAKE, [], tmp_path, executor="cloud")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SweepError, match="--out: .*is a file"):
        run_sweep(grid(), FAKE, [], tmp_path / "file")
    monkeypatch.setattr(S.shutil, "which", lambda name: None)
    with pytest.raises(SweepError, match="needs SLURM's sbatch on the PATH"):
        run_sweep(grid(), FAKE, ["--dataset", "d"], tmp_path / "sw", executor="slurm")
