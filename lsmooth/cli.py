"""The plumbing of ``recipes/pets.py``: its flags resolved and checked, its run folder, one-line errors.

The recipe's ``main`` reads ``with Run(main, locals(), LESSON, STAND_INS) as run:``; ``run.eps``,
``run.epochs``, ... are then its settings, every preset filled in and every value checked, and
``run.folder`` is its run folder. Inside the ``with``, a bad input of any kind (a setting, the data,
the download, the weights, a checkpoint: a ``ValueError`` or an error class of lsmooth's) ends the
command with one line ``pets.py: error: ...`` and exit code 1, and Ctrl-C with the command that resumes
the run (exit code 130).
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import io
import json
import math
import os
import sys
import time
from pathlib import Path

from fastcore.script import CliError

from lsmooth.data import NOISE_KINDS, DataError, image_folder, stand_in
from lsmooth.runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    FINAL_FILE,
    INCIDENTAL,
    arm_label,
    check_writable,
    slug,
    usable_cpus,
)
from lsmooth.weights import pretrained_kwargs, weights_hint

__all__ = ["PRECISIONS", "SMOOTHING", "Run", "SettingsError", "resolve_arch"]

SMOOTHING = ("uniform", "others", "two-stage", "online", "penalty")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_COMMAND_ONLY = {"resume", "dry_run", "check"}  # what the command does, not a setting of the run
_RESUMABLE = {"resume", "threads", "workers", "progress"}  # what --resume accepts; the rest is config.json's


class SettingsError(ValueError):
    """A setting that cannot be used; the message (one line) names the flag and what is allowed."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _int(x, low: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= low


