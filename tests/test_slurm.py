"""End-to-end: submitit on a real one-node SLURM cluster (with accounting) started by scripts/slurm-local.sh.

The module's fixture starts the cluster in a fresh folder under /tmp (installing Slurm, munge and MariaDB with
apt-get when they are missing) and stops it at the end. It needs root and apt-get, and changes the machine (the
packages stay installed), so it runs only when asked: LSMOOTH_SLURM_TESTS=1, which .ci/run sets (or CI=true).
Asked, a missing prerequisite is a failure, not a skip. Timings are printed as "[slurm] ..." lines.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm-local.sh"
ASKED = os.environ.get("LSMOOTH_SLURM_TESTS") == "1" or os.environ.get("CI", "").lower() in ("1", "true")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _unmet() -> str | None:
    if sys.platform != "linux":
        return "SLURM tests need Linux"
    if os.geteuid() != 0:
        return "SLURM tests need root: scripts/slurm-local.sh starts slurmctld, slurmd, slurmdbd, munged and mariadbd"
    needed = ("slurmctld", "slurmd", "slurmdbd", "sbatch", "munged", "mariadbd")
    if not all(shutil.which(c) for c in needed) and not shutil.which("apt-get"):
        return "SLURM tests need apt-get to install Slurm, munge and MariaDB (Debian/Ubuntu)"
    try:
        import submitit  # noqa: F401
    except ImportError:
        return "SLURM tests need submitit (pip install submitit)"
    return None


if not ASKED:
    pytest.skip("SLURM tests install and start a one-node cluster (root, apt-get): LSMOOTH_SLURM_TESTS=1 runs them",
                allow_module_level=True)
_reason = _unmet()
if _reason is not None:
    raise RuntimeError(f"LSMOOTH_SLURM_TESTS=1 asks for the SLURM tests, but: {_reason}")

import cloudpickle  # noqa: E402  (a dependency of submitit)
import submitit  # noqa: E402

# The jobs unpickle the callables below: ship them by value, since this test module is not importable there.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def show(capsys, msg: str) -> None:
    with capsys.disabled():
        print(f"\n[slurm] {msg}", flush=True)


def _free_port_base() -> int:
    """A base port B with B, B+1 and B+2 free (slurmctld, slurmd, slurmdbd)."""
    for base in range(16817, 30000, 10):
        try:
            for port in range(base, base + 3):
                with socket.socket() as s:
                    s.bind(("0.0.0.0", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports for the SLURM daemons")


def _script(*args, env=None, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (whose parent has yet to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _processes_using(folder: Path) -> list[str]:
    """Processes (other than this one) with a file, their cwd or their SLURM_CONF under ``folder``."""
    hits = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            links = [os.readlink(fd) for fd in (proc / "fd").iterdir()] + [os.readlink(proc / "cwd")]
            env = (proc / "environ").read_bytes().split(b"\0")
            if any(link.startswith(str(folder) + "/") for link in links) or any(
                    e.startswith(b"SLURM_CONF=" + str(folder).encode() + b"/") for e in env):
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                hits.append(f"{proc.name}: {cmdline}")
        except OSError:  # gone meanwhile, or a kernel thread
            continue
    return hits


@pytest.fixture(scope="module")
def cluster():
    """(DIR, environment for the script) of a running cluster; SLURM_CONF is set in os.environ meanwhile."""
    folder = Path(tempfile.mkdtemp(prefix="slurm-local-", dir="/tmp"))  # munged (user munge) must reach it
    env = os.environ | {"SLURM_LOCAL_PORT": str(_free_port_base())}
    t0 = time.monotonic()
    started = _script("start", folder, env=env)
    start_s = time.monotonic() - t0
    saved = os.environ.get("SLURM_CONF")
    try:
        assert started.returncode == 0, f"start failed:\n{started.stderr}"
        line = started.stdout.strip().splitlines()[-1]
        assert line == f"export SLURM_CONF={folder}/etc/slurm.conf", started.stdout
        os.environ["SLURM_CONF"] = line.split("=", 1)[1]
        yield {"dir": folder, "env": env, "start_s": start_s, "start_log": started.stderr}
    finally:
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        stopped = _script("stop", folder, env=env, timeout=300)
        left = _processes_using(folder)
        shutil.rmtree(folder, ignore_errors=True)
        assert stopped.returncode == 0, f"stop failed:\n{stopped.stderr}"
        assert not left, f"still running after stop: {left}"


def _executor(folder: Path, **params) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder / "%j")
    assert executor.cluster == "slurm"
    # More than 10 minutes, or submitit counts every USR2 as a time-out (and gives up after 3).
    executor.update_parameters(timeout_min=60, **params)
    return executor


def _preempt_once(job_id: str, log: Path) -> None:
    """``scancel --signal=USR2``, as SLURM preempts a job, once. scancel retries a target that is in transition
    (the job requeueing) and can deliver USR2 again to the restarted job before submitit's handler is set,
    which kills it for good: so scancel is stopped once the job's log says it was requeued."""
    sent = subprocess.Popen(["scancel", "--signal=USR2", job_id])
    end = time.monotonic() + 60
    while sent.poll() is None and "Requeued job" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < end, f"job {job_id} was not requeued within 60 s of USR2"
        time.sleep(0.05)
    sent.kill()
    sent.wait()


