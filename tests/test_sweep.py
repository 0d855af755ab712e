"""lsmooth.sweep with a stand-in recipe (tests/fake_recipe.py: the command-line contract of pets.py, no
training): jobs and their names, the serial and local executors, rerunning, failures, refusals. The real
recipe through compare.py: test_compare.py; on SLURM: test_slurm.py."""

import json
import os
import signal
import subprocess
import sys
import time
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
    assert (out / "logs" / "eps0.1-s2.log").read_text() == "started\ntrained eps0.1-s2\n"
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
    assert not (tmp_path / "sw" / "sweep.json").exists()  # refused before anything is recorded


def test_the_local_executor_gives_each_job_one_of_the_gpus_this_process_may_use(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # a cluster's allocation: GPUs 3 and 5 of the node
    assert run_sweep(grid(), FAKE, ["--dataset", "d", "--sleep", "0.2"], tmp_path / "sw", executor="local") == {}
    gpus = [log.read_text().splitlines()[0] for log in (tmp_path / "sw" / "logs").iterdir()]
    assert sorted(set(gpus)) == ["gpu 3", "gpu 5"] and len(gpus) == 6


def test_local_jobs_share_the_cpus_and_a_users_omp_num_threads_stands(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))  # 8 CPUs for this process
    run_sweep(grid(seeds=(0,)), FAKE, ["--dataset", "d"], tmp_path / "a", executor="local", slots=2)
    run_sweep(grid(seeds=(0,)), FAKE, ["--dataset", "d"], tmp_path / "s", executor="serial")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    run_sweep(grid(seeds=(0,)), FAKE, ["--dataset", "d"], tmp_path / "u", executor="local", slots=2)
    threads = {d: {(tmp_path / d / "runs" / j.name / "threads").read_text() for j in grid(seeds=(0,))}
               for d in "asu"}
    assert threads == {"a": {"4"}, "s": {"all"}, "u": {"3"}}


@pytest.mark.parametrize("executor", ["serial", "local"])
def test_ctrl_c_on_a_terminal_reaches_each_job_once_and_a_killed_sweep_stops_its_jobs(tmp_path, executor):
    """A terminal's Ctrl-C signals its whole process group: the sweep passes it on, so a job that saw it too
    would get two (the second stops a recipe without its checkpoint). Jobs run in their own sessions."""
    def start(out):
        code = (f"from lsmooth.sweep import run_sweep, Job; run_sweep([Job.of('eps=0', s, ['--eps', 0, '--noise', 0])"
                f" for s in (0, 1)], {str(FAKE)!r}, ['--sleep', '60'], {str(out)!r}, executor={executor!r})")
        return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=lambda: (os.setsid(), signal.signal(signal.SIGINT, signal.SIG_DFL)))

    def wait_started(out, n):
        deadline = time.monotonic() + 60
        while sum("started" in p.read_text() for p in out.glob("logs/*.log")) < n and time.monotonic() < deadline:
            time.sleep(0.05)

    def interrupts(out, n):
        deadline = time.monotonic() + 60
        while len(list(out.glob("runs/*/interrupted"))) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return [p.read_text() for p in out.glob("runs/*/interrupted")]

    n = 1 if executor == "serial" else 2
    proc = start(tmp_path / "ctrl-c")
    wait_started(tmp_path / "ctrl-c", n)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
    proc.wait(timeout=60)
    assert interrupts(tmp_path / "ctrl-c", n) == ["1"] * n

    proc = start(tmp_path / "killed")
    wait_started(tmp_path / "killed", n)
    proc.kill()  # the sweep alone, as an OOM killer would: its jobs get SIGINT from the kernel (Linux)
    proc.wait(timeout=60)
    assert interrupts(tmp_path / "killed", n) == ["1"] * n


