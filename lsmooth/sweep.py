"""Sweeps of paired runs: the grid, shards, a resumable results file, and the sweep folder.

A sweep is a grid of *arms* (a smoothing ``eps`` and a training-label ``noise`` rate) times
*seeds*. Every arm of a seed trains on the same split, so arms are compared seed by seed
(:mod:`lsmooth.report` summarises them).

A sweep folder holds ``sweep.json`` (the settings shared by every run, and the commands that ran
there: a rerun with other settings is refused), ``runs/`` (one run folder per run) and the results
file: JSON Lines, one finished run per line, appended with a single ``write`` and ``fsync`` as soon
as the run ends. A sweep killed at any moment therefore loses at most the run in progress; rerunning
it skips every (eps, noise, seed) already in the folder. ``shard(grid, i, n)`` splits a grid across
machines (each writes its own ``results-shard<i>of<n>.jsonl``) and :func:`merge` summarises the
folders they wrote. :func:`run_sweep` does all of it for a training :class:`~lsmooth.train.Config`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lsmooth.metrics import temperature_scaling
from lsmooth.report import arm_label, load_preds, write_summary
from lsmooth.runs import atomic_write_json, atomic_write_text, check_writable, environment

__all__ = [
    "RESULTS_GLOB",
    "RUNS_DIR",
    "SWEEP_FILE",
    "Job",
    "SweepError",
    "append_result",
    "check_sweep_folder",
    "grid",
    "load_results",
    "merge",
    "parse_shard",
    "read_results",
    "results_file",
    "run_jobs",
    "run_key",
    "run_sweep",
    "shard",
]

# The files of a sweep folder (run folders inside use the names in lsmooth.runs; summaries the
# names in lsmooth.report).
SWEEP_FILE = "sweep.json"  # {"settings": shared settings, "commands": [{"command", "environment"}, ...]}
RESULTS_GLOB = "results*.jsonl"  # results.jsonl, or results-shard<i>of<n>.jsonl per shard
RUNS_DIR = "runs"  # one run folder per (eps, noise, seed)
# Config fields that vary within a sweep or do not change its numbers; every other field of the
# resolved Config must be equal across a sweep folder (checked against sweep.json).
PER_RUN = frozenset({"eps", "noise", "seed", "name", "out", "workers", "threads", "progress"})


class SweepError(ValueError):
    """A sweep that cannot run as asked; the message (one line) says what is wrong."""


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


def results_file(out: str | os.PathLike, shard_of: tuple[int, int] | None = None) -> Path:
    """``out/results.jsonl``, or ``out/results-shard<i>of<n>.jsonl`` for shard i of n."""
    return Path(out) / ("results.jsonl" if shard_of is None else f"results-shard{shard_of[0]}of{shard_of[1]}.jsonl")


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


def _first_difference(a: dict, b: dict) -> str | None:
    return next((k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)), None)


def load_results(*paths: str | os.PathLike) -> list[dict]:
    """Rows from results files and/or sweep folders (every ``results*.jsonl`` in them), merged.

    Each (eps, noise, seed) is kept once (the first seen). Rows must come from the same settings
    apart from eps, noise and seed; otherwise a ValueError names the first difference. A row's
    ``run_dir`` that does not exist is looked up relative to its results file's folder, so sweep
    folders copied from other machines still find their run folders.
    """
    rows, seen = [], set()
    for file in _results_files(paths):
        for row in read_results(file):
            rel = file.parent / row.get("run_dir_rel", "")
            if row.get("run_dir") and not Path(row["run_dir"]).exists() and row.get("run_dir_rel") and rel.exists():
                row["run_dir"] = str(rel)
            if row["key"] not in seen:
                seen.add(row["key"])
                rows.append(row)
    for row in rows[1:]:
        k = _first_difference(rows[0]["settings"], row["settings"])
        if k is not None:
            raise ValueError(
                f"results mix different settings: {k}={rows[0]['settings'].get(k)!r} ({rows[0]['key']}) vs "
                f"{k}={row['settings'].get(k)!r} ({row['key']}); summarise them separately"
            )
    return sorted(rows, key=lambda r: (r["noise"], r["eps"], r["seed"]))


def _done_keys(paths: Iterable[str | os.PathLike]) -> set[str]:
    return {r["key"] for f in _results_files(paths) for r in read_results(f)}


def run_jobs(
    jobs: Sequence[Job],
    train_one: Callable[[Job], dict],
    results: str | os.PathLike,
    settings: dict,
    done_from: Sequence[str | os.PathLike] = (),
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Train every job not yet in ``results`` (or in the files of ``done_from``); return new rows.

    ``train_one(job)`` trains and returns the run's final metrics (with ``run_dir``). Each row is
    written with :func:`append_result` the moment its run ends, together with ``settings``
    (everything shared by the grid) and temperature scaling of the run's validation predictions.
    """
    results = Path(results)
    done = _done_keys([*done_from, *([results] if results.exists() else [])])
    todo = [j for j in jobs if j.key not in done]
    log(f"sweep: {len(jobs)} runs in this grid, {len(jobs) - len(todo)} already done, {len(todo)} to run")
    new = []
    for k, job in enumerate(todo, 1):
        log(f"--- run {k}/{len(todo)}: {job.arm} seed={job.seed}")
        final = train_one(job)
        run_dir = Path(final["run_dir"])
        row = {"key": job.key, "eps": job.eps, "noise": job.noise, "seed": job.seed, "settings": settings,
               **final, "run_dir_rel": os.path.relpath(run_dir, results.parent)}
        preds = load_preds(run_dir)
        if preds is not None:
            row |= temperature_scaling(*preds)
        append_result(results, row)
        new.append(row)
    return new