def _sacct(job_id: str, fields: str = "JobID,State,ExitCode") -> list[dict]:
    out = subprocess.run(["sacct", "-X", "-P", "-j", job_id, "-o", fields], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    names = out[0].split("|")
    return [dict(zip(names, row.split("|"), strict=True)) for row in out[1:]]


def _eventually_state(job: submitit.SlurmJob, expected: str, timeout: float = 30) -> bool:
    end = time.monotonic() + timeout
    while job.get_info(mode="force").get("State") != expected:
        if time.monotonic() > end:
            return False
        time.sleep(0.5)
    return True


# --- what the jobs run ---------------------------------------------------------------------------------------------

def stamp_square(x: int, folder: str) -> int:
    """x*x, after recording when this call ran (the array throttle is read from these)."""
    t0 = time.time()
    time.sleep(1.0)
    Path(folder, f"{x}.span").write_text(f"{t0} {time.time()}")
    return x * x


def square(x: int) -> int:
    return x * x


def die() -> None:
    os._exit(3)  # no result, no traceback: the process just ends, as when killed


CHILD = r"""
import signal, sys, time
log = open(sys.argv[1], "a", buffering=1)
def note(signum, frame):
    log.write(f"{signal.Signals(signum).name} {time.time()}\n")
    if signum == signal.SIGTERM:
        sys.exit(0)
signal.signal(signal.SIGUSR2, note)
signal.signal(signal.SIGTERM, note)
while True:
    time.sleep(0.05)
"""


class Counter(submitit.helpers.Checkpointable):
    """Counts to ``steps`` in a progress file, resuming from it; a child process logs the signals it gets.

    checkpoint() is Checkpointable's: requeue the same callable; the state to resume from is the progress file.
    """

    def __init__(self, folder: str, steps: int, dt: float):
        self.folder, self.steps, self.dt = folder, steps, dt

    def __call__(self) -> int:
        folder = Path(self.folder)
        progress = folder / "progress"
        start = int(progress.read_text()) if progress.exists() else 0
        with (folder / "runs").open("a") as f:
            f.write(f"{time.time()} {start} {os.environ.get('SLURM_RESTART_COUNT', '0')}\n")
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(folder / "child.log")])
        with (folder / "child.pids").open("a") as f:
            f.write(f"{child.pid}\n")
        for i in range(start, self.steps):
            time.sleep(self.dt)
            tmp = folder / "progress.tmp"
            tmp.write_text(str(i + 1))
            tmp.replace(progress)
        child.terminate()
        child.wait()
        return start


# --- tests -------------------------------------------------------------------------------------------------------