def test_a_job_sacct_calls_failed_while_squeue_still_holds_it_is_waited_for(tmp_path, monkeypatch):
    """A preempted job being requeued can read FAILED in sacct for a moment, and a busy controller may not answer
    squeue (seen on slurm-local.sh): a job without a result counts as failed only once squeue has answered
    without it for 30 s."""
    submitit = pytest.importorskip("submitit")
    out, polls = tmp_path / "sw", []

    class FakeJob:  # the parts of submitit.SlurmJob the sweep uses; its story is told by poll number
        def __init__(self, job_id, story):
            self.job_id, self.story = job_id, story
            self.paths = type("P", (), {"result_pickle": tmp_path / f"{job_id}.pkl", "stdout": tmp_path / "x.out"})

        def now(self):
            return self.story[min(len(polls), len(self.story)) - 1]

        @property
        def state(self):
            state, in_queue, finished = self.now()
            if finished and not self.paths.result_pickle.exists():  # the recipe wrote final.json, submitit its result
                (out / "runs" / self.name).mkdir(parents=True)
                (out / "runs" / self.name / FINAL_FILE).write_text("{}")
                self.paths.result_pickle.write_text("")
            return state

        def done(self):
            return self.paths.result_pickle.exists() or self.state == "FAILED"

        def get_info(self, mode):
            pass

    # (sacct's state, listed by squeue, finished) at poll 1, 2, 3...
    stories = {"eps0-s0": [("RUNNING", True, False), ("FAILED", True, False), ("FAILED", True, False),
                           ("RUNNING", True, False), ("COMPLETED", False, True)],
               "eps0-s1": [("RUNNING", True, False), ("FAILED", False, False)]}
    made = iter([FakeJob("7_0", stories["eps0-s0"]), FakeJob("7_1", stories["eps0-s1"])])

    class FakeExecutor:
        def __init__(self, folder, cluster):
            Path(folder).mkdir(parents=True)

        def update_parameters(self, **kwargs):
            pass

        def batch(self):
            import contextlib

            return contextlib.nullcontext()

        def submit(self, fn):
            job = next(made)
            job.name = fn.command[fn.command.index("--name") + 1]
            jobs.append(job)
            return job

    jobs = []
    monkeypatch.setattr(submitit, "AutoExecutor", FakeExecutor)
    class Clock:  # the sweep's time: each sleep passes at once
        monotonic = staticmethod(lambda: sum(polls))
        sleep = staticmethod(polls.append)

    monkeypatch.setattr(S, "time", Clock)
    # squeue: the jobs in the queue now, but no answer at poll 2 (a busy controller)
    monkeypatch.setattr(S, "_queue", lambda: None if len(polls) == 2 else {j.job_id for j in jobs if j.now()[1]})
    lines = []
    progress = S.Progress(2, 0, lines.append)
    S._slurm(grid(eps=(0.0,), seeds=(0, 1)), FAKE, [], out, progress, {}, S.SlurmOptions())
    assert progress.done == 1 and list(progress.failed) == ["eps0-s1"], lines
    assert lines[-2].startswith("[1/2 finished, 1 running, 0 queued] eps0-s0 finished"), lines
    assert lines[-1].startswith("[1/2 finished, 0 running, 0 queued, 1 failed] eps0-s1 failed"), lines
    # eps0-s1: gone from the queue first seen at poll 3 (6 s; at poll 2 squeue did not answer), failed 30 s later
    assert sum(polls) == 36 and len(polls) == 18


def test_sbatch_refusing_the_array_is_one_line(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")

    class Refused:  # submitit's executor when sbatch fails (a controller down, a bad --sbatch option)
        def __init__(self, folder, cluster):
            pass

        def update_parameters(self, **kwargs):
            pass

        def batch(self):
            raise submitit.core.utils.FailedJobError(
                "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)\n")

    monkeypatch.setattr(submitit, "AutoExecutor", Refused)
    (tmp_path / "sw" / "slurm").mkdir(parents=True)
    with pytest.raises(SweepError) as info:
        S._slurm(grid(seeds=(0,)), FAKE, [], tmp_path / "sw", S.Progress(2, 0, print), {}, S.SlurmOptions())
    assert str(info.value) == ("sbatch: error: Batch job submission failed: Unable to contact slurm controller "
                               "(connect failure)")