# ---------------------------------------------------------------- the sweep folder
def check_sweep_folder(out: str | os.PathLike, settings: dict, command: str | None = None,
                       threads: int | None = None) -> None:
    """Record ``settings`` in ``out/sweep.json``, or refuse a folder whose sweep.json holds other
    settings (SweepError naming the first difference). A ``command`` is recorded with this machine
    and the runs' torch ``threads``."""
    f = Path(out) / SWEEP_FILE
    record = json.loads(f.read_text()) if f.exists() else {"settings": settings, "commands": []}
    k = _first_difference(record["settings"], settings)
    if k is not None:
        raise SweepError(f"{out} holds a sweep with {k}={record['settings'].get(k)!r}, not {settings.get(k)!r}; "
                         f"use another --out (or the same settings to resume)")
    if command is not None:
        record["commands"].append({"command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                                   "environment": _machine(threads)})
    atomic_write_json(f, record)


def _machine(threads: int | None) -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in _read_lines("/proc/cpuinfo")
                if line.startswith("model name")), None)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return environment(device, cpu=cpu, load_avg=load, torch_threads=threads or torch.get_num_threads())


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def merge(sources: Sequence[str | os.PathLike], out: str | os.PathLike, command: str | None = None,
          baseline_eps: float = 0.0) -> dict:
    """Summarise the runs of sweep folders / results files into ``out`` (see report.write_summary).

    The summary records ``command`` and the sweep.json of every source folder (settings, the
    commands that ran there, their machines). SweepError when there are no runs or they mix settings.
    """
    try:
        rows = load_results(*sources)
    except ValueError as e:
        raise SweepError(str(e)) from None
    if not rows:
        raise SweepError(f"no finished runs in {', '.join(map(str, sources))}")
    sweeps = [json.loads((Path(s) / SWEEP_FILE).read_text()) for s in sources if (Path(s) / SWEEP_FILE).is_file()]
    return write_summary(rows, out, baseline_eps, provenance={"command": command, "sweeps": sweeps})


def run_sweep(base, eps: Sequence[float], noise: Sequence[float], seeds: Sequence[int], out: str | os.PathLike,
              shard_of: tuple[int, int] | None = None, command: str | None = None,
              log: Callable[[str], None] = print) -> dict:
    """Train the grid eps × noise × seeds (or its shard ``(i, n)``) of ``base`` into ``out``; summarise.

    ``base`` is a :class:`lsmooth.train.Config`; each run gets its eps, noise and seed, and a run
    folder under ``out/runs``. Every arm's Config is resolved before anything trains (a bad value
    raises ConfigError), and ``out`` must be writable and hold no sweep with other settings
    (SweepError). Runs already in ``out`` are skipped, so rerunning resumes. Returns what
    :func:`merge` returns for ``out``.
    """
    from lsmooth.train import resolve, train

    out = Path(out)
    jobs = grid(eps, noise, seeds)
    jobs = shard(jobs, *shard_of) if shard_of else jobs
    base = dataclasses.replace(base, out=str(out / RUNS_DIR), progress=False)
    resolved = [resolve(dataclasses.replace(base, eps=e, noise=n)) for n in dict.fromkeys(noise)
                for e in dict.fromkeys(eps)]
    try:
        check_writable(out)
    except OSError as e:
        raise SweepError(f"--out: {e}") from None
    if jobs:
        shared = {k: v for k, v in dataclasses.asdict(resolved[0]).items() if k not in PER_RUN}
        settings = json.loads(json.dumps(shared, default=str))  # as sweep.json and the results file hold them
        trains = any(j.key not in _done_keys([out]) for j in jobs)  # a rerun with nothing to do is not recorded
        check_sweep_folder(out, settings, command if trains else None, resolved[0].threads)
        configs = {j.key: dataclasses.replace(base, eps=j.eps, noise=j.noise, seed=j.seed,
                                              name=f"eps{j.eps:g}-noise{j.noise:g}-s{j.seed}") for j in jobs}
        run_jobs(jobs, lambda j: train(configs[j.key]), results_file(out, shard_of), settings, [out], log)
    return merge([out], out, command)