def test_cluster_up(cluster, capsys):
    show(capsys, f"cluster start (install included if it was needed): {cluster['start_s']:.1f} s")
    for line in cluster["start_log"].splitlines():
        if "installed in" in line or "up in" in line:
            show(capsys, line)
    assert subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True).stdout.strip() == "idle"
    again = _script("start", cluster["dir"], env=cluster["env"])  # idempotent
    assert again.returncode == 0 and "already running" in again.stderr
    assert again.stdout.strip() == f"export SLURM_CONF={os.environ['SLURM_CONF']}"
    status = _script("status", cluster["dir"], env=cluster["env"])
    assert status.returncode == 0 and status.stdout.startswith("up"), status.stdout + status.stderr


def test_map_array_throttled(cluster, tmp_path, capsys):
    """4 calls as one array, at most 2 at a time: 4 results; the jobs may share cores, so only the throttle limits."""
    spans = tmp_path / "spans"
    spans.mkdir()
    executor = _executor(tmp_path / "sub", slurm_array_parallelism=2,
                         slurm_additional_parameters={"oversubscribe": True})
    t0 = time.monotonic()
    jobs = executor.map_array(stamp_square, range(4), [str(spans)] * 4)
    submitted = time.monotonic() - t0
    assert [job.result() for job in jobs] == [0, 1, 4, 9]
    elapsed = time.monotonic() - t0
    show(capsys, f"map_array of 4 (1 s each, 2 at a time): submitted in {submitted:.2f} s, "
                 f"results after {elapsed:.1f} s")
    array_id = jobs[0].job_id.split("_")[0]
    assert [job.job_id for job in jobs] == [f"{array_id}_{i}" for i in range(4)]
    # The sbatch script of an array is in the folder of the array's id (here %j is the id of each task).
    assert "#SBATCH --array=0-3%2" in (tmp_path / "sub" / array_id / f"{array_id}_submission.sh").read_text()
    # At no time did more than 2 run.
    intervals = [tuple(map(float, (spans / f"{i}.span").read_text().split())) for i in range(4)]
    most = max(sum(a <= t < b for a, b in intervals) for t, _ in intervals)
    assert most <= 2, intervals
    assert {row["State"] for row in _sacct(array_id)} == {"COMPLETED"}
    # A controller that restarts reattaches by folder and id, and reads the results and logs.
    again = [submitit.SlurmJob(folder=executor.folder, job_id=job.job_id) for job in jobs]
    assert [job.result() for job in again] == [0, 1, 4, 9]
    assert again[2].paths.stdout == tmp_path / "sub" / f"{array_id}_2" / f"{array_id}_2_0_log.out"
    assert _eventually_state(again[2], "COMPLETED")


def test_preempted_job_is_requeued_and_resumes(cluster, tmp_path, capsys):
    """USR2 (what SLURM sends before preempting) checkpoints and requeues; the second run resumes from the file."""
    work = tmp_path / "work"
    work.mkdir()
    executor = _executor(tmp_path / "sub")  # use_srun=True (submitit's default): the signal reaches Python
    steps, dt = 40, 0.1
    job = executor.submit(Counter(str(work), steps, dt))
    progress = work / "progress"
    end = time.monotonic() + 60
    while not (progress.exists() and int(progress.read_text()) >= 5):
        assert time.monotonic() < end, f"the job made no progress: {job.state}\n{job.stderr()}"
        time.sleep(0.05)
    signalled = time.time()
    _preempt_once(job.job_id, Path(job.paths.stdout))
    at_signal = int(progress.read_text())

    # The controller "restarts": a new handle from the folder and the id only.
    job = submitit.SlurmJob(folder=executor.folder, job_id=job.job_id)
    states = []
    while not job.done():
        state = job.get_info(mode="force").get("State", "UNKNOWN")
        if not states or states[-1][1] != state:
            states.append((round(time.time() - signalled, 1), state))
        assert time.time() - signalled < 120, states
        time.sleep(0.5)
    resumed_from = job.result()
    total = time.time() - signalled

    runs = [line.split() for line in (work / "runs").read_text().splitlines()]
    assert len(runs) == 2, runs
    requeue_delay = float(runs[1][0]) - signalled
    show(capsys, f"requeue: second run started {requeue_delay:.1f} s after USR2; result {total:.1f} s after it; "
                 f"states seen: {states}")
    assert [int(r[1]) for r in runs] == [0, resumed_from]
    assert resumed_from >= at_signal > 0  # continued from its own progress, not from scratch
    assert [r[2] for r in runs] == ["0", "1"]  # SLURM_RESTART_COUNT
    assert int(progress.read_text()) == steps
    assert requeue_delay < 30
    # The result file comes first; SLURM says COMPLETED a moment later, once the job's processes have ended.
    assert _eventually_state(job, "COMPLETED")
    assert any(s in ("REQUEUED", "PENDING") for _, s in states), states
    assert "Caught signal SIGUSR2" in job.stderr() and "preempted" in job.stderr()
    # The first run's child got USR2 too (the whole step does), then SIGTERM when the job was requeued;
    # the second run's child got only the SIGTERM its parent sent at the end. None is left.
    child_log = [line.split()[0] for line in (work / "child.log").read_text().splitlines()]
    assert child_log == ["SIGUSR2", "SIGTERM", "SIGTERM"], child_log
    assert not any(_alive(int(pid)) for pid in (work / "child.pids").read_text().split())


