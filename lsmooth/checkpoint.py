"""Resume after a kill: a checkpoint after every epoch from which a run goes on as if never stopped.

Two files in the run folder (``learn.path``), each replaced atomically after every epoch and both
removed when the run finishes:

* ``models/model_<epoch>.pth`` (``learn.path/learn.model_dir``): model and optimizer, exactly as
  ``learn.save(f"model_{epoch}", with_opt=True)`` and ``SaveModelCallback(every_epoch=True)`` name
  and write them, so ``learn.load(f"model_{epoch}")`` reads it into a learner of the same
  architecture. The optimizer state is in plain containers: ``torch.load(weights_only=True)`` works.
* ``checkpoint.pth``: what an identical continuation needs besides (every random stream of every
  rank: Python, NumPy, torch, CUDA and each DataLoader's shuffling ``rng``; the smoothed training
  loss that metrics.csv reports; the fp16 loss scale; the metrics rows so far) and the name of the
  model file of the same epoch (``"model_file"``, relative to the run folder).

Order after epoch ``e``: write ``model_<e>.pth``, replace ``checkpoint.pth``, then delete
``model_<e-1>.pth``. A SIGKILL at any instant thus leaves a ``checkpoint.pth`` that names a
complete model file of its own epoch; what it leaves besides (a newer model file, a temporary
file) is deleted by the resume. On the same CPU a resumed run ends with exactly the final metrics
of an uninterrupted one, also with several processes (``tests/test_checkpoint.py``).

Why not fastai's ``SaveModelCallback`` alone: it keeps the model and the optimizer only, and with
a plain ``torch.save``, so a kill mid-write leaves a broken file. The one-cycle position needs
nothing: fastai derives it from the epoch when ``fit_one_cycle(start_epoch=...)`` resumes.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback
from fastcore.foundation import L

from lsmooth import distributed
from lsmooth.data import ImageData
from lsmooth.runs import CHECKPOINT_FILE, atomic_save_torch, rng_state, set_rng_state

__all__ = ["Checkpoint", "Restore", "ResumeError", "check_data", "data_id", "model_name", "plain", "read", "remove",
           "restore", "start_epoch"]

MODEL_DIR = "models"  # fastai's default ``Learner.model_dir``, which lsmooth.train never changes
_MODEL_FILE = re.compile(r"model_\d+\.pth")
_MODEL_TMP = re.compile(r"\.model_\d+\.pth\..*\.tmp")  # lsmooth.runs._atomic's temporary names


def model_name(epoch: int) -> str:
    """What ``learn.load`` takes for epoch ``epoch``'s model file (SaveModelCallback's naming)."""
    return f"model_{epoch}"


class ResumeError(ValueError):
    """A run folder that cannot be resumed; the message says why."""


def plain(v):
    """A NumPy or 0-d tensor scalar as a plain Python number (``torch.load(weights_only=True)``)."""
    return v.item() if isinstance(v, np.generic) or (torch.is_tensor(v) and v.ndim == 0) else v


def data_id(data: ImageData) -> str:
    """Fingerprint of the split and the labels: a resumed run must see the same data."""
    text = "\n".join(f"{p.name}\t{data.labels[p.name]}" for p in data.train) + "\n--\n"
    text += "\n".join(p.name for p in data.valid)
    return hashlib.sha1(text.encode()).hexdigest()


def _loader_rng(dl):
    """The ``random.Random`` a fastai DataLoader shuffles with (the inner one under DDP)."""
    return dl.dl.rng if type(dl).__name__ == "DistributedDL" else dl.rng


def _plain_tensor(v):
    """A fastai ``TensorBase`` (grads of fastai-typed batches) as a ``torch.Tensor``: weights_only loads it."""
    return v.as_subclass(torch.Tensor) if torch.is_tensor(v) and type(v) is not torch.Tensor else v


def _opt_state(opt) -> dict:
    """``opt.state_dict()`` in plain containers (fastai's ``L`` does not load with weights_only)."""
    sd = dict(opt.state_dict())
    if "hypers" in sd:
        sd["hypers"] = [{k: plain(v) for k, v in h.items()} for h in sd["hypers"]]
        sd["state"] = [{k: _plain_tensor(v) for k, v in st.items()} for st in sd["state"]]
    return sd


class Checkpoint(Callback):
    """End of each epoch: model file, then the run state naming it, then the old model file goes.

    Every rank takes part (its random streams are gathered); only rank 0 writes. fastai's
    SaveModelCallback keeps model and optimizer only, non-atomically (module docstring).
    """

    order = 75  # after EpochLog (70): checkpoint epoch e means metrics.csv already has row e

    def __init__(self, data_id: str, start_epoch: int = 0):
        self.data_id, self.start_epoch = data_id, start_epoch

    def after_epoch(self):
        if self.epoch < self.start_epoch:  # skipped by fit(start_epoch=...)
            return
        rng = distributed.gather({"global": rng_state(),
                                  "loaders": [_loader_rng(dl).getstate() for dl in self.dls.loaders]})
        if distributed.rank():
            return
        run_dir, models = Path(self.learn.path), Path(self.learn.path) / self.learn.model_dir
        models.mkdir(parents=True, exist_ok=True)
        model_file = models / f"{model_name(self.epoch)}.pth"
        atomic_save_torch(model_file, {"model": getattr(self.model, "module", self.model).state_dict(),
                                       "opt": _opt_state(self.opt)})  # learn.save's format
        scaler, smooth = getattr(self.learn, "scaler", None), self.recorder.smooth_loss
        atomic_save_torch(run_dir / CHECKPOINT_FILE, {
            "epoch": self.epoch,
            "model_file": str(Path(self.learn.model_dir) / model_file.name),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "smooth_loss": (smooth.count, _plain_tensor(smooth.val)),
            "train_iter": self.train_iter,
            "rows": self.learn.epoch_log.rows,
            "rng": rng,
            "data_id": self.data_id,
        })
        _drop_model_files(models, keep=model_file.name)


def _drop_model_files(models: Path, keep: str | None = None) -> None:
    """Delete the model files in ``models`` but ``keep``, and temporary files a kill left there."""
    if not models.is_dir():
        return
    for p in models.iterdir():
        if (_MODEL_FILE.fullmatch(p.name) and p.name != keep) or _MODEL_TMP.fullmatch(p.name):
            p.unlink(missing_ok=True)


class Restore(Callback):
    """Puts back a checkpoint's random streams and running state when the first resumed epoch starts."""

    def __init__(self, ckpt: dict):
        self.ckpt = ckpt

    def before_train(self):
        ck = self.ckpt
        if self.epoch != ck["epoch"] + 1:
            return
        smooth = self.recorder.smooth_loss
        smooth.count, smooth.val = ck["smooth_loss"]
        self.learn.train_iter = ck["train_iter"]
        if ck["scaler"] is not None and getattr(self.learn, "scaler", None) is not None:
            self.learn.scaler.load_state_dict(ck["scaler"])
        mine = ck["rng"][distributed.rank()]
        set_rng_state(mine["global"])
        for dl, state in zip(self.dls.loaders, mine["loaders"], strict=True):
            _loader_rng(dl).setstate(state)


def read(run_dir: Path, world: int) -> dict:
    """The run state of ``run_dir`` with its model file's ``"model"`` and ``"opt"`` added.

    :class:`ResumeError` if there is no checkpoint, its model file is missing or it needs another
    number of processes. Rank 0 deletes what a kill can leave besides: temporary files, and a model
    file written after the last ``checkpoint.pth``.
    """
    path = run_dir / CHECKPOINT_FILE
    if not path.exists():
        raise ResumeError(f"--resume {str(run_dir)!r}: no {CHECKPOINT_FILE}; the run stopped before its first "
                          f"epoch ended, start it again")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if len(ckpt["rng"]) != world:
        raise ResumeError(f"--resume: the run used {len(ckpt['rng'])} process(es); resume it with the same "
                          f"number (now {world})")
    model_file = run_dir / ckpt["model_file"]
    if not model_file.exists():
        raise ResumeError(f"--resume: {CHECKPOINT_FILE} names {str(model_file)!r}, which is missing; "
                          f"start the run again")
    ckpt |= torch.load(model_file, map_location="cpu", weights_only=True)  # {"model", "opt"}
    if distributed.rank() == 0:
        for stray in run_dir.glob(".*.tmp"):  # left by a kill during an atomic write
            stray.unlink(missing_ok=True)
        _drop_model_files(model_file.parent, keep=model_file.name)
    return ckpt


def check_data(ckpt: dict, data: ImageData) -> None:
    if ckpt["data_id"] != data_id(data):
        raise ResumeError(f"--resume: the data in {str(data.folder)!r} changed since the run started "
                          f"(other files or labels); start a new run")


def start_epoch(ckpt: dict | None) -> int:
    """The first epoch still to train: 0 for a new run."""
    return 0 if ckpt is None else ckpt["epoch"] + 1


def restore(learn, ckpt: dict | None) -> list[Callback]:
    """Load model and optimizer into ``learn`` (before ``fit``); the callback that restores the rest."""
    if ckpt is None:
        return []
    learn.model.to(learn.dls.device)  # first, so the optimizer state lands where the weights live
    learn.model.load_state_dict(ckpt["model"])
    if learn.opt is None:
        learn.create_opt()
    sd = dict(ckpt["opt"])
    if "hypers" in sd:  # fastai Optimizer: it expects an L
        sd["hypers"] = L(sd["hypers"])
    learn.opt.load_state_dict(sd)
    for p, *_ in learn.opt.all_params():  # the checkpoint was loaded on the CPU
        learn.opt.state[p] = {k: v.to(p.device) if torch.is_tensor(v) else v for k, v in learn.opt.state[p].items()}
    return [Restore(ckpt)]


def remove(run_dir: Path, model_dir: str = MODEL_DIR) -> None:
    """The run finished: the run state, then the model files (and their folder if now empty) go."""
    (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
    models = run_dir / model_dir
    _drop_model_files(models)
    try:
        models.rmdir()
    except OSError:  # absent, or holds files of someone else's
        pass
