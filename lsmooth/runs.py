"""Run folders: one folder per run, files written atomically, the environment recorded.

A reader (a sweep, a notebook) never sees a half-written file: every write goes to a temporary
file in the same folder and is moved into place with ``os.replace``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import random
import re
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "ENV_FILE",
    "FINAL_FILE",
    "METRICS_FILE",
    "PREDS_FILE",
    "atomic_save_torch",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_json",
    "atomic_write_text",
    "check_writable",
    "environment",
    "new_run_dir",
    "rng_state",
    "set_rng_state",
]

# The files of a run folder: one name each, shared by the writer (lsmooth.train) and every reader
# (sweeps, summaries, notebooks, tests).
CONFIG_FILE = "config.json"  # every setting of the run, resolved
ENV_FILE = "env.json"  # versions, device, threads, git commit
METRICS_FILE = "metrics.csv"  # one row per finished epoch
FINAL_FILE = "final.json"  # final metrics; its presence means the run finished
PREDS_FILE = "valid_preds.pt"  # {"probs": (N, K) float32, "targets": (N,) int64} on the validation set
# run state after each epoch, naming its model file models/model_<epoch>.pth (learn.load reads that
# one); both replaced after each epoch and removed when the run finishes (lsmooth.checkpoint)
CHECKPOINT_FILE = "checkpoint.pth"


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


def new_run_dir(out: str | os.PathLike, name: str) -> Path:
    """A fresh folder ``out/<YYYYmmdd-HHMMSS>-<name>`` (``-2``, ``-3``, ... when taken)."""
    out = check_writable(out)
    stem = time.strftime("%Y%m%d-%H%M%S") + "-" + re.sub(r"[^A-Za-z0-9._=-]+", "_", name)
    for i in range(1, 1000):
        path = out / (stem if i == 1 else f"{stem}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"too many runs named {stem!r} in {str(out)!r}")


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


def environment(device: torch.device | str | None = None, **extra) -> dict:
    """Versions, device and threads: what a reader needs to compare two runs' numbers."""
    import fastai
    import timm
    import torchvision

    device = torch.device(device) if device is not None else torch.device("cpu")
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "fastai": fastai.__version__,
        "timm": timm.__version__,
        "device": str(device),
        "device_name": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
            or platform.machine()
        ),
        "cuda": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "git_commit": _git_commit(),
    }
    info.update(extra)
    return info


def rng_state() -> dict:
    """Every global random stream a training step draws from: Python, NumPy, torch CPU and CUDA."""
    return {
        "python": random.getstate(),
        "numpy": _plain(np.random.get_state()),  # plain types: loads with torch.load(weights_only=True)
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _plain(state: tuple) -> tuple:
    return tuple(x.tolist() if isinstance(x, np.ndarray) else x for x in state)


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (load the checkpoint with ``map_location="cpu"``)."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