def test_dead_job_is_reported_failed(cluster, tmp_path, capsys):
    """A job whose process dies leaves no result; sacct's FAILED ends the wait instead of a hang."""
    executor = _executor(tmp_path / "sub")
    t0 = time.monotonic()
    job = executor.submit(die)
    while not job.done():
        assert time.monotonic() - t0 < 60, job.state
        time.sleep(0.2)
    done_s = time.monotonic() - t0
    assert job.state == "FAILED"
    error = job.exception()  # waits submitit's grace for a result file (15 s) first; job.result() would raise it
    exception_s = time.monotonic() - t0
    show(capsys, f"dead job: done() and state FAILED after {done_s:.1f} s; exception() after {exception_s:.1f} s")
    assert isinstance(error, submitit.core.utils.UncompletedJobError)
    assert "has not produced any output (state: FAILED)" in str(error)
    assert _sacct(job.job_id)[0]["ExitCode"] == "3:0"


def test_hundred_job_array(cluster, tmp_path, capsys):
    """100 trivial calls as one array (jobs may share cores: 8 at a time on 2 cores)."""
    executor = _executor(tmp_path / "sub", slurm_additional_parameters={"oversubscribe": True})
    t0 = time.monotonic()
    jobs = executor.map_array(square, range(100))
    submitted = time.monotonic() - t0
    results = [job.result() for job in jobs]
    elapsed = time.monotonic() - t0
    show(capsys, f"map_array of 100: submitted in {submitted:.2f} s, last result after {elapsed:.1f} s")
    assert results == [x * x for x in range(100)]
    assert submitted < 10
    end = time.monotonic() + 60  # a result file is written before its task ends in SLURM's accounting
    while (states := {row["State"] for row in _sacct(jobs[0].job_id.split("_")[0])}) & {"RUNNING", "COMPLETING"}:
        assert time.monotonic() < end, states
        time.sleep(0.5)
    assert states == {"COMPLETED"}


def test_job_ids_keep_increasing_across_a_restart(cluster, tmp_path, capsys):
    """stop then start on the same folder: the ids go on (submitit would otherwise find old files under an id)."""
    executor = _executor(tmp_path / "sub")
    before = executor.submit(square, 3)
    assert before.result() == 9
    t0 = time.monotonic()
    stopped = _script("stop", cluster["dir"], env=cluster["env"])
    stop_s = time.monotonic() - t0
    assert stopped.returncode == 0, stopped.stderr
    status = _script("status", cluster["dir"], env=cluster["env"])
    assert status.returncode == 3 and status.stdout.startswith("down"), status.stdout
    t0 = time.monotonic()
    started = _script("start", cluster["dir"], env=cluster["env"])
    start_s = time.monotonic() - t0
    assert started.returncode == 0, started.stderr
    show(capsys, f"restart: stop {stop_s:.1f} s, start {start_s:.1f} s")
    after = executor.submit(square, 4)
    assert after.result() == 16
    assert int(after.job_id) > int(before.job_id)
    assert _sacct(before.job_id)[0]["State"] == "COMPLETED"  # the accounting database kept the history


