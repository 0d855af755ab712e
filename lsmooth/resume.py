"""Exact resume: a checkpoint after every epoch, from which a killed fit goes on as if never stopped.

Add :class:`ExactResume` to a ``Learner``'s ``cbs`` and start the same fit again in the same folder
(``learn.path``) after Ctrl-C, preemption or SIGKILL: the fit skips the finished epochs and goes on.
On the same CPU its final metrics equal those of a fit that was never interrupted, with several
processes too (``tests/test_resume.py``).

Two files in ``learn.path``, each replaced atomically after every epoch and both removed when the
fit ends:

* ``models/resume-fit<f>-epoch<e>.pth``: model and optimizer, in the format of ``learn.save(name,
  with_opt=True)``, so ``learn.load(model_name(f, e))`` reads it (``f`` counts the fits of the
  folder: ``fine_tune`` makes two). Loads with ``torch.load(weights_only=True)``. The name leaves
  ``SaveModelCallback``'s ``model_<e>.pth`` files alone.
* ``checkpoint.pth``: the rest an identical continuation needs (every random stream of every
  process: Python, NumPy, torch, CUDA, each DataLoader's shuffling ``rng``; the smoothed training
  loss; the fp16 loss scale; the loss function's ``state_dict``, e.g. online label smoothing's
  statistics) and the name of that epoch's model file.

After epoch ``e`` (all but the last, whose checkpoint the end of the fit would delete at once): write
its model file, replace ``checkpoint.pth``, delete the model file before it.
A SIGKILL at any instant leaves a ``checkpoint.pth`` naming a complete model file of its epoch; the
resume deletes whatever else a kill left. The state is copied when the epoch ends (milliseconds) and
written, fsync'ed and renamed by a thread while the next epoch trains (a checkpoint of a ResNet18 and
its Adam state, 135 MB, takes 0.25-0.35 s on the test machine: 5% of a digits epoch, more of a GPU's);
the next checkpoint, the end of the fit and the interpreter's exit wait for it. The checkpoint is the
last thing written for an epoch (``order`` 90), so whatever other callbacks record for it
(``RecordRun``'s metrics.csv) is already on disk. The one-cycle position needs nothing: fastai
derives it from the epoch. Several fits in one folder (``fine_tune``): started again after a kill in
the second, the first is skipped whole and the second resumes.

Why not fastai's ``SaveModelCallback``: it keeps model and optimizer only, with a plain
``torch.save`` (a kill mid-write leaves a broken file), and does not resume.
"""

from __future__ import annotations

import hashlib
import random
import re
import threading

try:
    import fcntl
except ImportError:  # not POSIX: no lock
    fcntl = None
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback, CancelTrainException, CancelValidException
from fastai.torch_core import num_distrib, rank_distrib
from fastcore.foundation import L

from lsmooth.runs import CHECKPOINT_FILE, atomic_save_torch

__all__ = ["ExactResume", "ResumeError", "finish_writes", "model_name"]

_MODEL_FILE = re.compile(r"resume-fit\d+-epoch\d+\.pth")
_LOCK_FILE = ".fit.lock"
_TMP = re.compile(r"\..*\.tmp")  # lsmooth.runs' temporary names


_WRITERS: list[threading.Thread] = []  # checkpoints being written in this process


def finish_writes() -> None:
    """Wait until every checkpoint this process is writing is on disk. A fit does this before it reads one
    (e.g. in a notebook, the same cell again right after Ctrl-C); call it before reading the files yourself."""
    while _WRITERS:
        _WRITERS.pop().join()


class ResumeError(ValueError):
    """A checkpoint that cannot be resumed here; the message (one line) says why."""


def model_name(fit: int, epoch: int) -> str:
    """What ``learn.load`` takes for the model file of epoch ``epoch`` of the folder's fit ``fit`` (from 0)."""
    return f"resume-fit{fit}-epoch{epoch}"


def _plain(v):
    return v.item() if isinstance(v, np.generic) or (torch.is_tensor(v) and v.ndim == 0) else v


def _tensor(v):
    """fastai's TensorBase (optimizer state of fastai-typed batches) as a plain Tensor: weights_only loads it."""
    return v.as_subclass(torch.Tensor) if torch.is_tensor(v) and type(v) is not torch.Tensor else v


def _fingerprint(dls) -> str:
    """The items of the training and validation sets and the vocabulary: a resumed fit must see the same data."""
    def names(ds):
        items = getattr(ds, "items", None)
        return [Path(o).name if isinstance(o, Path) else str(o) for o in items] if items is not None else [len(ds)]
    text = repr((names(dls.train_ds), names(dls.valid_ds), list(map(str, getattr(dls, "vocab", [])))))
    return hashlib.sha1(text.encode()).hexdigest()


def _loader_rng(dl):
    """The ``random.Random`` a fastai DataLoader shuffles with (the inner one under DDP)."""
    return dl.dl.rng if type(dl).__name__ == "DistributedDL" else dl.rng


