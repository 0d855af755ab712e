"""Sweeps: a grid of recipe runs, one job each, run here one after another, N at a time, or on SLURM.

A job is a command line of a recipe (``python recipes/pets.py ... --out <sweep>/runs --name <job>``)
that trains one run into its own folder; the sweep never imports the recipe and never writes a run
folder itself. A sweep folder holds:

- ``sweep.json``: the recipe and its shared arguments (a rerun with other ones is refused), and
  every command that ran there, with its executor and machine;
- ``runs/<job>/``: the run folders, written by the jobs (:mod:`lsmooth.runs` reads them);
- ``logs/<job>.log``: each job's output (``slurm/``: submitit's folder, for SLURM jobs).

Running the same command again skips the jobs whose run folder holds ``final.json``; a job that was
killed or preempted resumes from its last epoch (the recipe's run folder is fixed by ``--name``),
and a SLURM job still queued or running from an earlier command is waited for, not submitted again.

Executors: ``serial`` (default: one job after another, output on the terminal; nothing to install),
``local`` (``jobs`` at a time, one GPU each when there are GPUs) and ``slurm`` (a job array through
submitit: ``pip install -e '.[cluster]'``; preempted or timed-out jobs are requeued and resume).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lsmooth.runs import (
    FINAL_FILE,
    RUNS_DIR,
    SWEEP_FILE,
    atomic_write_json,
    check_writable,
    environment,
    slug,
    usable_cpus,
)

__all__ = ["EXECUTORS", "Job", "SlurmOptions", "SweepError", "run_sweep"]

EXECUTORS = ("serial", "local", "slurm")
LOGS_DIR, SLURM_DIR = "logs", "slurm"  # the jobs' output; submitit's folder
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class SweepError(ValueError):
    """A sweep that cannot run as asked; the message (one line) says why."""


@dataclass(frozen=True)
class Job:
    """One run of the grid: its arm, its run folder's name, and ``argv`` for the recipe (the arm's flags and
    ``--seed``)."""

    arm: str
    name: str
    argv: tuple[str, ...]

    @classmethod
    def of(cls, arm: str, seed: int, argv: Sequence[str]) -> Job:
        """The job of ``arm`` (a label) and ``seed``: named like ``eps0.1-noise0.4-s2`` (ASCII, no spaces)."""
        return cls(arm, f"{slug(arm)}-s{seed}", (*map(str, argv), "--seed", str(seed)))

    def command(self, recipe: Path, shared: Sequence[str], out: Path) -> list[str]:
        return [sys.executable, str(recipe), *shared, *self.argv, "--out", str(out / RUNS_DIR), "--name", self.name]


@dataclass
class SlurmOptions:
    """What ``sbatch`` gets for each job of the array (submitit's ``slurm_*`` parameters)."""

    partition: str | None = None
    gpus: int = 0  # per job
    cpus: int = 1  # per job
    mem_gb: int | None = None
    time_min: int = 60  # per job: a job stopped at its limit is requeued and resumes
    throttle: int | None = None  # at most this many jobs of the array at once
    sbatch: dict = field(default_factory=dict)  # any other sbatch option, e.g. {"account": "mylab"}


# ---------------------------------------------------------------- the sweep folder
def _record(out: Path, recipe: Path, shared: list[str], command: str, executor: str) -> None:
    """sweep.json: the recipe and shared arguments of the sweep, and this command; SweepError if they differ."""
    f = out / SWEEP_FILE
    record = json.loads(f.read_text()) if f.exists() else {"recipe": recipe.name, "args": shared, "commands": []}
    if (record["recipe"], record["args"]) != (recipe.name, shared):
        raise SweepError(f"{out} holds a sweep of {record['recipe']} {shlex.join(record['args'])}, not "
                         f"{recipe.name} {shlex.join(shared)}; use another --out (or the same arguments to resume)")
    record["commands"].append({"command": command, "executor": executor,
                               "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "environment": environment()})
    atomic_write_json(f, record)


def _finished(out: Path, job: Job) -> bool:
    return (out / RUNS_DIR / job.name / FINAL_FILE).exists()


def check_jobs(jobs: Sequence[Job], recipe: Path, shared: Sequence[str], out: Path) -> None:
    """The recipe's ``--check`` on one job of each arm before any trains (the settings, the data and the
    weights, which it downloads: on a cluster, the login node fetches them for the jobs): SweepError with
    the first error. A bad setting fails every job of its arm, so one each is enough; the first runs alone,
    then the others all at once."""
    first: dict[str, Job] = {}
    for job in jobs:
        first.setdefault(job.arm, job)
    first = list(first.values())
    start = lambda j: subprocess.Popen([*j.command(recipe, shared, out), "--check"],  # noqa: E731
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for batch in (first[:1], first[1:]):  # the first alone: it downloads what every job reads
        procs = [start(j) for j in batch]
        errors = [(job, proc.communicate()[1], proc) for job, proc in zip(batch, procs, strict=True)]
        for job, err, proc in errors:
            if code := proc.returncode:
                lines = err.strip().splitlines()
                raise SweepError(f"{job.arm}: {lines[-1] if lines else f'exit code {code}'}")


# ---------------------------------------------------------------- progress
class Progress:
    """Counts and one line per change: ``[3/6 finished, 2 running, 1 queued] eps0.1-s1 finished``."""

    def __init__(self, total: int, done: int, log: Callable[[str], None]):
        self.total, self.done, self.failed, self.log = total, done, {}, log

    def line(self, running: int, queued: int, news: str) -> None:
        failed = f", {len(self.failed)} failed" if self.failed else ""
        self.log(f"[{self.done}/{self.total} finished, {running} running, {queued} queued{failed}] {news}")


# ---------------------------------------------------------------- executors
def _serial(todo, recipe, shared, out, progress, env) -> None:
    """One job after another in the foreground; each job's output goes to the terminal and to its log."""
    for k, job in enumerate(todo):
        progress.line(1, len(todo) - k - 1, f"{job.name} started")
        log = out / LOGS_DIR / f"{job.name}.log"
        with log.open("w", buffering=1) as f, subprocess.Popen(
                job.command(recipe, shared, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                preexec_fn=_job_process(os.getpid())) as proc:
            def tee():
                for line in proc.stdout:
                    sys.stdout.write(line)
                    f.write(line)

            with _stopped_with(lambda: [proc], then=tee):  # stopped: the run's last lines still go to its log
                tee()
        _settle(job, f"exit code {proc.returncode}", out, log, progress)
        progress.line(0, len(todo) - k - 1, f"{job.name} {'failed' if job.name in progress.failed else 'finished'}")


def _local(todo, recipe, shared, out, progress, env, slots: int) -> None:
    """``slots`` jobs at a time as child processes, each on its own GPU when there are GPUs."""
    gpus = _visible_gpus()
    if "OMP_NUM_THREADS" not in env:  # each job its share of the CPUs: torch's default, all of them, oversubscribes
        env = env | {"OMP_NUM_THREADS": str(max(1, usable_cpus() // slots))}
    queue, running = list(todo), {}  # slot -> (job, process, log)
    with _stopped_with(lambda: [proc for _, proc, _ in running.values()]):
        _local_loop(queue, running, recipe, shared, out, progress, env, slots, gpus)


def _local_loop(queue, running, recipe, shared, out, progress, env, slots, gpus) -> None:
    while queue or running:
        for slot in [s for s in range(slots) if s not in running][: len(queue)]:
            job = queue.pop(0)
            log = out / LOGS_DIR / f"{job.name}.log"
            child_env = env | ({"CUDA_VISIBLE_DEVICES": gpus[slot % len(gpus)]} if gpus else {})
            with log.open("w") as f:
                running[slot] = job, subprocess.Popen(job.command(recipe, shared, out), stdout=f,
                                                      stderr=subprocess.STDOUT, env=child_env,
                                                      preexec_fn=_job_process(os.getpid())), log
            progress.line(len(running), len(queue), f"{job.name} started (log: {log})")
        time.sleep(0.5)
        for slot, (job, proc, log) in list(running.items()):
            if proc.poll() is not None:
                del running[slot]
                _settle(job, f"exit code {proc.returncode}", out, log, progress)
                state = "failed" if job.name in progress.failed else "finished"
                progress.line(len(running), len(queue), f"{job.name} {state}")


def _job_process(sweep: int) -> Callable[[], None]:
    """What a local job's process does before the recipe starts: it takes its own session, so a terminal's
    Ctrl-C reaches the sweep alone, and (on Linux) asks for SIGINT when the sweep dies, however it dies: no
    job trains on for a sweep that was killed, and each keeps its last checkpoint."""
    def setup() -> None:
        os.setsid()
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # started with ``&``, the sweep ignores SIGINT: its jobs must not
        with contextlib.suppress(OSError, AttributeError):  # prctl: Linux only
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGINT)
        if os.getppid() != sweep:  # the sweep died before prctl
            os._exit(1)

    return setup


@contextlib.contextmanager
def _stopped_with(running: Callable[[], list], then: Callable[[], None] = lambda: None):
    """On Ctrl-C, SIGTERM or a closed terminal, the ``running()`` jobs get one SIGINT and end their runs cleanly:
    the last epoch's checkpoint stays. (They run in their own sessions, so a terminal's Ctrl-C reaches only the
    sweep, which passes it on once: a second SIGINT would stop a recipe without its checkpoint.)"""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    handlers = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    except KeyboardInterrupt:
        for proc in running():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        then()
        for proc in running():
            proc.wait()
        raise
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (its own list, when it has one)."""
    try:
        import torch

        count = torch.cuda.device_count()
    except ImportError:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [v.strip() for v in visible.split(",")] if visible is not None else [str(i) for i in range(count)]
    return names[:count]


def _settle(job: Job, ended: str, out: Path, log: Path, progress: Progress) -> None:
    """Count a job that ended: finished if its run folder holds final.json, else failed (how, and its log)."""
    if _finished(out, job):
        progress.done += 1
    else:
        progress.failed[job.name] = f"{ended}; log: {log}"


_ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}


class _RecipeJob:
    """A SLURM job of the array: runs the recipe's command; preempted or timed out, it is requeued and the
    same command resumes the run from its last epoch (submitit's checkpoint protocol)."""

    def __init__(self, command: list[str], env: dict):
        self.command, self.env = command, env

    def __call__(self) -> int:
        # SLURM signals the whole job, the recipe too: only submitit's handler here must act on USR2 (the recipe
        # would die of it at once, racing the requeue). That handler requeues the job and exits, and
        # subprocess.run kills the recipe on the way out; its last checkpoint, written atomically, is whole.
        code = subprocess.run(self.command, env=os.environ | self.env,
                              preexec_fn=lambda: signal.signal(signal.SIGUSR2, signal.SIG_IGN)).returncode
        if code:
            raise RuntimeError(f"{shlex.join(self.command)} ended with exit code {code}")
        return code

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def _check_slurm() -> None:
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise SweepError("--executor slurm needs submitit: pip install -e '.[cluster]'") from None
    if shutil.which("sbatch") is None:
        raise SweepError("--executor slurm needs SLURM's sbatch on the PATH (is this a cluster's login node?)")


def _queue() -> set[str] | None:
    """The ids of this user's jobs in SLURM's queue, array tasks one by one; None if squeue did not answer."""
    listed = subprocess.run(["squeue", "--noheader", "--array", "--format=%i", f"--user={os.getuid()}"],
                            capture_output=True, text=True)
    return set(listed.stdout.split()) if listed.returncode == 0 else None


class _Gone:
    """Which of the jobs that sacct calls ended, without a result file, really ended: those squeue has not
    listed for ``grace`` seconds. Accounting can show an attempt's end (FAILED, CANCELLED) of a job that SLURM
    has requeued, and a busy controller may not answer squeue: neither must fail a job that will resume. If
    squeue answers nothing for ``blind`` seconds, sacct's word stands."""

    def __init__(self, grace: float = 30.0, blind: float = 600.0):
        self.grace, self.blind, self.since, self.answered = grace, blind, {}, time.monotonic()

    def sure(self, suspects: dict[str, str]) -> list[str]:
        """The names among ``suspects`` (name -> SLURM job id) that ended for sure."""
        now = time.monotonic()
        queued = _queue() if suspects else set()
        if queued is None and now - self.answered < self.blind:  # no answer: keep the clocks, decide nothing
            self.since = {name: t for name, t in self.since.items() if name in suspects}
            return []
        if queued is not None:
            self.answered = now
        gone = [name for name, job_id in suspects.items() if queued is None or job_id not in queued]
        self.since = {name: self.since.get(name, now) for name in gone}  # since when each is out of the queue
        return [name for name in gone if now - self.since[name] >= self.grace]


def _slurm(todo, recipe, shared, out, progress, env, options: SlurmOptions) -> None:
    """A job array through submitit; jobs of an earlier command still in the queue are waited for, not resubmitted."""
    import submitit

    folder = out / SLURM_DIR
    ids_file = folder / "jobs.json"
    ids = json.loads(ids_file.read_text()) if ids_file.exists() else {}
    jobs, submit = {}, []
    for job in todo:  # reattach to a job an earlier command submitted, while SLURM still has it
        earlier = submitit.SlurmJob(folder=folder, job_id=ids[job.name]) if job.name in ids else None
        if earlier is not None and earlier.state in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING",
                                                     "RESIZING", "SUSPENDED"):
            jobs[job.name] = earlier
        else:
            submit.append(job)
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(
        timeout_min=options.time_min, cpus_per_task=options.cpus, gpus_per_node=options.gpus, nodes=1,
        tasks_per_node=1, slurm_partition=options.partition, slurm_array_parallelism=options.throttle or len(submit),
        **({"mem_gb": options.mem_gb} if options.mem_gb else {}), slurm_additional_parameters=options.sbatch,
        name="lsmooth")
    if submit:
        try:
            with executor.batch():
                pending = [(job, executor.submit(_RecipeJob(job.command(recipe, shared, out), env))) for job in submit]
        except submitit.core.utils.FailedJobError as e:  # sbatch refused: its own words, e.g. no controller
            raise SweepError(str(e).strip().splitlines()[-1]) from None
        jobs |= {job.name: sj for job, sj in pending}
    atomic_write_json(ids_file, ids | {name: sj.job_id for name, sj in jobs.items()})
    progress.line(0, len(jobs), f"{len(submit)} submitted as a job array, {len(jobs) - len(submit)} already queued "
                                f"(logs: {folder})")
    by_name = {job.name: job for job in todo}
    asked, gone = 0.0, _Gone()
    while jobs:
        time.sleep(2)  # a job's result file shows it ended; sacct, for the jobs that died without one, every 30 s
        if time.monotonic() - asked > 30:  # one sacct for every job (submitit's own backs off to 10 min)
            next(iter(jobs.values())).get_info(mode="force")
            asked = time.monotonic()
        states = {name: sj.state for name, sj in jobs.items()}
        ended = [name for name, state in states.items() if jobs[name].done() or state.split()[0] in _ENDED]
        suspects = {n: jobs[n].job_id for n in ended if not jobs[n].paths.result_pickle.exists()}
        sure = gone.sure(suspects)  # no result file: ended only if SLURM's queue agrees
        ended = [n for n in ended if n not in suspects or n in sure]
        for name in ended:
            sj = jobs.pop(name)
            _settle(by_name[name], f"SLURM state {states[name]}", out, Path(sj.paths.stdout), progress)
            queued = sum(s in ("PENDING", "REQUEUED") for n, s in states.items() if n in jobs)
            how = "failed" if name in progress.failed else "finished"
            progress.line(len(jobs) - queued, queued, f"{name} {how}")


# ---------------------------------------------------------------- the sweep
def run_sweep(jobs: Sequence[Job], recipe: str | os.PathLike, shared: Sequence[str], out: str | os.PathLike, *,
              executor: str = "serial", slots: int | None = None, slurm: SlurmOptions | None = None,
              command: str = "", log: Callable[[str], None] = print) -> dict[str, str]:
    """Run every job of ``jobs`` not finished yet in ``out`` with ``executor``; the failed jobs, each with why.

    ``recipe``: the script every job runs; ``shared``: its arguments common to every job. Every job's
    settings are checked (the recipe's ``--check``) before any job trains. ``slots``: the local
    executor's jobs at a time (default: one per GPU, else 2).
    """
    if executor not in EXECUTORS:
        raise SweepError(f"--executor {executor!r}: use one of {', '.join(EXECUTORS)}")
    if len({j.name for j in jobs}) != len(jobs):
        raise SweepError("two jobs of the grid have the same name")
    recipe, out, shared = Path(recipe), Path(out), list(shared)
    try:
        check_writable(out)
    except OSError as e:
        raise SweepError(f"--out: {e}") from None
    todo = [j for j in jobs if not _finished(out, j)]
    log(f"sweep: {len(jobs)} runs in {out}, {len(jobs) - len(todo)} finished already, {len(todo)} to run")
    if not todo:
        return {}
    if executor == "slurm":
        _check_slurm()
    check_jobs(todo, recipe, shared, out)
    _record(out, recipe, shared, command, executor)
    (out / LOGS_DIR).mkdir(exist_ok=True)
    progress = Progress(len(jobs), len(jobs) - len(todo), log)
    env = dict(os.environ)
    if executor == "serial":
        _serial(todo, recipe, shared, out, progress, env)
    elif executor == "local":
        _local(todo, recipe, shared, out, progress, env, slots or len(_visible_gpus()) or 2)
    else:
        _slurm(todo, recipe, shared, out, progress, {}, slurm or SlurmOptions())
    for name, why in progress.failed.items():
        log(f"failed: {name}: {why}")
    return progress.failed
