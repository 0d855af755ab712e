"""fastai callbacks: what lsmooth adds to a run, one line each in any ``Learner``'s ``cbs``.

- :class:`RecordRun`: the run folder (``learn.path``): config, environment, per-epoch metrics, and
  at the end the validation predictions and final metrics, temperature scaling included.
- :class:`~lsmooth.resume.ExactResume` (in :mod:`lsmooth.resume`): a checkpoint after every epoch;
  a fit started again in the same folder goes on from it exactly.
- :class:`SmoothingSchedule`: the loss's ``eps`` set by a fastai schedule (``SchedLin``,
  ``combine_scheds``, :func:`two_stage`), recorded per epoch.
- :class:`OnlineLabelSmoothing`: online label smoothing (Zhang et al. 2021) as the loss of the fit.
- :class:`CPUAutocast`: bf16 autocast on the CPU (fastai's ``to_bf16`` is CUDA-only).

    learn = vision_learner(dls, resnet34, loss_func=LabelSmoothingCrossEntropy(0.1),
                           metrics=[error_rate, NLL(), ECE(), Brier()], path="runs/mine",
                           cbs=[RecordRun(), ExactResume()])
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from fastai.callback.core import Callback
from fastai.callback.schedule import SchedNo, combine_scheds
from fastai.learner import ValueMetric
from fastai.torch_core import find_bs, num_distrib, rank_distrib

from lsmooth.metrics import brier, ece, nll, temperature_scaling
from lsmooth.online import OnlineLabelSmoothingCrossEntropy
from lsmooth.runs import (
    CONFIG_FILE,
    ENV_FILE,
    FINAL_FILE,
    METRICS_FILE,
    PREDS_FILE,
    atomic_save_torch,
    atomic_write_csv,
    atomic_write_json,
    environment,
    read_csv_rows,
)

__all__ = ["CPUAutocast", "OnlineLabelSmoothing", "RecordRun", "SmoothingSchedule", "two_stage"]


def _plain(v):
    """A NumPy or 0-d tensor scalar as a Python number, for JSON and CSV."""
    return v.item() if hasattr(v, "item") and getattr(v, "ndim", 0) == 0 and not isinstance(v, str) else v


def _number(text: str):
    """A metrics.csv cell read back: the number it holds, or the text ("00:03")."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


