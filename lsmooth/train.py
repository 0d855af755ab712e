"""Train one run: the fastai lesson-1 experiment as a function of one :class:`Config`.

    from lsmooth.train import Config, train
    final = train(Config(dataset="digits", eps=0.1, seed=1))   # final metrics; final["run_dir"]

:func:`train` reads like lesson 1 (data -> ``vision_learner`` -> ``fit_one_cycle`` -> predictions
-> metrics). Every run writes its own folder ``<out>/<time>-<name>/`` (``learn.path``): the resolved
config, env, per-epoch metrics, final metrics, validation predictions (file names in
:mod:`lsmooth.runs`). Around it, each in its own module: resuming (:mod:`lsmooth.checkpoint`),
several processes (:mod:`lsmooth.distributed`), pretrained weights offline (:mod:`lsmooth.weights`),
fastai 2.8 workarounds (:mod:`lsmooth.fastai_fixes`).

Determinism: with the same seed, machine and software, two CPU runs give identical metrics epoch by
epoch (``workers=0``, the CPU default). On a GPU, ``set_seed(seed, reproducible=True)`` turns on
``cudnn.deterministic`` and turns off cuDNN's autotuning, but runs still differ in the last digits:
some CUDA backward kernels accumulate with atomic adds in varying order, among them the adaptive
pooling of fastai's head (``torch.use_deterministic_algorithms(True)`` refuses them, so it stays
off), and so does the order of gradient all-reduce buckets with several GPUs; fp16 amplifies such
differences. Across GPUs, drivers or versions only statistics over seeds are expected to match.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import fastai.callback.fp16  # noqa: F401 - patches Learner.to_fp16 / to_bf16
import fastai.callback.schedule  # noqa: F401 - patches Learner.fit_one_cycle
import timm
import torch
import torchvision
from fastai.callback.core import Callback
from fastai.data.transforms import Normalize
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy, error_rate
from fastai.torch_core import default_device, set_seed
from fastai.vision.core import imagenet_stats
from fastai.vision.learner import vision_learner

from lsmooth import checkpoint, distributed
from lsmooth.data import (
    IMAGE_RE,
    NOISE_KINDS,
    PETS_RE,
    DataError,
    ImageData,
    image_dataloaders,
    load_image_folder,
    make_digits,
    make_tiny,
    pets_folder,
)
from lsmooth.fastai_fixes import predictions_on_this_rank
from lsmooth.losses import LabelSmoothingCrossEntropy
from lsmooth.metrics import ECE, NLL, Brier, brier, ece, nll
from lsmooth.runs import (
    CONFIG_FILE,
    ENV_FILE,
    FINAL_FILE,
    METRICS_FILE,
    PREDS_FILE,
    atomic_save_torch,
    atomic_write_csv,
    atomic_write_json,
    check_writable,
    environment,
    new_run_dir,
)
from lsmooth.weights import pretrained_kwargs, weights_hint

__all__ = ["PRESETS", "PRECISIONS", "Config", "ConfigError", "Interrupted", "dry_run", "load_data",
           "resolve", "resolve_arch", "resume", "run_config", "train"]

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DATA_ROOT = Path(__file__).resolve().parents[1] / "data"  # generated datasets (git-ignored)

# What a setting left at None becomes, per dataset. Values only: help texts live on Config.
PRESETS = {
    # fastai lesson 1: pretrained ResNet34, frozen body; lr 3e-3 is fastai v1's fit_one_cycle default
    "pets": dict(arch="resnet34", pretrained=True, epochs=4, lr=3e-3, bs=64, size=224, item_size=460,
                 flip=True, min_scale=0.75),
    # offline, real data: 8x8 digits upscaled; from scratch; no flips (a flipped 2 is not a 2)
    "digits": dict(arch="resnet18", pretrained=False, epochs=8, lr=1e-2, bs=64, size=32, item_size=32,
                   flip=False, min_scale=1.0),
    # generated, for tests: seconds per epoch
    "tiny": dict(arch="resnet18", pretrained=False, epochs=2, lr=1e-2, bs=32, size=32, item_size=32,
                 flip=True, min_scale=0.75),
}


class ConfigError(ValueError):
    """A setting that cannot be used; the one-line message names the flag and what is allowed."""


def _setting(default, help: str, **cli):
    """A Config field: its default and its help text, declared once (``lsmooth.cli`` reads both)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class Config:
    """One run. ``None`` = the dataset's preset (:data:`PRESETS`) or a default that :func:`resolve` picks.

    Every field changes the result except out, workers (0 on CPU keeps runs reproducible),
    threads, progress and name; all of them are written, resolved, to the run's config.json.
    """

    dataset: str = _setting("pets", "pets: Oxford-IIIT Pets (download); digits: offline; tiny: for tests",
                            choices=tuple(PRESETS))
    data: str | None = _setting(None, "local folder in the Pets layout instead of the dataset's own",
                                metavar="PATH")
    arch: str | None = _setting(None, "torchvision model name (preferred when both have it) or timm name")
    pretrained: bool | None = _setting(None, "start from ImageNet weights")
    eps: float = _setting(0.1, "label smoothing; 0 = fastai's CrossEntropyLossFlat, < 0 = negative smoothing")
    epochs: int | None = _setting(None, "fit_one_cycle epochs")
    lr: float | None = _setting(None, "fit_one_cycle lr_max")
    bs: int | None = _setting(None, "batch size (per process when launched on several)")
    size: int | None = _setting(None, "training image size in pixels (aug_transforms size)")
    item_size: int | None = _setting(None, "Resize per item before the batch transforms; at least --size")
    flip: bool | None = _setting(None, "random horizontal flips")
    min_scale: float | None = _setting(None, "aug_transforms min_scale of the random crop, in (0, 1]")
    valid_pct: float = _setting(0.2, "validation fraction of fastai's RandomSplitter")
    split_seed: int = _setting(42, "seed of the split; fixed across seeds and arms so runs are paired")
    seed: int = _setting(42, "training seed: init, batch order, augmentation, label noise")
    noise: float = _setting(0.0, "fraction of training labels corrupted, in [0, 1)", metavar="RATE")
    noise_kind: str = _setting("symmetric", "symmetric: flip to a different class; uniform: redraw from all",
                               choices=NOISE_KINDS)
    precision: str = _setting("auto", "auto = fp16 on CUDA, fp32 on CPU", choices=PRECISIONS)
    out: str = _setting("runs", "run folders go here", metavar="DIR")
    workers: int | None = _setting(None, "DataLoader workers (default: 0 on CPU, reproducible; 8 on CUDA)")
    threads: int | None = _setting(None, "torch CPU threads (default: torch's choice)")
    progress: bool | None = _setting(None, "fastai progress bars (default: when stdout is a terminal)")
    name: str | None = _setting(None, "run folder name (default: from dataset, arch, eps, noise, seed)")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int(x, low: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= low


def _checks(c: Config) -> list[tuple[bool, str]]:
    """(ok, message) for every setting of a Config whose presets are filled in."""
    return [
        (_finite(c.eps) and c.eps <= 1, f"--eps {c.eps}: must be finite and <= 1 (0 = cross-entropy, < 0 = negative)"),
        (_int(c.epochs, 1), f"--epochs {c.epochs}: must be an integer >= 1"),
        (_finite(c.lr) and c.lr > 0, f"--lr {c.lr}: must be a positive number"),
        (_int(c.bs, 1), f"--bs {c.bs}: must be an integer >= 1"),
        (_int(c.size, 8), f"--size {c.size}: must be an integer >= 8 pixels"),
        (_int(c.item_size, c.size), f"--item-size {c.item_size}: must be an integer >= --size ({c.size})"),
        (_finite(c.min_scale) and 0 < c.min_scale <= 1, f"--min-scale {c.min_scale}: must be in (0, 1]"),
        (_finite(c.valid_pct) and 0 < c.valid_pct < 1, f"--valid-pct {c.valid_pct}: must be in (0, 1)"),
        (_int(c.split_seed, 0), f"--split-seed {c.split_seed}: must be an integer >= 0"),
        (_int(c.seed, 0), f"--seed {c.seed}: must be an integer >= 0"),
        (_finite(c.noise) and 0 <= c.noise < 1, f"--noise {c.noise}: must be in [0, 1)"),
        (c.noise_kind in NOISE_KINDS, f"--noise-kind {c.noise_kind!r}: use one of {', '.join(NOISE_KINDS)}"),
        (c.precision in PRECISIONS[1:], f"--precision {c.precision!r}: use one of {', '.join(PRECISIONS)}"),
        (c.precision != "fp16" or torch.cuda.is_available(), "--precision fp16 needs a CUDA GPU; use fp32 or bf16"),
        (_int(c.workers, 0), f"--workers {c.workers}: must be an integer >= 0"),
        (_int(c.threads, 1), f"--threads {c.threads}: must be an integer >= 1"),
        *((isinstance(getattr(c, k), bool), f"--{k} {getattr(c, k)!r}: must be true or false")
          for k in ("pretrained", "flip", "progress")),
    ]


def resolve(cfg: Config) -> Config:
    """``cfg`` with every None filled in and every value checked; :class:`ConfigError` (one line) if bad."""
    if cfg.dataset not in PRESETS:
        raise ConfigError(f"--dataset {cfg.dataset!r} is unknown; use one of {', '.join(PRESETS)}")
    preset = PRESETS[cfg.dataset]
    cfg = dataclasses.replace(cfg, **{k: v for k, v in preset.items() if getattr(cfg, k) is None and k != "item_size"})
    cuda = torch.cuda.is_available()
    auto = {
        "item_size": max(preset["item_size"], cfg.size) if isinstance(cfg.size, int) else None,
        "precision": "fp16" if cuda else "fp32",
        "workers": min(8, os.cpu_count() or 1) if cuda else 0,
        "threads": torch.get_num_threads(),
        "progress": sys.stdout.isatty(),
        "name": f"{cfg.dataset}-{cfg.arch}-eps{cfg.eps:g}-noise{cfg.noise:g}-s{cfg.seed}" if _finite(cfg.eps)
        and _finite(cfg.noise) else None,
    }
    cfg = dataclasses.replace(cfg, **{k: v for k, v in auto.items()
                                      if getattr(cfg, k) is None or (k == "precision" and cfg.precision == "auto")})
    for ok, message in _checks(cfg):
        if not ok:
            raise ConfigError(message)
    resolve_arch(cfg.arch)
    return cfg


def resolve_arch(name: str):
    """torchvision model function (what fastai examples pass) or a timm name string."""
    tv = torchvision.models.list_models(module=torchvision.models)
    if name in tv:
        return getattr(torchvision.models, name)
    if timm.is_model(name):
        return name
    close = difflib.get_close_matches(name, list(dict.fromkeys(tv + timm.list_models())), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"
    raise ConfigError(f"--arch {name!r} is not a torchvision or timm model; {hint}")


# ---------------------------------------------------------------- data
def load_data(cfg: Config) -> ImageData:
    """The dataset's folder, split, checked, with noise in the training labels (cfg resolved)."""
    if cfg.data is not None:
        folder = Path(cfg.data)
    elif cfg.dataset == "pets":
        try:
            folder = pets_folder()
        except DataError as e:  # the first error names every way out, the weights' too
            raise DataError(f"{e}{weights_hint(cfg.arch) if cfg.pretrained else ''}") from None
    else:
        folder = {"digits": make_digits, "tiny": make_tiny}[cfg.dataset](DATA_ROOT)
    return load_image_folder(
        folder, pattern=PETS_RE if cfg.dataset == "pets" else IMAGE_RE, valid_pct=cfg.valid_pct,
        split_seed=cfg.split_seed, noise=cfg.noise, noise_kind=cfg.noise_kind, noise_seed=cfg.seed,
    )


def dry_run(cfg: Config) -> ImageData:
    """Print the resolved config and the data summary; train nothing, write nothing."""
    cfg = resolve(cfg)
    print(json.dumps(dataclasses.asdict(cfg), indent=2))
    data = load_data(cfg)
    print(data.summary())
    print("dry run: nothing trained, nothing written")
    return data


# ---------------------------------------------------------------- the run
class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; ``run_dir`` holds the last checkpoint (if an epoch finished)."""

    def __init__(self, run_dir: Path | None):
        super().__init__(run_dir)
        self.run_dir = run_dir


class EpochLog(Callback):
    """After each epoch: rewrite metrics.csv atomically; print a plain line when there are no bars.

    Not fastai's CSVLogger: that one appends to a file, so a kill between its row and the
    checkpoint, or the epochs that ``fit(start_epoch=...)`` skips, would write rows twice. Here the
    rows travel in the checkpoint (``rows``) and the file always holds every finished epoch once.
    """

    order = 70  # after Recorder (50) has filled `recorder.log`

    def __init__(self, echo: bool, rows=(), start_epoch: int = 0):
        self.echo, self.rows, self.start_epoch = echo, [list(r) for r in rows], start_epoch

    def before_fit(self):
        self.names = list(self.recorder.metric_names)
        if self.echo and not distributed.rank():
            for row in [self.names, *self.rows]:
                self._print(row)

    def after_epoch(self):
        if self.epoch < self.start_epoch or distributed.rank():  # rank 0 writes the run folder
            return
        self.rows.append([checkpoint.plain(v) for v in self.recorder.log])
        atomic_write_csv(self.learn.path / METRICS_FILE, self.names, self.rows)
        if self.echo:
            self._print(self.rows[-1])

    @staticmethod
    def _print(row):
        print("  ".join(f"{v:>10.4f}" if isinstance(v, float) else f"{v!s:>10}" for v in row), flush=True)


class CPUAutocast(Callback):
    """bf16 autocast for the forward pass and loss on CPU (fastai's MixedPrecision is CUDA-only)."""

    order = 10

    def before_batch(self):
        self.ctx = torch.autocast("cpu", dtype=torch.bfloat16)
        self.ctx.__enter__()

    def after_pred(self):
        self.learn.pred = self.pred.float()

    def after_loss(self):
        self.ctx.__exit__(None, None, None)


def _set_precision(learn, precision: str) -> None:
    if precision == "fp16":
        learn.to_fp16()
    elif precision == "bf16":
        learn.to_bf16() if learn.dls.device.type == "cuda" else learn.add_cb(CPUAutocast())


@contextlib.contextmanager
def _quiet(learn):
    """No bars and no fastai table: EpochLog prints one plain line per epoch instead."""
    with learn.no_bar(), learn.no_logging():
        yield


@contextlib.contextmanager
def _torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)  # 1 is far faster when other jobs share the cores
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _start_run(cfg: Config, data: ImageData, world: int) -> Path:
    """A new run folder holding the resolved config and the environment (rank 0 only)."""
    run_dir = new_run_dir(cfg.out, cfg.name)
    extra = {"data_folder": str(data.folder.resolve()), "processes": world}
    atomic_write_json(run_dir / CONFIG_FILE, dataclasses.asdict(cfg) | extra)
    atomic_write_json(run_dir / ENV_FILE, environment(default_device()))
    return run_dir


def train(cfg: Config, *, cbs=()) -> dict:
    """Run one experiment end to end; the final metrics (also in final.json), ``{}`` on ranks > 0.

    ``cbs``: extra fastai callbacks for the fit (benchmarks time steps with one).
    """
    t0 = time.perf_counter()
    cfg = resolve(cfg)
    rank, world = distributed.setup()
    if rank == 0:
        try:
            check_writable(cfg.out)
        except OSError as e:
            raise ConfigError(f"--out: {e}") from None
    data = distributed.rank0_first(load_data, cfg)  # rank 0 downloads or generates; the others then read
    run_dir = _start_run(cfg, data, world) if rank == 0 else None
    return _fit(cfg, data, run_dir, None, cbs, t0)


def run_config(run_dir: str | os.PathLike) -> Config:
    """The Config a run folder was started with (its config.json)."""
    path = Path(run_dir).expanduser() / CONFIG_FILE
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--resume {str(run_dir)!r}: no {CONFIG_FILE} there; not a run folder") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"--resume {str(run_dir)!r}: cannot read {CONFIG_FILE}: {e}") from None
    cfg = Config(**{f.name: saved[f.name] for f in dataclasses.fields(Config) if f.name in saved})
    if cfg.data is not None:  # absolute: resume from any working folder
        cfg.data = saved.get("data_folder", cfg.data)
    return cfg


def resume(run_dir: str | os.PathLike, *, threads: int | None = None, workers: int | None = None,
           cbs=()) -> dict:
    """Finish an interrupted run in its own folder from its last checkpoint; the final metrics.

    Same config (config.json), same data, every random stream restored: on the same CPU the final
    metrics equal those of a run that was never interrupted. A finished run is left alone.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir).expanduser()
    cfg = run_config(run_dir)
    cfg = resolve(dataclasses.replace(cfg, threads=threads or cfg.threads,
                                      workers=cfg.workers if workers is None else workers))
    rank, world = distributed.setup()
    if (run_dir / FINAL_FILE).exists():
        if rank == 0:
            print(f"{run_dir} already finished; final metrics in {FINAL_FILE}", flush=True)
        return json.loads((run_dir / FINAL_FILE).read_text()) if rank == 0 else {}
    ckpt = checkpoint.read(run_dir, world)
    data = distributed.rank0_first(load_data, cfg)
    checkpoint.check_data(ckpt, data)
    if rank == 0:
        print(f"resuming {run_dir} after epoch {checkpoint.start_epoch(ckpt)} of {cfg.epochs}", flush=True)
    return _fit(cfg, data, run_dir if rank == 0 else None, ckpt, cbs, t0)


def _fit(cfg: Config, data: ImageData, run_dir: Path | None, ckpt: dict | None, cbs, t0: float) -> dict:
    """Lesson 1: data -> vision_learner -> fit_one_cycle -> predictions -> final metrics."""
    rank = distributed.rank()
    if rank == 0:
        print(data.summary(), flush=True)
    with _torch_threads(cfg.threads):
        set_seed(cfg.seed, reproducible=True)
        dls = image_dataloaders(data, size=cfg.size, item_size=cfg.item_size, bs=cfg.bs, workers=cfg.workers,
                                flip=cfg.flip, min_scale=cfg.min_scale, device=default_device())
        loss = CrossEntropyLossFlat() if cfg.eps == 0 else LabelSmoothingCrossEntropy(cfg.eps)
        arch = resolve_arch(cfg.arch)
        start = checkpoint.start_epoch(ckpt)
        learn = vision_learner(
            dls, arch, pretrained=cfg.pretrained, loss_func=loss, path=run_dir or ".",
            metrics=[error_rate, accuracy, NLL(), ECE(), Brier()],
            cbs=[EpochLog(echo=not cfg.progress, rows=ckpt["rows"] if ckpt else (), start_epoch=start),
                 checkpoint.Checkpoint(checkpoint.data_id(data), start)],
            **(pretrained_kwargs(arch) if cfg.pretrained else {}),
        )
        if not learn.dls.after_batch.fs.filter(lambda t: isinstance(t, Normalize)):
            learn.dls.add_tfms([Normalize.from_stats(*imagenet_stats)], "after_batch")  # from scratch
        _set_precision(learn, cfg.precision)
        cbs = [*cbs, *checkpoint.restore(learn, ckpt)]
        if rank:  # init and label noise come from cfg.seed on every rank; augmentation should not
            set_seed(cfg.seed + rank, reproducible=True)
        with contextlib.nullcontext() if cfg.progress else _quiet(learn):
            t_fit = time.perf_counter()
            try:
                distributed.fit_one_cycle(learn, cfg.epochs, cfg.lr, cbs=cbs, start_epoch=start)
            except KeyboardInterrupt:
                raise Interrupted(run_dir) from None
            fit_s = time.perf_counter() - t_fit
            if rank:  # the model is the same on every rank; rank 0 evaluates it and writes the results
                distributed.barrier()
                return {}
            learn.remove_cbs([c for c in learn.cbs if isinstance(c, (EpochLog, checkpoint.Checkpoint))])
            probs, targets = predictions_on_this_rank(learn, dls.valid)
    final = _final_metrics(probs, targets, data, cfg, fit_s, (cfg.epochs - start) * len(dls.train) * cfg.bs, t0)
    _finish(run_dir, probs, targets, final, cfg)
    distributed.barrier()
    return final


def _final_metrics(probs, targets, data: ImageData, cfg: Config, fit_s: float, n_seen: int, t0: float) -> dict:
    right = (probs.argmax(1) == targets).float()
    return {
        "error_rate": float((1 - right).mean()), "accuracy": float(right.mean()),
        "nll": nll(probs, targets), "ece": ece(probs, targets), "brier": brier(probs, targets),
        "epochs": cfg.epochs, "n_train": len(data.train), "n_valid": len(data.valid),
        "skipped_images": len(data.skipped), "noisy_labels": data.noisy,
        "fit_time_s": round(fit_s, 3), "wall_time_s": round(time.perf_counter() - t0, 3),
        "images_per_s": round(n_seen / fit_s, 1) if fit_s > 0 and n_seen else None,  # drop_last: full batches
    }


def _finish(run_dir: Path, probs, targets, final: dict, cfg: Config) -> None:
    """Write predictions and final metrics, drop the checkpoint, print one summary line."""
    final["run_dir"] = str(run_dir)
    # for temperature scaling and reliability plots later
    atomic_save_torch(run_dir / PREDS_FILE, {"probs": probs.float(), "targets": targets.long()})
    atomic_write_json(run_dir / FINAL_FILE, final)
    checkpoint.remove(run_dir)
    print(
        f"{cfg.dataset} {cfg.arch} eps={cfg.eps:g} noise={cfg.noise:g} seed={cfg.seed}: "
        f"error {final['error_rate']:.2%} (accuracy {final['accuracy']:.2%}) | NLL {final['nll']:.4f} | "
        f"ECE {final['ece']:.4f} | Brier {final['brier']:.4f} | {final['wall_time_s']:.1f} s, "
        f"{final['images_per_s'] or 0:.0f} train images/s\nrun folder: {run_dir}",
        flush=True,
    )