def _rng_state(dls) -> dict:
    return {"python": random.getstate(), "numpy": tuple(x.tolist() if isinstance(x, np.ndarray) else x
                                                           for x in np.random.get_state()),
            "torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "loaders": [_loader_rng(dl).getstate() for dl in dls.loaders]}


def _set_rng_state(state: dict, dls) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for dl, s in zip(dls.loaders, state["loaders"], strict=True):
        _loader_rng(dl).setstate(s)


def _cpu_copy(obj):
    """``obj`` with every tensor copied to the CPU (a snapshot the next training step cannot change)."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj


def _gather(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]``; ``[obj]`` in a single process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def _drop_files(folder: Path, keep: str | None = None) -> None:
    """Delete the model files in ``folder`` but ``keep``, and temporary files a kill left there."""
    if folder.is_dir():
        for p in folder.iterdir():
            if (_MODEL_FILE.fullmatch(p.name) and p.name != keep) or _TMP.fullmatch(p.name):
                p.unlink(missing_ok=True)


class ExactResume(Callback):
    """A checkpoint in ``learn.path`` after every epoch (module docstring); a fit that finds one there
    loads it and skips the epochs it holds (their training and validation are cancelled), or the
    whole fit if the checkpoint is of a later fit of the folder. :class:`ResumeError` if it was
    written by another number of processes, for another number of epochs, on other data or by an
    earlier fit. Removed when the fit ends. Only a fit that trains reads or removes it:
    ``learn.lr_find()``, ``get_preds()`` and ``validate()``, which fire ``before_fit``/``after_fit``
    too, do not."""

    order = 90  # the last callback of each epoch: a checkpoint means the epoch is complete

    def __init__(self):
        self.fits = 0  # fits of this learner that ended: the index of the next one

    def before_fit(self):
        self.active, self.ckpt, self.start, self.later = False, None, 0, False  # also for get_preds, validate
        if hasattr(self.learn, "lr_finder"):  # fastai's own test: lr_find is not the run
            self.run = False

    def before_train(self):
        if not self.active:  # the fit's first training phase: only a fit that trains reads or writes
            self.active = True
            self._lock()
            self._load(self._read())
        if self.epoch < self.start:
            raise CancelTrainException  # finished before the kill: skipped, with its validation
        if self.ckpt is not None and self.epoch == self.start:
            self._restore_streams()

    def before_validate(self):
        if self.active and self.epoch < self.start:
            raise CancelValidException

    def _load(self, ck: dict | None) -> None:
        """Model, optimizer and loss state of the checkpoint ``ck`` into the learner; the epochs to skip."""
        self.ckpt = ck
        if ck is None:  # a fresh fit, or one to skip whole (``_read`` set ``start`` then)
            return
        getattr(self.learn.model, "module", self.learn.model).load_state_dict(ck["model"])
        sd = dict(ck["opt"])
        if "hypers" in sd:  # fastai's Optimizer expects an L
            sd["hypers"] = L(sd["hypers"])
        self.learn.opt.load_state_dict(sd)
        for p, *_ in self.learn.opt.all_params():  # the checkpoint was read on the CPU
            self.learn.opt.state[p] = {k: v.to(p.device) if torch.is_tensor(v) else v
                                       for k, v in self.learn.opt.state[p].items()}
        if ck["loss"] is not None:
            self.learn.loss_func.load_state_dict(ck["loss"])
        self.start = ck["epoch"] + 1
        if rank_distrib() == 0:
            print(f"resuming {self.learn.path} after epoch {self.start} of {self.n_epoch}", flush=True)

    def _restore_streams(self) -> None:
        """Random streams and running state, right before the first epoch that trains again."""
        ck = self.ckpt
        self.recorder.smooth_loss.count, self.recorder.smooth_loss.val = ck["smooth_loss"]
        self.learn.train_iter = ck["train_iter"]
        if ck["scaler"] is not None and getattr(self.learn, "scaler", None) is not None:
            self.learn.scaler.load_state_dict(ck["scaler"])
        _set_rng_state(ck["rng"][rank_distrib()], self.dls)
        self.ckpt = None  # not needed any more: free the model copy

    def after_epoch(self):
        if not self.active or self.epoch < self.start:  # not a fit, or skipped: its checkpoint is there already
            return
        if self.epoch == self.n_epoch - 1:  # the fit ends now and would delete it: a kill from here redoes one epoch
            return
        rng = _gather(_rng_state(self.dls))
        if rank_distrib():
            return
        opt = dict(self.learn.opt.state_dict())
        if "hypers" in opt:  # plain containers: torch.load(weights_only=True) reads them
            opt["hypers"] = [{k: _plain(v) for k, v in h.items()} for h in opt["hypers"]]
            opt["state"] = [{k: _tensor(v) for k, v in st.items()} for st in opt["state"]]
        model = {"model": getattr(self.learn.model, "module", self.learn.model).state_dict(), "opt": opt}
        scaler, smooth, loss = getattr(self.learn, "scaler", None), self.recorder.smooth_loss, self.learn.loss_func
        state = {
            "fit": self.fits, "epoch": self.epoch, "n_epoch": self.n_epoch, "processes": len(rng),
            "data": _fingerprint(self.dls),
            "model_file": str(Path(self.learn.model_dir) / f"{model_name(self.fits, self.epoch)}.pth"),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "smooth_loss": (smooth.count, _tensor(smooth.val)), "train_iter": self.train_iter,
            "loss": loss.state_dict() if isinstance(loss, torch.nn.Module) and loss.state_dict() else None,
            "rng": rng,
        }  # fmt: skip
        self._wait()  # the previous epoch's files first: they are replaced in order
        model, state = _cpu_copy(model), _cpu_copy(state)  # this epoch's, before the next step changes them
        self.writer = threading.Thread(target=self._write, args=(model, state), name="lsmooth-checkpoint")
        self.writer.start()
        _WRITERS.append(self.writer)

    def _write(self, model: dict, state: dict) -> None:
        """In a thread, while the next epoch trains: model file, run state naming it, then the old model file
        goes (module docstring). An error is kept for the training thread (``_wait``)."""
        try:
            folder = Path(self.learn.path)
            model_file = folder / state["model_file"]
            model_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_save_torch(model_file, model)  # learn.save's format
            atomic_save_torch(folder / CHECKPOINT_FILE, state)
            _drop_files(model_file.parent, keep=model_file.name)
        except BaseException as e:  # noqa: BLE001 - re-raised in the training thread
            self.write_error = e

    def _wait(self) -> None:
        """Until the checkpoint being written is on disk; its error, if it failed."""
        writer, self.writer = getattr(self, "writer", None), None
        if writer is not None:
            writer.join()
        error, self.write_error = getattr(self, "write_error", None), None
        if error is not None:
            raise error

    def after_fit(self):
        if not self.active:
            return
        self.active, self.fits = False, self.fits + 1
        self._wait()
        if rank_distrib() == 0 and not self.later:  # the fit ended: the checkpoint has served
            folder = Path(self.learn.path)
            (folder / CHECKPOINT_FILE).unlink(missing_ok=True)
            models = folder / self.learn.model_dir
            _drop_files(models)
            if models.is_dir() and not any(models.iterdir()):
                models.rmdir()
            if self.lockfile is not None:
                (folder / _LOCK_FILE).unlink(missing_ok=True)
                self.lockfile.close()

    def _lock(self) -> None:
        """Hold ``learn.path``'s lock for the fit (rank 0): two processes fitting in one folder would mix their
        checkpoints (e.g. a sweep job started again while the first still runs). A POSIX record lock: it
        belongs to the process, so a fit started again in the same process (a notebook after Ctrl-C) takes
        it, and the OS drops it when the process dies."""
        self.lockfile = None
        if rank_distrib() or fcntl is None:
            return
        folder = Path(self.learn.path)
        folder.mkdir(parents=True, exist_ok=True)
        self.lockfile = open(folder / _LOCK_FILE, "w")  # noqa: SIM115 - held until after_fit
        try:
            fcntl.lockf(self.lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.lockfile.close()
            raise ResumeError(f"another process is fitting in {folder}; wait for it or use another folder") from None

    def _read(self) -> dict | None:
        """The checkpoint of ``learn.path`` with its model file's ``model`` and ``opt``; None if there is none."""
        finish_writes()  # a checkpoint an interrupted fit of this process was still writing
        folder = Path(self.learn.path)
        path = folder / CHECKPOINT_FILE
        if not path.exists():
            return None
        ck = torch.load(path, map_location="cpu", weights_only=True)
        if ck["fit"] > self.fits:  # this fit ended before the kill; a later one wrote the checkpoint
            self.later, self.start = True, self.n_epoch
            return None
        if ck["fit"] < self.fits:
            raise ResumeError(f"{path} is of fit {ck['fit']} of this folder, which did not end; this is fit "
                              f"{self.fits}: run the fits again from the first, or start anew")
        world = max(num_distrib(), 1)
        if ck["processes"] != world:
            raise ResumeError(f"{path} was written by {ck['processes']} process(es); resume it with the same "
                              f"number (now {world})")
        if ck["n_epoch"] != self.n_epoch:
            raise ResumeError(f"{path} is from a fit of {ck['n_epoch']} epochs, not {self.n_epoch}; fit the same "
                              f"number to resume")
        if ck["data"] != _fingerprint(self.dls):
            raise ResumeError(f"the data changed since {path} was written (other items or classes); start anew")
        model_file = folder / ck["model_file"]
        if not model_file.exists():
            raise ResumeError(f"{path} names {str(model_file)!r}, which is missing; start anew")
        ck |= torch.load(model_file, map_location="cpu", weights_only=True)  # {"model", "opt"}
        if rank_distrib() == 0:  # what a kill can leave besides: temporary files, a model file newer than path
            _drop_files(folder)
            _drop_files(model_file.parent, keep=model_file.name)
        return ck
