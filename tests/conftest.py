"""Shared helpers and fixtures: small image folders written once per session, tiny-run settings."""

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lsmooth.data import make_tiny
from lsmooth.runs import FINAL_FILE, METRICS_FILE

ROOT = Path(__file__).resolve().parents[1]


# A few seconds per run on one CPU thread: what every end-to-end test trains.
TINY = dict(dataset="tiny", epochs=1, size=16, bs=32, seed=0, threads=1, progress=False)


def tiny_config(data: Path, out: Path, **kw):
    """A Config for a run on the ``tiny`` folder ``data`` writing into ``out``."""
    from lsmooth.train import Config  # imports fastai: only for the tests that train

    return Config(**(TINY | {"data": str(data), "out": str(out)} | kw))


def tiny_argv(tiny_dir: Path, out: Path) -> list[str]:
    """The command line of the 3-epoch run that the resume tests compare with (same as their reference)."""
    return ["--dataset", "tiny", "--data", tiny_dir, "--out", out, "--epochs", 3, "--noise", 0.2, "--size", 16,
            "--bs", 32, "--seed", 0, "--threads", 1, "--no-progress"]


def epochs_table(run_dir: Path) -> list[dict]:
    """metrics.csv without the wall-clock column."""
    rows = list(csv.DictReader(io.StringIO((Path(run_dir) / METRICS_FILE).read_text())))
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


def final_metrics(run_dir: Path) -> dict:
    final = json.loads((Path(run_dir) / FINAL_FILE).read_text())
    return {k: final[k] for k in ("error_rate", "accuracy", "nll", "ece", "brier")}


def wait_for(root: Path, pattern: str, proc: subprocess.Popen, timeout: float = 180) -> Path:
    """The first file under ``root`` matching ``pattern``, once ``proc`` has written it."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        hits = list(root.glob(pattern))
        if hits:
            return hits[0]
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before writing a checkpoint: {proc.communicate()}")
        time.sleep(0.02)
    raise TimeoutError(f"{root}/{pattern}")


def one_line(err: str) -> str:
    """The only line of ``err``; fails on a traceback or several lines."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def recipe(*argv) -> list[str]:
    """The command line ``python recipes/pets.py ARGV`` (run it with :func:`recipe_env`)."""
    return [sys.executable, str(ROOT / "recipes" / "pets.py"), *map(str, argv)]


def recipe_env(**extra) -> dict:
    """Environment for a recipe subprocess: imports lsmooth from this checkout, warnings as users see them."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), **extra)
    env.pop("PYTHONWARNINGS", None)
    return env


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The generated ``tiny`` dataset (37 breeds x 6 JPEGs) in a session temp folder."""
    return make_tiny(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def messy_dir(tmp_path_factory) -> Path:
    """Pets-like folder with the kinds of broken files Pets has, next to good ones.

    Per class (3 classes x 8 files): RGB JPEGs, plus one grayscale, one RGBA PNG, one palette PNG
    with transparency and one GIF saved as .jpg; one corrupt JPEG in total; two non-image names.
    """
    folder = tmp_path_factory.mktemp("messy") / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k, label in enumerate(["Abyssinian", "beagle", "chihuahua"]):
        base = np.full((24, 24, 3), 60 + 80 * k, np.uint8)
        for n in range(1, 5):
            arr = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(folder / f"{label}_{n}.jpg")
        img = Image.fromarray(base)
        img.convert("L").save(folder / f"{label}_5.jpg")
        img.convert("RGBA").save(folder / f"{label}_6.png")
        pal = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
        pal.info["transparency"] = 0
        pal.save(folder / f"{label}_7.png", transparency=0)
        img.convert("P").save(folder / f"{label}_8.jpg", format="GIF")  # GIF named .jpg
    good = (folder / "beagle_1.jpg").read_bytes()
    (folder / "beagle_116.jpg").write_bytes(good[: len(good) // 3])  # truncated: corrupt JPEG
    (folder / "Abyssinian_100.mat").write_bytes(b"not an image")
    (folder / "README").write_text("not an image\n")
    return folder.parent