def _real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def resolve_arch(name: str):
    """The torchvision model function called ``name`` (what fastai examples pass), else the timm name."""
    import timm
    import torchvision

    tv = torchvision.models.list_models(module=torchvision.models)
    if name in tv:
        return getattr(torchvision.models, name)
    if timm.is_model(name):
        return name
    close = difflib.get_close_matches(name, list(dict.fromkeys(tv + timm.list_models())), n=3)
    raise SettingsError(f"--arch {name!r} is not a torchvision or timm model; "
                        + (f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"))


def _check(s: dict, device: bool = True) -> None:
    """SettingsError for the first bad value (the losses check eps, alpha and beta themselves); ``device``:
    also whether this machine has what the settings need (fp16: CUDA)."""
    import torch

    checks = [
        ("smoothing", s["smoothing"] in SMOOTHING, f"use one of {', '.join(SMOOTHING)}"),
        ("epochs", _int(s["epochs"], 1), "must be an integer >= 1"),
        ("lr", _real(s["lr"]) and s["lr"] > 0, "must be a positive number"),
        ("bs", _int(s["bs"], 1), "must be an integer >= 1"),
        ("size", _int(s["size"], 8), "must be an integer >= 8 pixels"),
        ("item_size", _int(s["item_size"], s["size"]), f"must be an integer >= --size ({s['size']})"),
        ("min_scale", _real(s["min_scale"]) and 0 < s["min_scale"] <= 1, "must be in (0, 1]"),
        ("valid_pct", _real(s["valid_pct"]) and 0 < s["valid_pct"] < 1, "must be in (0, 1)"),
        ("split_seed", _int(s["split_seed"], 0), "must be an integer >= 0"),
        ("seed", _int(s["seed"], 0), "must be an integer >= 0"),
        ("noise", _real(s["noise"]) and 0 <= s["noise"] < 1, "must be in [0, 1)"),
        ("noise_kind", s["noise_kind"] in NOISE_KINDS, f"use one of {', '.join(NOISE_KINDS)}"),
        ("precision", s["precision"] in PRECISIONS[1:], f"use one of {', '.join(PRECISIONS)}"),
        ("precision", s["precision"] != "fp16" or not device or torch.cuda.is_available(),
         "fp16 needs a CUDA GPU; use fp32 or bf16"),
        ("workers", _int(s["workers"], 0), "must be an integer >= 0"),
        ("threads", _int(s["threads"], 1), "must be an integer >= 1"),
    ]
    for name, ok, allowed in checks:
        if not ok:
            raise SettingsError(f"{_flag(name)} {s[name]!r}: {allowed}")
    resolve_arch(s["arch"])


class Run:
    """One recipe run: its settings (attributes), its run folder, and errors as one line (module docstring).

    ``main``: the recipe's ``@call_parse`` function; ``flags``: its parameters (its ``locals()``);
    ``lesson``: the values of the parameters left at None; ``stand_ins``: per offline dataset, the
    values that differ from the lesson's.
    """

    def __init__(self, main, flags: dict, lesson: dict, stand_ins: dict):
        self.prog, self.folder = Path(inspect.getfile(inspect.unwrap(main))).name, None
        self._defaults = {k: p.default for k, p in inspect.signature(main).parameters.items()}
        self._flags = {k: flags[k] for k in self._defaults}  # its parameters only, not the names it imported
        self._presets, self._stand_ins = lesson, stand_ins

    def __enter__(self) -> Run:
        s = self._resumed() if self._flags.get("resume") else self._flags
        if s["dataset"] not in ("pets", *self._stand_ins):
            raise CliError(f"{self.prog}: error: --dataset {s['dataset']!r}: use one of pets, "
                           f"{', '.join(self._stand_ins)}")
        preset = self._presets | self._stand_ins.get(s["dataset"], {})
        preset_item_size = s["item_size"] is None
        s = {k: preset[k] if v is None and k in preset else v for k, v in s.items()}
        if preset_item_size and _int(s["size"], 1):  # a preset's Resize, never below the --size given
            s["item_size"] = max(s["item_size"], s["size"])
        import torch

        cuda = torch.cuda.is_available()
        auto = {"precision": "fp16" if cuda else "fp32", "workers": min(8, usable_cpus()) if cuda else 0,
                "threads": torch.get_num_threads(), "progress": sys.stdout.isatty(),
                "name": f"{s['dataset']}-{s['arch']}-{slug(arm_label(s))}-s{s['seed']}"}
        s |= {k: v for k, v in auto.items() if s.get(k) is None or s.get(k) == "auto"}
        self.settings = s
        try:
            _check(s, device=not s["check"])  # a check may run where the jobs' GPUs are not (a login node)
        except SettingsError as e:
            raise CliError(f"{self.prog}: error: {e}") from None
        torch.set_num_threads(s["threads"])
        from lsmooth.distributed import setup

        setup()  # several processes (torchrun, accelerate launch): the process group
        self.folder = self._folder()
        return self

    def __exit__(self, kind, error, tb):
        if isinstance(error, KeyboardInterrupt):
            from lsmooth.resume import finish_writes

            finish_writes()  # the last epoch's checkpoint, on its way to disk
            folder = self.folder if self.folder and (self.folder / CHECKPOINT_FILE).exists() else None
            hint = f"; continue with: python {sys.argv[0]} --resume {folder}" if folder else ""
            print(f"{self.prog}: interrupted{hint}", file=sys.stderr)
            raise SystemExit(130) from None
        if os.environ.get("LSMOOTH_TRACEBACK") == "1":  # for a bug report: the whole traceback
            return False
        if isinstance(error, ValueError) or type(error).__module__.startswith("lsmooth."):  # raised for the user
            raise CliError(f"{self.prog}: error: {_message(error)}") from None
        return False

    def __getattr__(self, name: str):
        try:
            return self.__dict__["settings"][name]
        except KeyError:
            raise AttributeError(name) from None

    # ---------------------------------------------------------------- settings
    def _resumed(self) -> dict:
        """The settings of the run folder given to --resume; flags other than _RESUMABLE are refused."""
        folder = Path(self._flags["resume"]).expanduser()
        try:
            saved = json.loads((folder / CONFIG_FILE).read_text())
        except FileNotFoundError:
            raise CliError(f"{self.prog}: error: --resume {str(folder)!r}: no {CONFIG_FILE} there; not a run "
                           f"folder") from None
        given = sorted(k for k, v in self._flags.items() if k not in _RESUMABLE and v != self._defaults[k])
        if given:
            raise CliError(f"{self.prog}: error: --resume takes the settings from {folder}/{CONFIG_FILE}; "
                           f"drop {', '.join(map(_flag, given))}")
        s = {k: v if k in _RESUMABLE else saved.get(k, v) for k, v in self._flags.items()}  # _RESUMABLE: resolved anew
        return s | {"out": str(folder.parent), "name": folder.name, "resume": None}

    def _folder(self) -> Path:
        """The run folder (created when the fit starts): exactly <out>/<name> when named, else <out>/<time>-<name>."""
        out, s = Path(self.out).expanduser(), self.settings
        try:
            check_writable(out)
        except OSError as e:
            raise CliError(f"{self.prog}: error: --out: {e}") from None
        if self._flags.get("name") or self._flags.get("resume"):
            folder = out / s["name"]
            if (folder / CONFIG_FILE).exists():
                saved = json.loads((folder / CONFIG_FILE).read_text())
                differ = sorted(k for k in s if k not in INCIDENTAL | _COMMAND_ONLY and k in saved and saved[k] != s[k])
                if differ:
                    raise CliError(f"{self.prog}: error: {folder} holds a run with other settings "
                                   f"({', '.join(f'{_flag(k)} {saved[k]!r}' for k in differ)}); use another --name")
            return folder
        stem = out / f"{time.strftime('%Y%m%d-%H%M%S')}-{s['name']}"
        return next(p for p in (stem, *(stem.with_name(f"{stem.name}-{i}") for i in range(2, 1000))) if not p.exists())

    def finished(self) -> bool:
        """Whether the run folder holds a finished run, which it then says: a sweep's rerun job does nothing."""
        done = (self.folder / FINAL_FILE).exists()
        if done:
            print(f"{self.folder} already finished; its final metrics are in {FINAL_FILE}", flush=True)
        return done

    def kwargs_for(self, func) -> dict:
        """The settings named like ``func``'s parameters."""
        return {k: self.settings[k] for k in inspect.signature(func).parameters if k in self.settings}

    # ---------------------------------------------------------------- data, weights, callbacks
    def data_folder(self) -> Path:
        """--data, the Pets images (downloaded once; offline: DataError naming every way out) or a stand-in."""
        from lsmooth.distributed import rank0_first

        if self.data is not None:
            folder = Path(self.data).expanduser()
        elif self.dataset == "pets":
            folder = rank0_first(_download_pets, self.arch if self.pretrained else None)
        else:
            folder = rank0_first(stand_in, self.dataset)
        self.settings["data"] = str(image_folder(folder).resolve())  # recorded, and what --resume reads
        return Path(self.settings["data"])

    def weights(self) -> dict:
        """Extra ``vision_learner`` kwargs loading cached weights; downloads them, or one line offline."""
        return pretrained_kwargs(resolve_arch(self.arch)) if self.pretrained else {}

    def callbacks(self, dls) -> list:
        """RecordRun (every setting to config.json), ExactResume, and the precision's callback."""
        import torch
        from fastai.callback.fp16 import MixedPrecision

        from lsmooth.callbacks import CPUAutocast, RecordRun
        from lsmooth.resume import ExactResume

        self._check_batches(dls)
        config = {k: v for k, v in self.settings.items() if k not in _COMMAND_ONLY}
        cbs = [RecordRun(config, echo=not self.progress), ExactResume()]
        if self.precision == "fp16":
            cbs.append(MixedPrecision())
        elif self.precision == "bf16":
            cbs.append(MixedPrecision(amp_mode="bf16") if torch.cuda.is_available() else CPUAutocast())
        return cbs

    def _check_batches(self, dls) -> None:
        if len(dls.train) == 0:  # fastai drops the last partial training batch
            raise SettingsError(f"--bs {self.bs}: larger than the training set ({len(dls.train_ds)} images)")

    def describe(self, dls) -> None:
        """--check: the data and the batch size checked, the weights fetched; --dry-run: the settings, the data,
        whether the weights are there. Nothing trained or written."""
        self._check_batches(dls)
        if self.check:
            self.weights()  # downloaded now, for the jobs of a sweep (or one line offline)
            return print(f"{self.prog}: settings ok: {self.folder}")
        print(json.dumps(self.settings, indent=2))
        print(f"data: {len(dls.train_ds) + len(dls.valid_ds)} images, {dls.c} classes: {len(dls.train_ds)} train / "
              f"{len(dls.valid_ds)} valid, {len(dls.train)} batches of {self.bs} per epoch")
        hint = weights_hint(self.arch) if self.pretrained else ""
        print(f"dry run: nothing trained, nothing written{hint}")


def _message(error: BaseException) -> str:
    """The error's message on one line, without the prefix fastai adds to errors raised in a callback."""
    text = str(error)
    if text.startswith("Exception occured in `") and ":\n\t" in text:  # fastai's spelling
        text = text.split(":\n\t", 1)[1]
    return " ".join(text.split())


def _download_pets(arch: str | None) -> Path:
    from fastai.data.external import URLs, untar_data

    quiet = contextlib.redirect_stdout(io.StringIO()) if not sys.stdout.isatty() else contextlib.nullcontext()
    try:
        with quiet:  # a progress bar in a log is noise
            return untar_data(URLs.PETS) / "images"
    except Exception as e:  # noqa: BLE001 - urllib, fastdownload and tarfile each raise their own
        reason = " ".join(str(getattr(e, "reason", "") or e).split()) or type(e).__name__
        raise DataError(f"could not download Oxford-IIIT Pets ({URLs.PETS}): {reason}. Offline? Pass --data PATH to a "
                        f"local copy of its images/ folder, or --dataset digits (no download at all)"
                        f"{weights_hint(arch) if arch else ''}") from None