# ---------------------------------------------------------------- a sweep as a job array
@pytest.mark.timeout(900)  # two sweeps of 4 digits runs on 2 cores
def test_a_digits_sweep_on_slurm_with_a_preempted_job_equals_the_serial_sweep(cluster, tmp_path, capsys):
    """compare.py --executor slurm: 4 runs as one array (2 at a time); one job is preempted (USR2) after its first
    epoch, requeued and resumed; the sweep ends with exactly 4 results, equal to the serial sweep's."""
    import json

    grid = ["--dataset", "digits", "--epochs", "3", "--size", "8", "--item-size", "8", "--eps", "0", "0.1",
            "--seeds", "0", "1"]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    slurm = tmp_path / "slurm-sweep"
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(ROOT / "recipes" / "compare.py"), *grid, "--out", slurm,
                             "--executor", "slurm", "--jobs", "2", "--time-min", "30"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not list(slurm.glob("runs/*/checkpoint.pth")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        found = list(slurm.glob("runs/*/checkpoint.pth"))
        if not found:  # the sweep ended or stalled before any job saved an epoch: show why
            proc.kill()
            pytest.fail(f"no checkpoint within 300 s (sweep exit {proc.wait()}):\n{proc.stdout.read()}\n"
                        + "\n".join(f"{p}:\n{p.read_text()[-2000:]}" for p in slurm.glob("slurm/*.err")))
        ckpt = found[0]
        job_id = json.loads((slurm / "slurm" / "jobs.json").read_text())[ckpt.parent.name]
        _preempt_once(str(job_id), Path(submitit.SlurmJob(folder=slurm / "slurm", job_id=str(job_id)).paths.stdout))
        out, _ = proc.communicate(timeout=600)
    finally:
        proc.kill()
    took = time.monotonic() - t0
    assert proc.returncode == 0, out
    assert sorted(p.parent.name for p in slurm.glob("runs/*/final.json")) == [
        "eps0-s0", "eps0-s1", "eps0.1-s0", "eps0.1-s1"]
    assert "4 submitted as a job array" in out and "[4/4 finished, 0 running, 0 queued]" in out
    log = Path(submitit.SlurmJob(folder=slurm / "slurm", job_id=str(job_id)).paths.stderr).read_text()
    assert "SIGUSR2" in log  # the preemption, and submitit's requeue
    resumed = Path(submitit.SlurmJob(folder=slurm / "slurm", job_id=str(job_id)).paths.stdout).read_text()
    assert "resuming" in resumed and "after epoch 1 of 3" in resumed or "after epoch 2 of 3" in resumed

    serial = tmp_path / "serial-sweep"
    res = subprocess.run([sys.executable, str(ROOT / "recipes" / "compare.py"), *grid, "--out", serial], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    for name in ("eps0-s0", "eps0-s1", "eps0.1-s0", "eps0.1-s1"):
        a, b = (json.loads((s / "runs" / name / "final.json").read_text()) for s in (slurm, serial))
        for key in ("error_rate", "nll", "ece", "brier", "ece_ts", "temperature"):
            assert a[key] == b[key], (name, key)
    show(capsys, f"digits sweep of 4 runs as a job array, one preempted and resumed: {took:.0f} s from submission "
                 f"to the summary")


# ---------------------------------------------------------------- last: it stops the cluster
def test_stop_leaves_no_job_process(cluster, tmp_path):
    """Runs last: a job still running, with a process that left the job's tree, is ended by stop."""
    executor = _executor(tmp_path / "sub")
    marker = tmp_path / "escaped.pid"
    job = executor.submit(subprocess.run, ["bash", "-c", f"(setsid sleep 600 & echo $! >{marker}); sleep 600"])
    end = time.monotonic() + 60
    while not marker.exists() or not marker.read_text().strip():
        assert time.monotonic() < end, job.state
        time.sleep(0.1)
    escaped = int(marker.read_text())
    assert _alive(escaped)
    stopped = _script("stop", cluster["dir"], env=cluster["env"])
    assert stopped.returncode == 0, stopped.stderr
    assert not _alive(escaped)
    assert not _processes_using(cluster["dir"])