class RecordRun(Callback):
    """Record the fit into ``learn.path``, every file written atomically by rank 0:

    - when it starts training: ``config.json`` (``config``, plus the loss, epochs, data sizes and number
      of processes) and ``env.json`` (versions, device, machine: :func:`lsmooth.runs.environment`);
    - after each epoch: ``metrics.csv``, fastai's recorder row of every finished epoch, once each
      (epochs that :class:`~lsmooth.resume.ExactResume` skips keep the row they already have);
    - when it ends: ``valid_preds.pt`` (softmax of the last validated epoch's predictions, gathered
      from every process, and the targets) and ``final.json``: error rate, accuracy, NLL, ECE (15
      bins), Brier, temperature scaling (:func:`lsmooth.metrics.temperature_scaling`), epochs, fit
      time (of this process: a resumed fit's counts from its resume) and training images/s (all
      processes). Single-label classification: the model's outputs are class logits.

    Several fits in one folder (``fine_tune``'s two) number their epochs on in ``metrics.csv``; the
    files of the end describe the last fit. ``final.json`` is about the model of the last validated
    epoch, also when a callback stops the fit early (``EarlyStoppingCallback``); a callback that
    loads another model when the fit ends (``SaveModelCallback``) does so after this one.
    ``learn.lr_find()``, ``get_preds()`` and ``validate()``, which fire ``before_fit``/``after_fit``
    too, leave the folder alone. ``echo`` prints one aligned row per epoch (for logs, where fastai's
    progress table is off).
    """

    order = 55  # after Recorder (50) completed the epoch's row; before EarlyStopping (63) may end the fit

    def __init__(self, config: dict | None = None, echo: bool = False):
        self.config, self.echo, self.epochs_before = dict(config or {}), echo, 0

    @property
    def _writes(self) -> bool:
        return rank_distrib() == 0

    def before_fit(self):
        self.fitting = False  # get_preds and validate call before_fit too: a fit is known by its training
        if hasattr(self.learn, "lr_finder"):  # fastai's own test: lr_find is not the run
            self.run = False

    def before_train(self):
        if self.fitting:
            return
        self.fitting, self.skipped, self.run_dir, self.rows = True, False, Path(self.learn.path), {}
        self.preds, self.last, self.n_seen, self.t_fit = None, None, 0, time.perf_counter()
        if not self._writes:
            return
        if self.echo:
            self._print(self.recorder.metric_names)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in (FINAL_FILE, PREDS_FILE):  # a folder never shows results of another fit
            (self.run_dir / stale).unlink(missing_ok=True)
        if (self.run_dir / METRICS_FILE).exists():  # rows of the epochs a resumed fit skips
            self.rows = {int(r["epoch"]): [_number(v) for v in r.values()]
                         for r in read_csv_rows(self.run_dir / METRICS_FILE)}
        ds = self.dls.train_ds, self.dls.valid_ds
        facts = {"loss": repr(self.learn.loss_func), "n_epoch": self.epochs_before + self.n_epoch,
                 "n_train": len(ds[0]), "n_valid": len(ds[1]), "n_classes": getattr(self.dls, "c", None),
                 "processes": max(num_distrib(), 1)}
        atomic_write_json(self.run_dir / CONFIG_FILE, self.config | facts)
        atomic_write_json(self.run_dir / ENV_FILE, environment(self.dls.device))

    def after_cancel_train(self):
        self.skipped = True

    def before_validate(self):
        if self.fitting:
            self.batch_preds, self.batch_targets = [], []

    def after_batch(self):
        if not self.fitting:
            return
        if self.training:
            self.n_seen += find_bs(self.yb)
        elif len(self.yb):  # this epoch's validation: the last one validated is what final.json is about
            self.batch_preds.append(self.learn.to_detach(self.pred).float())
            self.batch_targets.append(self.learn.to_detach(self.yb[0]))

    def after_validate(self):
        if self.fitting and self.batch_preds:
            self.preds, self.last = (self.batch_preds, self.batch_targets), self.epochs_before + self.epoch

    def after_epoch(self):
        if not self.fitting:
            return
        skipped, self.skipped, epoch = self.skipped, False, self.epochs_before + self.epoch
        if skipped:  # ExactResume skipped it: its row is already in metrics.csv
            if self.echo and self._writes and epoch in self.rows:
                self._print(self.rows[epoch])
            return
        row = [epoch, *(_plain(v) for v in self.recorder.log[1:])]  # epochs numbered on across fits
        if self.echo and self._writes:
            self._print(row)
        if self._writes:
            self.rows[epoch] = row
            names = list(self.recorder.metric_names)
            rows = [self.rows[e] for e in sorted(self.rows) if e <= epoch]  # a stale later row goes
            atomic_write_csv(self.run_dir / METRICS_FILE, names, rows)

    def after_fit(self):
        if not self.fitting:
            return
        self.fitting, fit_s = False, time.perf_counter() - self.t_fit
        self.epochs_before += self.n_epoch
        if not (self._writes and self.preds):
            return
        logits = torch.cat(self.preds[0]).as_subclass(torch.Tensor)
        targets = torch.cat(self.preds[1]).as_subclass(torch.Tensor).long()
        probs = torch.softmax(logits, 1)
        right = (probs.argmax(1) == targets).double()
        seen = self.n_seen * max(num_distrib(), 1)  # every process trains on its share of each batch
        final = {"error_rate": float(1 - right.mean()), "accuracy": float(right.mean()), "nll": nll(probs, targets),
                 "ece": ece(probs, targets), "brier": brier(probs, targets), **temperature_scaling(probs, targets),
                 "epochs": self.last + 1, "n_valid": len(targets), "fit_time_s": round(fit_s, 3),
                 "images_per_s": round(seen / fit_s, 1) if seen else None}
        atomic_save_torch(self.run_dir / PREDS_FILE, {"probs": probs, "targets": targets})
        atomic_write_json(self.run_dir / FINAL_FILE, final)
        print(f"error {final['error_rate']:.2%} | NLL {final['nll']:.4f} | ECE {final['ece']:.4f} | Brier "
              f"{final['brier']:.4f} | fit {fit_s:.1f} s, {final['images_per_s'] or 0:.0f} train images/s\n"
              f"run folder: {self.run_dir}", flush=True)

    @staticmethod
    def _print(row):
        print("  ".join(f"{v:>10.4f}" if isinstance(v, float) else f"{v!s:>10}" for v in row), flush=True)


def two_stage(eps: float, until: float = 0.75):
    """Two-stage label smoothing (Xu et al. 2020, TSLA) as a fastai schedule over the fit's progress:
    ``eps`` for the first ``until`` of training, then 0."""
    if not 0 < until < 1:
        raise ValueError(f"until={until!r} is not allowed; the switch must lie strictly inside the fit, in (0, 1)")
    return combine_scheds([until, 1 - until], [SchedNo(eps, eps), SchedNo(0.0, 0.0)])


