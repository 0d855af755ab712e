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

    - before it: ``config.json`` (``config``, plus the loss, epochs, data sizes and number of
      processes) and ``env.json`` (versions, device, machine: :func:`lsmooth.runs.environment`);
    - after each epoch: ``metrics.csv``, fastai's recorder row of every finished epoch, once each
      (epochs that :class:`~lsmooth.resume.ExactResume` skips keep the row they already have);
    - after it: ``valid_preds.pt`` (softmax of the last epoch's validation predictions, gathered
      from every process, and the targets) and ``final.json``: error rate, accuracy, NLL, ECE (15
      bins), Brier, temperature scaling (:func:`lsmooth.metrics.temperature_scaling`), fit time and
      training images/s. Single-label classification: the model's outputs are class logits.

    ``echo`` prints one aligned row per epoch (for logs, where fastai's progress table is off).
    Only a fit that trains is recorded: ``learn.get_preds()`` and ``learn.validate()``, which fire
    ``before_fit``/``after_fit`` too, leave the folder alone.
    """

    order = 70  # after Recorder (50) completed the epoch's row; before ExactResume (90) marks it done

    def __init__(self, config: dict | None = None, echo: bool = False):
        self.config, self.echo = dict(config or {}), echo

    @property
    def _writes(self) -> bool:
        return rank_distrib() == 0

    def before_fit(self):
        self.fitting = False  # get_preds and validate call before_fit too: a fit is known by its training

    def before_train(self):
        if self.fitting:
            return
        self.fitting, self.skipped, self.run_dir, self.rows = True, False, Path(self.learn.path), {}
        self.preds, self.targets, self.n_seen, self.t_fit = [], [], 0, time.perf_counter()
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
        facts = {"loss": repr(self.learn.loss_func), "n_epoch": self.n_epoch, "n_train": len(ds[0]),
                 "n_valid": len(ds[1]), "n_classes": getattr(self.dls, "c", None), "processes": max(num_distrib(), 1)}
        atomic_write_json(self.run_dir / CONFIG_FILE, self.config | facts)
        atomic_write_json(self.run_dir / ENV_FILE, environment(self.dls.device))

    def after_cancel_train(self):
        self.skipped = True

    def after_batch(self):
        if not self.fitting:
            return
        if self.training:
            self.n_seen += find_bs(self.yb)
        elif self.epoch == self.n_epoch - 1 and len(self.yb):  # the final model: what final.json is about
            self.preds.append(self.learn.to_detach(self.pred).float())
            self.targets.append(self.learn.to_detach(self.yb[0]))

    def after_epoch(self):
        if not self.fitting:
            return
        skipped, self.skipped = self.skipped, False
        if skipped:  # ExactResume skipped it: its row is already in metrics.csv
            if self.echo and self._writes and self.epoch in self.rows:
                self._print(self.rows[self.epoch])
            return
        row = [_plain(v) for v in self.recorder.log]
        if self.echo and self._writes:
            self._print(row)
        if self._writes:
            self.rows[self.epoch] = row
            names = list(self.recorder.metric_names)
            rows = [self.rows[e] for e in sorted(self.rows) if e <= self.epoch]  # a stale later row goes
            atomic_write_csv(self.run_dir / METRICS_FILE, names, rows)

    def after_fit(self):
        if not self.fitting:
            return
        self.fitting, fit_s = False, time.perf_counter() - self.t_fit
        if not (self._writes and self.preds):
            return
        logits = torch.cat(self.preds).as_subclass(torch.Tensor)
        targets = torch.cat(self.targets).as_subclass(torch.Tensor).long()
        probs = torch.softmax(logits, 1)
        right = (probs.argmax(1) == targets).double()
        final = {"error_rate": float(1 - right.mean()), "accuracy": float(right.mean()), "nll": nll(probs, targets),
                 "ece": ece(probs, targets), "brier": brier(probs, targets), **temperature_scaling(probs, targets),
                 "epochs": self.n_epoch, "n_valid": len(targets), "fit_time_s": round(fit_s, 3),
                 "images_per_s": round(self.n_seen / fit_s, 1) if self.n_seen else None}
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
    (fastai's ``ValueMetric``: progress table, ``metrics.csv``). The loss must have an ``eps``."""

    order = 20  # before Recorder (50) reads the metric names in before_fit

    def __init__(self, sched):
        self.sched, self.eps = sched, None

    def before_fit(self):
        if not hasattr(self.learn.loss_func, "eps"):
            raise ValueError(f"SmoothingSchedule sets loss_func.eps; {type(self.learn.loss_func).__name__} has none")
        self.metric = ValueMetric(lambda: self.eps, "eps")
        self.learn.metrics = [*self.learn.metrics, self.metric]

    def before_batch(self):
        if self.training:
            self.eps = self.learn.loss_func.eps = float(self.sched(self.pct_train))

    def after_fit(self):
        self.learn.metrics = [m for m in self.learn.metrics if m is not self.metric]


class OnlineLabelSmoothing(Callback):
    """Online label smoothing (Zhang et al., "Delving Deep into Label Smoothing", IEEE TIP 2021):
    during the fit the loss is :class:`~lsmooth.online.OnlineLabelSmoothingCrossEntropy` over
    ``dls.c`` classes (``alpha`` weighs the hard label; the first epoch's soft targets are uniform
    with ``first_eps=1``). After every training batch it adds the softmax of the correctly
    classified samples to their class; after every training epoch the per-class means, summed over
    every process, become the next epoch's soft targets. Nothing is read back to the host. The
    learner's own loss is put back after the fit (as fastai's ``MixUp`` does); the statistics are in
    the loss's ``state_dict``, which :class:`~lsmooth.resume.ExactResume` saves."""

    order = 30  # installs the loss before ExactResume (90) restores its state

    def __init__(self, alpha: float = 0.5, first_eps: float = 1.0):
        OnlineLabelSmoothingCrossEntropy(2, alpha, first_eps=first_eps)  # bad values fail here, not at fit time
        self.alpha, self.first_eps = alpha, first_eps

    def before_fit(self):
        self.ols = OnlineLabelSmoothingCrossEntropy(self.dls.c, self.alpha, first_eps=self.first_eps)
        self.old_loss, self.learn.loss_func = self.learn.loss_func, self.ols.to(self.dls.device)

    def after_loss(self):
        if self.training:
            self.ols.update(self.pred, *self.yb)

    def after_train(self):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for stats in (self.ols.sums, self.ols.counts):
                torch.distributed.all_reduce(stats)  # asynchronous on NCCL: no host read
        self.ols.next_epoch()

    def after_fit(self):
        self.learn.loss_func = self.old_loss


class CPUAutocast(Callback):
    """bf16 autocast for the forward pass and the loss on the CPU (fastai's ``MixedPrecision`` is CUDA-only)."""

    order = 10

    def before_batch(self):
        self.ctx = torch.autocast("cpu", dtype=torch.bfloat16)
        self.ctx.__enter__()

    def after_pred(self):
        self.learn.pred = self.pred.float()

    def after_loss(self):
        self.ctx.__exit__(None, None, None)
