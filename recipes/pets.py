"""Oxford-IIIT Pets, ResNet34, ``fit_one_cycle(4)``: label smoothing vs. plain cross-entropy.

The classic fastai lesson-1 experiment, ported from fastai v1 (``ImageDataBunch.from_name_re``,
``cnn_learner``) to fastai v2: labels from file names (``^(.+)_\\d+\\.jpg$``), fastai's 80/20
``RandomSplitter(seed=42)`` over the sorted file list, ``Resize(460)`` then
``aug_transforms(size=224, min_scale=0.75)``, ImageNet-pretrained torchvision ResNet34 with a
frozen body, ``fit_one_cycle(4)``, loss ``LabelSmoothingCrossEntropy(eps=0.1)``; ``--eps 0`` is
the baseline with fastai's ``CrossEntropyLossFlat``.

Published figures (not measured here; ResNet34, 4 epochs, frozen body, no smoothing): error rate
7.1% in the fastai course-v3 lesson-1 notebook (5.7-7.3% across its versions), 8.0% in the
fastai2 port. The seed article reports 7.5% with label smoothing. fastbook: gains from label
smoothing usually need more epochs.

Offline (no download at all): scikit-learn's digits, ResNet18 from scratch at 32 px, 8 epochs.
    python recipes/pets.py --dataset digits --threads 1
Measured once on this project's 2-core AMD EPYC CPU (torch 2.14, fp32, other jobs sharing the
cores): eps=0.1 error 0.84%, 44 s of training (51 s with start-up), 258 training images/s.
With other jobs on the cores, torch's default 2 threads ran 5-7x slower per epoch than
--threads 1; on an idle multi-core machine leave --threads out. bf16 autocast on this CPU was
only ~8% faster for ResNet18 at 32 px, so it is off unless --precision bf16.

Usage:
    python recipes/pets.py                    # Pets (~800 MB download + weights), eps=0.1
    python recipes/pets.py --eps 0            # the fastai baseline
    python recipes/pets.py --data ~/pets      # a local copy (its images/ folder or the root)
    python recipes/pets.py --dataset digits --noise 0.4 --eps 0.1
    python recipes/pets.py --dry-run          # resolved config + data summary, no training

From Python (sweeps; every run gets the same split): ``from pets import Config, train`` then
``train(Config(dataset="digits", eps=0.0, seed=1))`` returns the final metrics;
``resume(run_dir)`` finishes an interrupted run.
Every run writes ``<out>/<time>-<name>/``: config.json, env.json, metrics.csv (per epoch),
final.json, valid_preds.pt (validation probabilities and targets).

Interrupted runs: after each epoch the run folder gets checkpoint.pth (model, optimizer, fp16 loss
scale, every random stream of every process, the smoothed training loss), written to a temporary
file and renamed, so a kill mid-write leaves the previous one. ``--resume RUN_DIR`` continues
after the last finished epoch with the settings from RUN_DIR/config.json (only --threads and
--workers may be given again); metrics.csv then holds every epoch once, and the checkpoint is
deleted when final.json is written. On the same CPU the final metrics equal an uninterrupted
run's exactly (tests/test_reliability.py), including after SIGKILL and with two processes.
    python recipes/pets.py --resume runs/20250101-120000-pets-resnet34-eps0.1-noise0-s42

Determinism: with the same seed, same machine and same software, two CPU runs give identical
metrics, epoch by epoch (tested on `tiny`, --workers 0, the CPU default). On a GPU,
``set_seed(seed, reproducible=True)`` turns on ``cudnn.deterministic`` and turns off cuDNN's
benchmark autotuning, but runs still differ in the last digits: some CUDA backward kernels
accumulate with atomic adds in varying order, among them the adaptive average and max pooling of
fastai's head (``AdaptiveConcatPool2d``; ``torch.use_deterministic_algorithms(True)`` refuses
them, so it stays off), and the order of gradient all-reduce buckets with several GPUs; fp16
amplifies such differences. Different GPUs, drivers, CUDA/cuDNN or torch versions pick different
kernels, so only the statistics over seeds (mean and std of compare.py) are expected to match
across machines, not single runs.

Several GPUs or machines (fastai's ``learn.distrib_ctx()`` on Hugging Face accelerate; needs
``pip install accelerate``): one process per GPU, each getting a shard of every batch; --bs is
per process (effective batch = bs x processes), so scale --lr when comparing with one GPU.
Only rank 0 prints and writes the run folder; the data split and label noise are the same on
every rank, augmentation draws from seed + rank; BatchNorm is synchronised (SyncBatchNorm).
    accelerate launch --multi_gpu --num_processes 4 recipes/pets.py --eps 0.1
    accelerate launch --multi_gpu --num_machines 2 --machine_rank 0 --num_processes 16 \
        --main_process_ip HOST0 --main_process_port 29500 recipes/pets.py   # rank 1: --machine_rank 1
    torchrun --nproc_per_node 2 recipes/pets.py --dataset tiny   # 2 CPU processes (gloo), as tested
``accelerate launch --cpu --num_processes 2`` starts a single process (accelerate's multi-CPU mode
goes through mpirun); use torchrun on CPUs. Resume with the same launcher and process count.
On CPU (no SyncBatchNorm) each rank's BatchNorm statistics drift apart slightly, so the per-epoch
validation numbers mix ranks; final.json is always rank 0's model on the whole validation set.
"""