class SmoothingSchedule(Callback):
    """Set ``learn.loss_func.eps`` before every training batch to ``sched(pct_train)``, where ``sched``
    is a fastai schedule of the fit's progress in [0, 1] (``SchedLin(0.1, 0)``, ``SchedCos``,
    ``combine_scheds``, :func:`two_stage`), like ``ParamScheduler`` does for the learning rate.
    The value of each epoch's last training batch is recorded as the recorder's column ``eps``
    (fastai's ``ValueMetric``: progress table, ``metrics.csv``). The loss must have an ``eps``; it gets
    its own back when the fit ends (what ``validate()`` then uses)."""

    order = 20  # before Recorder (50) reads the metric names in before_fit

    def __init__(self, sched):
        self.sched, self.eps = sched, None

    def before_fit(self):
        if not hasattr(self.learn.loss_func, "eps"):
            raise ValueError(f"SmoothingSchedule sets loss_func.eps; {type(self.learn.loss_func).__name__} has none")
        if not hasattr(self, "own_eps"):  # kept across an interrupted fit, which never reached after_fit
            self.own_eps = self.learn.loss_func.eps
        self.metric = ValueMetric(lambda: self.eps, "eps")
        self.learn.metrics = [*(m for m in self.learn.metrics if getattr(m, "name", None) != "eps"), self.metric]

    def before_batch(self):
        if self.training:
            self.eps = self.learn.loss_func.eps = float(self.sched(self.pct_train))

    def after_fit(self):
        self.learn.metrics = [m for m in self.learn.metrics if m is not self.metric]
        self.learn.loss_func.eps = self.own_eps
        del self.own_eps


class OnlineLabelSmoothing(Callback):
    """Online label smoothing (Zhang et al., "Delving Deep into Label Smoothing", IEEE TIP 2021):
    during the fit the loss is :class:`~lsmooth.online.OnlineLabelSmoothingCrossEntropy` over
    ``dls.c`` classes (``alpha`` weighs the hard label; the first epoch's soft targets are uniform
    with ``first_eps=1``). After every training batch it adds the softmax of the correctly
    classified samples to their class; after every training epoch the per-class means, summed over
    every process, become the next epoch's soft targets. Nothing is read back to the host. The loss
    is in place from the fit's first training batch to its end, then the learner's own loss is back
    (as with fastai's ``MixUp``; ``lr_find``, ``get_preds`` and ``validate`` use the learner's own);
    a later fit goes on with the same statistics, which are in the loss's ``state_dict``, which
    :class:`~lsmooth.resume.ExactResume` saves."""

    order = 30  # at the first training batch: installs its loss before ExactResume (90) restores the loss's state

    def __init__(self, alpha: float = 0.5, first_eps: float = 1.0):
        OnlineLabelSmoothingCrossEntropy(2, alpha, first_eps=first_eps)  # bad values fail here, not at fit time
        self.alpha, self.first_eps, self.ols = alpha, first_eps, None

    def before_fit(self):
        self.installed = False  # get_preds, validate and lr_find keep the learner's own loss

    def before_train(self):
        if self.installed or hasattr(self.learn, "lr_finder"):
            return
        if self.learn.loss_func is not self.ols:  # not ours from a fit Ctrl-C interrupted
            self.own_loss = self.learn.loss_func
        if self.ols is None:
            self.ols = OnlineLabelSmoothingCrossEntropy(self.dls.c, self.alpha, first_eps=self.first_eps)
        self.learn.loss_func, self.installed = self.ols.to(self.dls.device), True

    def after_loss(self):
        if self.installed and self.training:
            self.ols.update(self.pred, *self.yb)

    def after_train(self):
        if not self.installed:
            return
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for stats in (self.ols.sums, self.ols.counts):
                torch.distributed.all_reduce(stats)  # asynchronous on NCCL: no host read
        self.ols.next_epoch()

    def after_fit(self):
        if self.installed:
            self.learn.loss_func, self.installed = self.own_loss, False


class CPUAutocast(Callback):
    """bf16 autocast for the forward pass and the loss on the CPU (fastai's ``MixedPrecision`` is CUDA-only)."""

    order = 10

    def __init__(self):
        self.ctx = None

    def before_batch(self):
        self.ctx = torch.autocast("cpu", dtype=torch.bfloat16)
        self.ctx.__enter__()

    def after_pred(self):
        self.learn.pred = self.pred.float()

    def after_loss(self):  # backward runs outside autocast
        self._leave()

    def after_batch(self):  # a batch without a loss (get_preds) never reached after_loss
        self._leave()

    def _leave(self):
        if self.ctx is not None:
            self.ctx.__exit__(None, None, None)
            self.ctx = None
