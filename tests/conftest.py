"""Shared helpers and fixtures: generated data, a small fastai lesson in-process, the recipes as commands.

In-process tests build their learner with :func:`tiny_learner` (lesson 1's pieces on the generated
``tiny`` dataset, a few seconds per fit); the recipes are tested as users run them, as commands
(:func:`recipe`), which costs a fastai import (seconds) per process.
"""

import csv
import io
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lsmooth.data import make_tiny
from lsmooth.runs import FINAL_FILE, METRICS_FILE

ROOT = Path(__file__).resolve().parents[1]
PETS_RE = r"^(.+)_\d+\.\w+$"


# ---------------------------------------------------------------- data
@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The generated ``tiny`` dataset's images folder (37 breeds x 6 JPEGs)."""
    return make_tiny(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def messy_dir(tmp_path_factory) -> Path:
    """A Pets-like folder with the kinds of broken files Pets has, next to good ones.

    Per class (3 classes x 8 files): RGB JPEGs, one grayscale, one RGBA PNG, one palette PNG with
    transparency and one GIF saved as .jpg; one corrupt JPEG in total; two files that are no images.
    """
    folder = tmp_path_factory.mktemp("messy") / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k, label in enumerate(["Abyssinian", "beagle", "chihuahua"]):
        base = np.full((24, 24, 3), 60 + 80 * k, np.uint8)
        for n in range(1, 5):
            Image.fromarray(np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)).save(
                folder / f"{label}_{n}.jpg")
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
    return folder


# ---------------------------------------------------------------- lesson 1, in-process
def tiny_dls(folder: Path, noise: float = 0.0, seed: int = 0, bs: int = 32, size: int = 16):
    """Lesson 1's DataBlock on ``folder`` with lsmooth's data pieces, small images."""
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script", category=FutureWarning)
    from fastai.vision.all import (
        CategoryBlock,
        DataBlock,
        ImageBlock,
        RandomSplitter,
        RegexLabeller,
        Resize,
        aug_transforms,
        get_image_files,
        set_seed,
        using_attr,
    )

    from lsmooth.data import LabelNoise, SkipUnreadable

    set_seed(seed, reproducible=True)
    label = using_attr(RegexLabeller(PETS_RE), "name")
    block = DataBlock(blocks=(ImageBlock, CategoryBlock), get_y=LabelNoise(label, noise, "symmetric", seed),
                      splitter=SkipUnreadable(RandomSplitter(0.2, seed=42)), item_tfms=Resize(size),
                      batch_tfms=aug_transforms(size=size))
    return block.dataloaders(get_image_files(folder).sorted(), bs=bs, num_workers=0)


def tiny_learner(folder: Path, path: Path, loss_func=None, cbs=(), noise: float = 0.0, seed: int = 0):
    """A ResNet18 from scratch on ``folder`` (16 px), writing into ``path``, without progress bars."""
    import torch
    from fastai.vision.all import ProgressCallback, accuracy, error_rate, noop, resnet18, set_seed, vision_learner

    from lsmooth import ECE, NLL, Brier

    torch.set_num_threads(1)
    dls = tiny_dls(folder, noise, seed)
    set_seed(seed, reproducible=True)
    learn = vision_learner(dls, resnet18, pretrained=False, loss_func=loss_func, path=path, cbs=list(cbs),
                           metrics=[error_rate, accuracy, NLL(), ECE(), Brier()])
    learn.remove_cb(ProgressCallback)
    learn.logger = noop
    return learn


# ---------------------------------------------------------------- run folders
def epochs_table(run_dir: Path) -> list[dict]:
    """metrics.csv without the wall-clock column."""
    rows = list(csv.DictReader(io.StringIO((Path(run_dir) / METRICS_FILE).read_text())))
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


def final_metrics(run_dir: Path) -> dict:
    final = json.loads((Path(run_dir) / FINAL_FILE).read_text())
    return {k: final[k] for k in ("error_rate", "accuracy", "nll", "ece", "brier", "ece_ts", "temperature")}