from __future__ import annotations

import warnings

# fastai's import calls torch.jit.script, deprecated in recent torch: a line of noise on stderr.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import difflib  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from contextlib import redirect_stderr  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import urlparse  # noqa: E402

import fastai.callback.fp16  # noqa: E402,F401 - patches Learner.to_fp16 / to_bf16
import fastai.callback.schedule  # noqa: E402,F401 - patches Learner.fit_one_cycle
import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from fastai.callback.core import Callback  # noqa: E402
from fastai.callback.progress import ProgressCallback  # noqa: E402
from fastai.data.transforms import Normalize  # noqa: E402
from fastai.losses import CrossEntropyLossFlat  # noqa: E402
from fastai.metrics import accuracy, error_rate  # noqa: E402
from fastai.torch_core import default_device, num_distrib, rank_distrib, set_seed  # noqa: E402
from fastai.vision.core import imagenet_stats  # noqa: E402
from fastai.vision.learner import vision_learner  # noqa: E402
from fastcore.basics import noop  # noqa: E402
from fastcore.foundation import L  # noqa: E402

from lsmooth.data import (  # noqa: E402
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
from lsmooth.losses import LabelSmoothingCrossEntropy  # noqa: E402
from lsmooth.metrics import ECE, NLL, Brier, brier, ece, nll  # noqa: E402
from lsmooth.runs import (  # noqa: E402
    atomic_save_torch,
    atomic_write_csv,
    atomic_write_json,
    check_writable,
    environment,
    new_run_dir,
    rng_state,
    set_rng_state,
)

# ---------------------------------------------------------------- settings
EPS = 0.1            # the seed article's smoothing; 0 = fastai's CrossEntropyLossFlat baseline
SEED = 42            # training seed: init, batch order, augmentation, label noise
VALID_PCT = 0.2      # fastai's split ...
SPLIT_SEED = 42      # ... fixed for every seed and arm, so runs are paired on the same images
NOISE = 0.0          # symmetric label noise in the training labels (0 = clean)
NOISE_KIND = "symmetric"  # flip to a *different* class; "uniform" = redraw from all K classes
OUT = "runs"         # one folder per run under here (git-ignored)
PRECISION = "auto"   # fp16 on CUDA; fp32 on CPU (bf16 autocast measured only ~8% faster there)
DATA_ROOT = Path(__file__).resolve().parents[1] / "data"  # generated datasets (git-ignored)
# Per dataset: what a flag becomes when it is not given.
PRESETS = {
    # fastai lesson 1: pretrained ResNet34, frozen body; lr 3e-3 is fastai v1's fit_one_cycle default
    "pets": dict(arch="resnet34", pretrained=True, size=224, item_size=460, epochs=4, lr=3e-3,
                 bs=64, flip=True, min_scale=0.75),
    # offline, real data: 8x8 digits upscaled; from scratch; no flips (a flipped 2 is not a 2)
    "digits": dict(arch="resnet18", pretrained=False, size=32, item_size=32, epochs=8, lr=1e-2,
                   bs=64, flip=False, min_scale=1.0),
    # generated, for tests: seconds per epoch
    "tiny": dict(arch="resnet18", pretrained=False, size=32, item_size=32, epochs=2, lr=1e-2,
                 bs=32, flip=True, min_scale=0.75),
}
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
PROG = "pets.py"
CHECKPOINT = "checkpoint.pth"  # in the run folder, replaced after each epoch, removed at the end


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the flag and what is allowed."""


class WeightsUnavailable(RuntimeError):
    """Pretrained weights are neither cached nor downloadable."""


@dataclasses.dataclass
class Config:
    """One run. ``None`` means "the dataset's preset" (see PRESETS); ``resolve`` fills them in."""

    dataset: str = "pets"
    data: str | None = None          # local folder in the Pets layout instead of the default
    arch: str | None = None          # torchvision name (preferred when both have it) or timm name
    pretrained: bool | None = None
    eps: float = EPS
    epochs: int | None = None
    lr: float | None = None
    bs: int | None = None
    size: int | None = None
    seed: int = SEED
    noise: float = NOISE
    noise_kind: str = NOISE_KIND
    out: str = OUT
    workers: int | None = None       # DataLoader workers; 0 on CPU keeps runs reproducible
    threads: int | None = None       # torch CPU threads; None = torch's default (all cores)
    precision: str = PRECISION
    progress: bool | None = None     # fastai bars; None = only when stdout is a terminal
    name: str | None = None          # run folder name; default from dataset/arch/eps/noise/seed


# ---------------------------------------------------------------- config checks
def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def resolve(cfg: Config) -> Config:
    """Fill presets and check every value; raises ConfigError with one line saying what is wrong."""
    if cfg.dataset not in PRESETS:
        raise ConfigError(f"--dataset {cfg.dataset!r} is unknown; use one of {', '.join(PRESETS)}")
    p = PRESETS[cfg.dataset]
    cuda = torch.cuda.is_available()
    fill = {k: p[k] for k in ("arch", "pretrained", "epochs", "lr", "bs", "size")
            if getattr(cfg, k) is None}
    cfg = dataclasses.replace(cfg, **fill)
    if cfg.workers is None:
        cfg.workers = min(8, os.cpu_count() or 1) if cuda else 0
    checks = [
        (_finite(cfg.eps) and cfg.eps <= 1,
         f"--eps {cfg.eps}: must be finite and <= 1 (0 = plain cross-entropy, < 0 = negative LS)"),
        (isinstance(cfg.epochs, int) and cfg.epochs >= 1, f"--epochs {cfg.epochs}: must be >= 1"),
        (_finite(cfg.lr) and cfg.lr > 0, f"--lr {cfg.lr}: must be a positive number"),
        (isinstance(cfg.bs, int) and cfg.bs >= 1, f"--bs {cfg.bs}: must be >= 1"),
        (isinstance(cfg.size, int) and cfg.size >= 8, f"--size {cfg.size}: must be >= 8 pixels"),
        (_finite(cfg.noise) and 0 <= cfg.noise < 1, f"--noise {cfg.noise}: must be in [0, 1)"),
        (cfg.noise_kind in NOISE_KINDS,
         f"--noise-kind {cfg.noise_kind!r}: use one of {', '.join(NOISE_KINDS)}"),
        (isinstance(cfg.workers, int) and cfg.workers >= 0, f"--workers {cfg.workers}: must be >= 0"),
        (cfg.threads is None or (isinstance(cfg.threads, int) and cfg.threads >= 1),
         f"--threads {cfg.threads}: must be >= 1"),
        (cfg.precision in PRECISIONS,
         f"--precision {cfg.precision!r}: use one of {', '.join(PRECISIONS)}"),
        (cfg.precision != "fp16" or cuda, "--precision fp16 needs a CUDA GPU; use fp32 or bf16"),
        (isinstance(cfg.seed, int), f"--seed {cfg.seed}: must be an integer"),
    ]
    for ok, message in checks:
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


# ---------------------------------------------------------------- pretrained weights, offline
def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def pretrained_kwargs(arch) -> dict:
    """Make sure pretrained weights are local; extra ``vision_learner`` kwargs to load them.

    Cached weights load without touching the network. Otherwise they are downloaded (progress
    on stdout); when that fails, WeightsUnavailable says where to put the file.
    """
    if isinstance(arch, str):  # timm: Hugging Face hub cache, or the torch hub cache for a URL
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.constants import HF_HUB_CACHE

        pcfg = timm.models.get_pretrained_cfg(arch)
        if pcfg is None or not (pcfg.hf_hub_id or pcfg.url):
            raise WeightsUnavailable(f"timm has no pretrained weights for {arch!r}; use --no-pretrained")
        if pcfg.hf_hub_id:
            for fname in ("model.safetensors", "pytorch_model.bin"):
                hit = try_to_load_from_cache(pcfg.hf_hub_id, fname)
                if isinstance(hit, str):
                    return {"pretrained_cfg_overlay": {"file": hit}}
            if not _reachable("huggingface.co"):
                raise WeightsUnavailable(
                    f"cannot download pretrained {arch} weights from huggingface.co/"
                    f"{pcfg.hf_hub_id} (offline?): use --no-pretrained, or put them in the "
                    f"Hugging Face cache {HF_HUB_CACHE}"
                )
            return {}
        url = pcfg.url
    else:
        url = torchvision.models.get_model_weights(arch).DEFAULT.url
    file = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    if not file.exists():
        try:
            with redirect_stderr(sys.stdout):  # torch.hub reports downloads on stderr
                torch.hub.load_state_dict_from_url(url, progress=sys.stdout.isatty(), map_location="cpu")
        except Exception as e:  # noqa: BLE001 - URLError, HTTPError, timeouts, hash mismatch
            reason = str(getattr(e, "reason", "") or e).strip() or type(e).__name__
            raise WeightsUnavailable(
                f"cannot download pretrained weights {url} ({reason}): use --no-pretrained, "
                f"or put {file.name} in {file.parent}"
            ) from None
    return {"pretrained_cfg_overlay": {"file": str(file)}} if isinstance(arch, str) else {}


# ---------------------------------------------------------------- data
def load_data(cfg: Config) -> ImageData:
    """The resolved dataset folder, split, checked, with noise in the training labels."""
    if cfg.data is not None:
        folder = Path(cfg.data)
    elif cfg.dataset == "pets":
        folder = pets_folder()
    else:
        folder = {"digits": make_digits, "tiny": make_tiny}[cfg.dataset](DATA_ROOT)
    return load_image_folder(
        folder, pattern=PETS_RE if cfg.dataset == "pets" else IMAGE_RE,
        valid_pct=VALID_PCT, split_seed=SPLIT_SEED,
        noise=cfg.noise, noise_kind=cfg.noise_kind, noise_seed=cfg.seed,
    )


# ---------------------------------------------------------------- logging and checkpoints
def _plain(v):
    """A NumPy or 0-d tensor scalar as a plain Python number (``torch.load(weights_only=True)``)."""
    return v.item() if isinstance(v, np.generic) or (torch.is_tensor(v) and v.ndim == 0) else v


def _row(values) -> list:
    return [_plain(v) for v in values]


class EpochLog(Callback):
    """After each epoch: rewrite metrics.csv atomically; print a plain line when there are no bars.

    ``rows`` are the epochs finished before a resume; the epochs that ``fit(start_epoch=...)``
    skips are not logged again, so metrics.csv holds every epoch exactly once.
    """

    order = 70  # after Recorder (50) has filled `recorder.log`

    def __init__(self, path: Path, echo: bool, rows=(), start_epoch: int = 0):
        self.path, self.echo, self.rows, self.start_epoch = path, echo, [list(r) for r in rows], start_epoch

    def before_fit(self):
        self.names = list(self.recorder.metric_names)
        if self.echo:
            print("  ".join(f"{n:>10}" for n in self.names), flush=True)
            for row in self.rows:
                self._print(row)

    def after_epoch(self):
        if self.epoch < self.start_epoch:
            return
        row = _row(self.recorder.log)
        self.rows.append(row)
        atomic_write_csv(self.path, self.names, self.rows)
        if self.echo:
            self._print(row)

    @staticmethod
    def _print(row):
        print("  ".join(f"{v:>10.4f}" if isinstance(v, float) else f"{v!s:>10}" for v in row), flush=True)


def _loader_rng(dl):
    """The ``random.Random`` a fastai DataLoader shuffles with (the inner one under DDP)."""
    return dl.dl.rng if type(dl).__name__ == "DistributedDL" else dl.rng


def _gather(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]``; ``[obj]`` in a single process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


class Checkpoint(Callback):
    """End of each epoch: all a run needs to go on exactly as if it never stopped; atomic.

    fastai's ``SaveModelCallback(every_epoch=True, with_opt=True)`` keeps model and optimizer. An
    identical continuation also needs every random stream of every rank (Python, NumPy, torch,
    CUDA, each DataLoader's shuffling ``rng``), the smoothed training loss that metrics.csv
    reports, and the fp16 loss scale. The one-cycle position needs nothing: fastai derives it from
    the epoch (``pct_train = epoch / n_epoch``) when ``fit_one_cycle(start_epoch=...)`` resumes.
    Every rank takes part (its RNG state is gathered); only rank 0 writes (``path`` is None elsewhere).
    """

    order = 75  # after EpochLog: checkpoint epoch e means metrics.csv already has row e

    def __init__(self, path: Path | None, log: EpochLog | None, data_id: str, start_epoch: int = 0):
        self.path, self.log, self.data_id, self.start_epoch = path, log, data_id, start_epoch

    def after_epoch(self):
        if self.epoch < self.start_epoch:
            return
        rng = _gather({"global": rng_state(), "loaders": [_loader_rng(dl).getstate() for dl in self.dls.loaders]})
        if self.path is None:
            return
        scaler = getattr(self.learn, "scaler", None)
        smooth = self.recorder.smooth_loss
        atomic_save_torch(self.path, {
            "epoch": self.epoch,
            "model": getattr(self.model, "module", self.model).state_dict(),
            "opt": _opt_state(self.opt),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "smooth_loss": (smooth.count, smooth.val),
            "train_iter": self.train_iter,
            "rows": self.log.rows if self.log is not None else [],
            "rng": rng,
            "data_id": self.data_id,
        })


class Restore(Callback):
    """Puts back a checkpoint's random streams and running state when the first resumed epoch starts."""

    def __init__(self, ckpt: dict, rank: int):
        self.ckpt, self.rank = ckpt, rank

    def before_train(self):
        ck = self.ckpt
        if self.epoch != ck["epoch"] + 1:
            return
        smooth = self.recorder.smooth_loss
        smooth.count, smooth.val = ck["smooth_loss"]
        self.learn.train_iter = ck["train_iter"]
        if ck["scaler"] is not None and getattr(self.learn, "scaler", None) is not None:
            self.learn.scaler.load_state_dict(ck["scaler"])
        mine = ck["rng"][self.rank]
        set_rng_state(mine["global"])
        for dl, state in zip(self.dls.loaders, mine["loaders"], strict=True):
            _loader_rng(dl).setstate(state)


def load_checkpoint(learn, ckpt: dict) -> None:
    """Model and optimizer state from ``ckpt`` into ``learn`` (before ``fit``)."""
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


def _opt_state(opt) -> dict:
    """``opt.state_dict()`` in plain containers (fastai's ``L`` does not load with weights_only)."""
    sd = dict(opt.state_dict())
    if "hypers" in sd:
        sd["hypers"] = [{k: _plain(v) for k, v in h.items()} for h in sd["hypers"]]
        sd["state"] = [dict(st) for st in sd["state"]]
    return sd


def data_id(data: ImageData) -> str:
    """Fingerprint of the split and the labels: a resumed run must see the same data."""
    text = "\n".join(f"{p.name}\t{data.labels[p.name]}" for p in data.train) + "\n--\n"
    text += "\n".join(p.name for p in data.valid)
    return hashlib.sha1(text.encode()).hexdigest()


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


# ---------------------------------------------------------------- several processes (accelerate)
# fastai's DistributedDL assumes NCCL on GPUs; these two small patches let gloo on CPUs run it too
# (the NCCL path is unchanged), which is how the multi-process code is tested on a CPU-only machine.
def _broadcast_any_backend(self, t, rank):
    """``DistributedDL._broadcast`` without the unconditional ``.cuda()``."""
    on = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    t = torch.tensor(t, dtype=torch.long, device=on)
    torch.distributed.broadcast(t, rank)
    return t.cpu().tolist()


def _wrap_dl_any_device(self, dl):
    """``DistributedTrainer._wrap_dl`` for a DDP model without ``.device`` (CPU)."""
    from fastai.distributed import DistributedDL

    if isinstance(dl, DistributedDL):
        return dl
    model = self.learn.model
    return DistributedDL(dl, device=getattr(model, "device", None) or next(model.parameters()).device)


def distributed_setup() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment (accelerate launch, torchrun).

    Starts the process group through accelerate: NCCL with one GPU per process, or gloo on CPUs
    (accelerate only picks gloo when told ``cpu=True``; ``accelerate launch --cpu`` does the same).
    """
    rank, world = rank_distrib(), max(num_distrib(), 1)
    if world > 1:
        try:
            import fastai.distributed  # noqa: F401 - patches Learner.distrib_ctx
            from accelerate import PartialState
        except ImportError:  # accelerate is optional for single runs
            raise ConfigError("training on several processes needs accelerate: pip install accelerate") from None
        fastai.distributed.DistributedDL._broadcast = _broadcast_any_backend
        fastai.distributed.DistributedTrainer._wrap_dl = _wrap_dl_any_device
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        PartialState(cpu=not torch.cuda.is_available())
    return rank, world


@contextlib.contextmanager
def _single_process():
    """fastai gathers predictions from every rank whenever WORLD_SIZE > 1; rank 0 evaluates alone."""
    import fastai.torch_core

    real = fastai.torch_core.num_distrib
    fastai.torch_core.num_distrib = lambda: 0
    try:
        yield
    finally:
        fastai.torch_core.num_distrib = real


def _barrier() -> None:
    """Wait for every rank (no-op in a single process), so no rank leaves while rank 0 writes."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


# ---------------------------------------------------------------- the run
class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; ``run_dir`` holds the last checkpoint (if an epoch finished)."""

    def __init__(self, run_dir: Path | None):
        super().__init__(run_dir)
        self.run_dir = run_dir


def run_config(run_dir: str | os.PathLike) -> Config:
    """The Config a run folder was started with (its config.json)."""
    path = Path(run_dir).expanduser() / "config.json"
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--resume {str(run_dir)!r}: no config.json there; not a pets.py run folder") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"--resume {str(run_dir)!r}: cannot read {path.name}: {e}") from None
    names = {f.name for f in dataclasses.fields(Config)}
    cfg = Config(**{k: v for k, v in saved.items() if k in names})
    if cfg.data is not None and saved.get("data_folder"):  # absolute: resume from any folder
        cfg.data = saved["data_folder"]
    return cfg


def resume(run_dir: str | os.PathLike, *, threads: int | None = None, workers: int | None = None,
           cbs=()) -> dict:
    """Continue an interrupted run in its own folder from its last checkpoint; returns final metrics.

    Same config (from config.json), same data, same random streams: on the same CPU the final
    metrics equal those of a run that was never interrupted. A finished run is left alone.
    """
    cfg = run_config(run_dir)
    cfg = dataclasses.replace(cfg, threads=threads or cfg.threads,
                              workers=cfg.workers if workers is None else workers)
    return train(cfg, resume_dir=run_dir, cbs=cbs)


def train(cfg: Config, *, resume_dir: str | os.PathLike | None = None, cbs=()) -> dict:
    """Run one experiment end to end; returns the final metrics (also saved to final.json), {} on ranks > 0.

    ``resume_dir``: continue that run folder from its checkpoint (see :func:`resume`).
    ``cbs``: extra fastai callbacks for this fit.
    """
    t0 = time.perf_counter()
    cfg = resolve(cfg)
    rank, world = distributed_setup()
    ckpt, run_dir = None, None
    if resume_dir is not None:
        run_dir = Path(resume_dir).expanduser()
        if (run_dir / "final.json").exists():
            if rank == 0:
                print(f"{run_dir} already finished; final metrics in final.json", flush=True)
            return json.loads((run_dir / "final.json").read_text())
        if not (run_dir / CHECKPOINT).exists():
            raise ConfigError(f"--resume {str(run_dir)!r}: no {CHECKPOINT}; the run stopped before its "
                              f"first epoch ended, start it again")
        ckpt = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=True)
        if len(ckpt["rng"]) != world:
            raise ConfigError(f"--resume: the run used {len(ckpt['rng'])} process(es); resume it with "
                              f"the same number (now {world})")
    elif rank == 0:
        try:
            check_writable(cfg.out)
        except OSError as e:
            raise ConfigError(f"--out: {e}") from None
    arch = resolve_arch(cfg.arch)
    extra = pretrained_kwargs(arch) if cfg.pretrained else {}
    if world > 1:
        from accelerate import PartialState

        with PartialState().main_process_first():  # rank 0 downloads/generates; the others then read
            data = load_data(cfg)
    else:
        data = load_data(cfg)
    if ckpt is not None and ckpt["data_id"] != data_id(data):
        raise ConfigError(f"--resume: the data in {str(data.folder)!r} changed since the run started "
                          f"(other files or labels); start a new run")
    device = default_device()
    progress = sys.stdout.isatty() if cfg.progress is None else cfg.progress
    if rank == 0:
        print(data.summary(), flush=True)

    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # 1 is far faster when other jobs share the cores
    try:
        return _fit(cfg, data, arch, extra, device, progress, t0, run_dir, ckpt, rank, world, cbs)
    finally:
        torch.set_num_threads(threads_before)


def _fit(cfg, data, arch, extra, device, progress, t0, run_dir, ckpt, rank, world, cbs) -> dict:
    set_seed(cfg.seed, reproducible=True)
    p = PRESETS[cfg.dataset]
    dls = image_dataloaders(
        data, size=cfg.size, item_size=max(p["item_size"], cfg.size), bs=cfg.bs,
        workers=cfg.workers, flip=p["flip"], min_scale=p["min_scale"], device=device,
    )
    loss = CrossEntropyLossFlat() if cfg.eps == 0 else LabelSmoothingCrossEntropy(cfg.eps)
    name = cfg.name or f"{cfg.dataset}-{cfg.arch}-eps{cfg.eps:g}-noise{cfg.noise:g}-s{cfg.seed}"
    if run_dir is None and rank == 0:
        run_dir = new_run_dir(cfg.out, name)
    start = 0 if ckpt is None else ckpt["epoch"] + 1
    log = None
    if rank == 0:
        log = EpochLog(run_dir / "metrics.csv", echo=not progress, rows=ckpt["rows"] if ckpt else (),
                       start_epoch=start)
    learn = vision_learner(
        dls, arch, pretrained=cfg.pretrained, loss_func=loss,
        metrics=[error_rate, accuracy, NLL(), ECE(), Brier()],
        cbs=[c for c in (log, Checkpoint(run_dir and run_dir / CHECKPOINT, log, data_id(data), start)) if c],
        **extra,
    )
    if not learn.dls.after_batch.fs.filter(lambda t: isinstance(t, Normalize)):
        learn.dls.add_tfms([Normalize.from_stats(*imagenet_stats)], "after_batch")  # from scratch
    if not progress:
        learn.remove_cb(ProgressCallback)
        learn.logger = noop
    precision = ("fp16" if device.type == "cuda" else "fp32") if cfg.precision == "auto" else cfg.precision
    if precision == "fp16":
        learn.to_fp16()
    elif precision == "bf16":
        learn.to_bf16() if device.type == "cuda" else learn.add_cb(CPUAutocast())
    if ckpt is not None:
        load_checkpoint(learn, ckpt)
        cbs = [*cbs, Restore(ckpt, rank)]
        if rank == 0:
            print(f"resuming {run_dir} after epoch {start} of {cfg.epochs}", flush=True)
            for stray in run_dir.glob(".*.tmp"):  # left by a kill during an atomic write
                stray.unlink(missing_ok=True)
    elif rank == 0:
        config = dataclasses.asdict(cfg) | {"precision_used": precision, "data_folder": str(data.folder.resolve()),
                                            "processes": world}
        atomic_write_json(run_dir / "config.json", config)
        atomic_write_json(run_dir / "env.json", environment(device))
    if rank:  # model init and label noise come from cfg.seed on every rank; augmentation should not
        set_seed(cfg.seed + rank, reproducible=True)

    t_fit = time.perf_counter()
    try:
        if world > 1:
            cuda = device.type == "cuda"
            with learn.distrib_ctx(sync_bn=cuda, cpu=not cuda):  # SyncBatchNorm needs GPUs
                learn.fit_one_cycle(cfg.epochs, cfg.lr, cbs=cbs, start_epoch=start)
        else:
            learn.fit_one_cycle(cfg.epochs, cfg.lr, cbs=cbs, start_epoch=start)
    except KeyboardInterrupt:
        raise Interrupted(run_dir) from None
    fit_s = time.perf_counter() - t_fit
    if rank:  # the model is the same on every rank; rank 0 evaluates it and writes the results
        _barrier()
        return {}
    learn.remove_cbs([c for c in learn.cbs if isinstance(c, (EpochLog, Checkpoint))])  # get_preds replays events
    learn.remove_cbs([c for c in learn.cbs if isinstance(c, ProgressCallback) and not progress])

    with _single_process():
        probs, targets = learn.get_preds(dl=dls.valid)
    n_seen = (cfg.epochs - start) * len(dls.train) * cfg.bs  # drop_last: full batches only
    final = {
        "error_rate": float((probs.argmax(1) != targets).float().mean()),
        "accuracy": float((probs.argmax(1) == targets).float().mean()),
        "nll": nll(probs, targets),
        "ece": ece(probs, targets),
        "brier": brier(probs, targets),
        "epochs": cfg.epochs,
        "n_train": len(data.train),
        "n_valid": len(data.valid),
        "skipped_images": len(data.skipped),
        "noisy_labels": data.noisy,
        "fit_time_s": round(fit_s, 3),
        "wall_time_s": round(time.perf_counter() - t0, 3),
        "images_per_s": round(n_seen / fit_s, 1) if fit_s > 0 and n_seen else None,
        "run_dir": str(run_dir),
    }
    # for temperature scaling and reliability plots later (lsmooth.sweep.load_preds)
    atomic_save_torch(run_dir / "valid_preds.pt", {"probs": probs.float(), "targets": targets.long()})
    atomic_write_json(run_dir / "final.json", final)
    (run_dir / CHECKPOINT).unlink(missing_ok=True)  # finished: ~3x the model's size, no longer needed
    print(
        f"{cfg.dataset} {cfg.arch} eps={cfg.eps:g} noise={cfg.noise:g} seed={cfg.seed}: "
        f"error {final['error_rate']:.2%} (accuracy {final['accuracy']:.2%}) | "
        f"NLL {final['nll']:.4f} | ECE {final['ece']:.4f} | Brier {final['brier']:.4f} | "
        f"{final['wall_time_s']:.1f} s, {final['images_per_s'] or 0:.0f} train images/s\n"
        f"run folder: {run_dir}",
        flush=True,
    )
    _barrier()
    return final


def dry_run(cfg: Config) -> ImageData:
    """Print the resolved config and the data summary; train nothing, write nothing."""
    cfg = resolve(cfg)
    print(json.dumps(dataclasses.asdict(cfg), indent=2))
    data = load_data(cfg)
    print(data.summary())
    print("dry run: nothing trained, nothing written")
    return data


# ---------------------------------------------------------------- command line
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


RESUME_FLAGS = {"resume", "threads", "workers"}  # what --resume accepts; the rest comes from config.json


def _parser() -> _Parser:
    ap = _Parser(prog=PROG, description=__doc__.splitlines()[0],
                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--dataset", choices=list(PRESETS), default="pets")
    ap.add_argument("--data", metavar="PATH", help="local folder in the Pets layout")
    ap.add_argument("--arch", help="torchvision or timm model name (default: per dataset)")
    ap.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                    help="ImageNet weights (default: yes for pets, no for digits/tiny)")
    ap.add_argument("--eps", type=float, default=EPS, help="label smoothing; 0 = CrossEntropyLossFlat")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--lr", type=float, help="fit_one_cycle lr_max")
    ap.add_argument("--bs", type=int, help="batch size (per process when launched on several)")
    ap.add_argument("--size", type=int, help="training image size in pixels")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--noise", type=float, default=NOISE, metavar="RATE",
                    help="fraction of training labels corrupted, in [0, 1)")
    ap.add_argument("--noise-kind", choices=NOISE_KINDS, default=NOISE_KIND)
    ap.add_argument("--out", default=OUT, metavar="DIR", help="run folders go here")
    ap.add_argument("--workers", type=int, help="DataLoader workers (default: 0 on CPU)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--precision", choices=PRECISIONS, default=PRECISION)
    ap.add_argument("--name", help="run folder name (default: from the settings)")
    ap.add_argument("--dry-run", action="store_true", help="print config and data summary only")
    ap.add_argument("--resume", metavar="RUN_DIR",
                    help="continue an interrupted run from its last epoch (settings from its config.json)")
    return ap


def parse_args(argv=None) -> argparse.Namespace:
    return _parser().parse_args(argv)


def _given(argv) -> set[str]:
    """The flags written on the command line (not filled from defaults)."""
    ap = _parser()
    for action in ap._actions:
        action.default = argparse.SUPPRESS
    return set(vars(ap.parse_args(argv)))


def main(argv=None) -> int:
    args = vars(parse_args(argv))
    dry, run = args.pop("dry_run"), args.pop("resume")
    try:
        if run is not None:
            extra = sorted(_given(argv) - RESUME_FLAGS)
            if extra:
                flags = ", ".join("--" + f.replace("_", "-") for f in extra)
                raise ConfigError(f"--resume takes the settings from {run}/config.json; drop {flags}")
            resume(run, threads=args["threads"], workers=args["workers"])
        elif dry:
            dry_run(Config(**args))
        else:
            train(Config(**args))
    except (ConfigError, DataError, WeightsUnavailable) as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        where = getattr(e, "run_dir", None)
        if where is not None and (where / CHECKPOINT).exists():
            print(f"{PROG}: interrupted; continue with: python recipes/pets.py --resume {where}", file=sys.stderr)
        else:
            print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
