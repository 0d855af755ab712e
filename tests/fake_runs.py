"""Run folders and result rows faked for the sweep and report tests (no training).

A fake run folder holds what lsmooth.train writes and the summaries read: metrics.csv (2 epochs)
and valid_preds.pt with over-confident predictions on 200 samples of 5 classes.
"""

import os
from pathlib import Path

import torch

from lsmooth.runs import METRICS_FILE, PREDS_FILE, atomic_write_csv
from lsmooth.sweep import run_key

SETTINGS = {"dataset": "fake", "arch": "resnet18", "epochs": 2, "size": 32}


def fake_run_dir(run: Path, eps: float, seed: int, error: float) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(run / METRICS_FILE, ["epoch", "train_loss", "error_rate"], [[0, 1.0, error * 2], [1, 0.5, error]])
    g = torch.Generator().manual_seed(seed * 10 + int(eps * 100))
    targets = torch.randint(0, 5, (200,), generator=g)
    logits = 3 * torch.randn(200, 5, generator=g)
    logits[torch.arange(200), targets] += 2.0
    torch.save({"probs": torch.softmax(logits, 1), "targets": targets}, run / PREDS_FILE)
    return run


def fake_row(tmp: Path, eps: float, seed: int, error: float, noise: float = 0.0, **metrics) -> dict:
    """A results row whose run folder exists under ``tmp/runs``."""
    run = fake_run_dir(tmp / "runs" / f"eps{eps:g}-noise{noise:g}-s{seed}", eps, seed, error)
    row = {"key": run_key(eps, noise, seed), "eps": eps, "noise": noise, "seed": seed, "settings": SETTINGS,
           "error_rate": error, "nll": 0.1, "ece": 0.05, "brier": 0.2, "run_dir": str(run),
           "run_dir_rel": os.path.relpath(run, tmp), "fit_time_s": 1.0}
    return row | metrics
