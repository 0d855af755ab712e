"""Run folders: the names of their files, atomic writes, the machine, the arm a run belongs to, reading it back.

:class:`lsmooth.callbacks.RecordRun` and :class:`lsmooth.resume.ExactResume` write a run folder;
sweeps, summaries, notebooks and tests read it (:func:`read_run`). A reader never sees a
half-written file: every write goes to a temporary file in the same folder and is moved into place
with ``os.replace``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import re
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "ENV_FILE",
    "FINAL_FILE",
    "INCIDENTAL",
    "METRICS_FILE",
    "PREDS_FILE",
    "RUNS_DIR",
    "SWEEP_FILE",
    "atomic_save_torch",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_json",
    "arm_label",
    "atomic_write_text",
    "check_writable",
    "environment",
    "is_baseline",
    "machine_line",
    "read_csv_rows",
    "read_run",
    "slug",
    "usable_cpus",
]

# The files of a run folder: one name each, shared by the writers (lsmooth.callbacks, lsmooth.resume)
# and every reader (sweeps, summaries, notebooks, tests).
CONFIG_FILE = "config.json"  # every setting of the run, resolved, and the data's sizes
ENV_FILE = "env.json"  # versions, device, CPU, threads, load, git commit
METRICS_FILE = "metrics.csv"  # one row per finished epoch
FINAL_FILE = "final.json"  # final metrics and temperature scaling; its presence means the run finished
PREDS_FILE = "valid_preds.pt"  # {"probs": (N, K) float32, "targets": (N,) int64} on the validation set
# run state after each epoch, naming its model file models/resume-fit<f>-epoch<e>.pth (learn.load reads
# that one); both replaced after each epoch and removed when the run finishes (lsmooth.resume)
CHECKPOINT_FILE = "checkpoint.pth"
# A sweep folder (lsmooth.sweep writes it, lsmooth.report reads it): its record, and its run folders.
SWEEP_FILE = "sweep.json"  # the recipe and shared arguments of the sweep, and every command that ran it
RUNS_DIR = "runs"  # one run folder per job

# Settings in config.json that do not change a run's numbers (where it runs, how it prints): a run may
# resume with other values of these, and runs that differ only in these are comparable. (The data's
# folder: ExactResume checks that the data itself is the same.)
INCIDENTAL = frozenset({"out", "name", "data", "threads", "workers", "progress"})


_UMASK = os.umask(0)  # read once, at import: os.umask can only be read by setting it
os.umask(_UMASK)


def _atomic(path: str | os.PathLike, write) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, fsync, then ``os.replace`` it.

    A crash or SIGKILL at any point leaves either the old ``path`` or the new one, never a mix;
    at worst a stray ``.<name>.*.tmp`` file stays behind. The file gets the mode ``open()`` would
    give it (0666 less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # as open() would create it; mkstemp's 0600 hides results from others
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace`` (all or nothing)."""
    return _atomic(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_torch(path: str | os.PathLike, obj) -> Path:
    """``torch.save`` that never leaves a half-written file (streams; no copy in memory)."""
    import torch

    return _atomic(path, lambda f: torch.save(obj, f))


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_csv(path: str | os.PathLike, header: Sequence[str], rows) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def check_writable(out: str | os.PathLike) -> Path:
    """Create ``out`` if needed and prove a file can be written there; ``OSError`` otherwise."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output path {str(out)!r} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise PermissionError(f"cannot write to output folder {str(out)!r}: {e.strerror or e}") from None
    return out


def _git_commit() -> str | None:
    try:
        res = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    return res.stdout.strip() or None


def _cpu_model() -> str | None:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity (what SLURM or taskset gave it), else the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def environment(device=None) -> dict:
    """The machine and software behind a run's numbers (env.json, sweep.json): versions, device, CPU
    model and count, torch threads, load average, git commit. :func:`machine_line` reads it."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def installed(package: str) -> str | None:  # without importing it (fastai takes seconds)
        try:
            return version(package)
        except PackageNotFoundError:
            return None

    device = torch.device(device) if device is not None else torch.device("cpu")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": installed("torchvision"),
        "fastai": installed("fastai"),
        "timm": installed("timm"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cuda": torch.version.cuda,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "git_commit": _git_commit(),
    }


def machine_line(env: dict) -> str:
    """``'AMD EPYC 7B13 (2 CPUs, 1 torch thread, load 0.8), no GPU; torch 2.14.1, fastai 2.8.12'``."""
    gpu = env.get("device_name") if str(env.get("device", "cpu")).startswith("cuda") else "no GPU"
    threads = env.get("torch_threads")
    load = f", load {env['load_avg']:.1f}" if env.get("load_avg") is not None else ""
    return (f"{env.get('cpu') or env.get('platform')} ({env.get('cpu_count')} CPUs, {threads} torch "
            f"thread{'s' * (threads != 1)}{load}), {gpu}; torch {env.get('torch')}, fastai {env.get('fastai')}")


def arm_label(config: dict, noise: bool = True) -> str:
    """``'eps=0'`` (plain cross-entropy), ``'eps=0.1'``, ``'two-stage eps=0.1'``, ``'online α=0.5'``,
    ``'penalty β=0.1'``, with ``' noise=0.4'`` when the labels are noisy (and ``noise``)."""
    kind, eps = config.get("smoothing", "uniform"), float(config.get("eps", 0.0))
    if kind in ("online", "penalty"):
        value = config.get("alpha" if kind == "online" else "beta")
        label = kind + (f" {'α' if kind == 'online' else 'β'}={value:g}" if value is not None else "")
    else:
        label = f"eps={eps:g}" if kind == "uniform" or eps == 0 else f"{kind} eps={eps:g}"
    n = float(config.get("noise", 0.0))
    return label + (f" noise={n:g}" if noise and n else "")


def slug(label: str) -> str:
    """``label`` (an arm's) as a folder name, ASCII without spaces: ``'online α=0.5 noise=0.4'`` ->
    ``'online-alpha0.5-noise0.4'``."""
    plain = label.replace("α", "alpha").replace("β", "beta").replace("=", "")
    return re.sub(r"[^\w.-]+", "-", plain, flags=re.ASCII)


def is_baseline(config: dict) -> bool:
    """Whether a run's config is plain cross-entropy: the arm every other is compared with."""
    return config.get("smoothing", "uniform") not in ("online", "penalty") and float(config.get("eps", 0.0)) == 0


def read_csv_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of a CSV file with a header, as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_run(run_dir: str | os.PathLike) -> dict | None:
    """A finished run's record: ``{"run_dir", "config", "final", "env"}`` from its folder; None if it has
    not finished (no final.json). What every summary reads."""
    run_dir = Path(run_dir)
    if not (run_dir / FINAL_FILE).exists():
        return None
    read = lambda name: json.loads((run_dir / name).read_text()) if (run_dir / name).exists() else {}  # noqa: E731
    return {"run_dir": str(run_dir), "config": read(CONFIG_FILE), "final": read(FINAL_FILE), "env": read(ENV_FILE)}