# ---------------------------------------------------------------- the recipes as commands
def recipe_env(**extra) -> dict:
    """Environment for a recipe subprocess: lsmooth from this checkout, warnings as users see them."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), **{k: str(v) for k, v in extra.items()})
    env.pop("PYTHONWARNINGS", None)
    return env


def recipe(name: str, *argv) -> list[str]:
    """The command line ``python recipes/<name> ARGV``."""
    return [sys.executable, str(ROOT / "recipes" / name), *map(str, argv)]


def run_recipe(name: str, *argv, cwd: Path, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    return subprocess.run(recipe(name, *argv), capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=recipe_env(**env))


def tiny_argv(tiny_dir: Path, out: Path, *extra) -> list:
    """A 3-epoch pets.py run on ``tiny`` with label noise (the resume tests' reference)."""
    return ["--dataset", "tiny", "--data", tiny_dir, "--out", out, "--epochs", 3, "--noise", 0.2, "--size", 16,
            "--seed", 0, "--no-progress", *extra]


def wait_for(root: Path, pattern: str, proc: subprocess.Popen, timeout: float = 180) -> Path:
    """The first file under ``root`` matching ``pattern``, once ``proc`` has written it."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        hits = list(root.glob(pattern))
        if hits:
            return hits[0]
        if proc.poll() is not None:
            raise AssertionError(f"the process ended before writing {pattern}: {proc.communicate()}")
        time.sleep(0.02)
    raise TimeoutError(f"{root}/{pattern}")


def one_line(err: str) -> str:
    """The only line of ``err``; fails on a traceback or several lines."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------- a sweep folder, for reports and notebooks
ARMS = [dict(smoothing="uniform", eps=0.0), dict(smoothing="uniform", eps=0.1), dict(smoothing="two-stage", eps=0.1),
        dict(smoothing="online", eps=0.0), dict(smoothing="penalty", eps=0.0)]


@pytest.fixture(scope="session")
def tiny_sweep(tiny_dir, tmp_path_factory) -> Path:
    """A sweep folder as compare.py leaves it, trained in-process on ``tiny`` (1 epoch): 5 kinds of arm at noise
    0 and 0.4, 2 seeds, each run recorded by RecordRun with a config like pets.py's, then summarised."""
    from fastai.vision.all import CrossEntropyLossFlat

    from lsmooth import ConfidencePenaltyCrossEntropy, LabelSmoothingCrossEntropy
    from lsmooth.callbacks import OnlineLabelSmoothing, RecordRun, SmoothingSchedule, two_stage
    from lsmooth.report import write_summary
    from lsmooth.runs import arm_label
    from lsmooth.sweep import Job

    out = tmp_path_factory.mktemp("sweep")
    settings = dict(dataset="tiny", arch="resnet18", pretrained=False, epochs=1, size=16, lr=1e-2, alpha=0.5, beta=0.1)
    for noise in (0.0, 0.4):
        for arm in ARMS:
            config = settings | arm | {"noise": noise}
            kind, eps = arm["smoothing"], arm["eps"]
            loss = (ConfidencePenaltyCrossEntropy(0.1) if kind == "penalty" else
                    LabelSmoothingCrossEntropy(eps) if eps else CrossEntropyLossFlat())
            extra = ([OnlineLabelSmoothing(0.5)] if kind == "online" else
                     [SmoothingSchedule(two_stage(eps))] if kind == "two-stage" else [])
            for seed in (0, 1):
                job = Job.of(arm_label(config), seed, [])
                learn = tiny_learner(tiny_dir, out / "runs" / job.name, loss, [RecordRun(config | {"seed": seed}),
                                                                               *extra], noise, seed)
                learn.fit_one_cycle(1, 1e-2)
    write_summary(out, "python recipes/compare.py --dataset tiny (in-process stand-in)")
    return out
