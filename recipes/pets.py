"""Oxford-IIIT Pets, ResNet34, fit_one_cycle(4): fastai lesson 1, with and without label smoothing.

Published, not measured here: error 7.1% without smoothing (fastai course-v3 lesson 1), 7.5% with it (seed article).
Measured here (results/compare-digits/summary.json):
    digits, resnet18, 8 epochs, 3 paired seeds, 2-core CPU: error eps=0 1.30 ± 0.43%;
    difference per seed, mean [95% interval]: eps=0.1 -0.37 pts [-0.77, +0.03]
Run: python recipes/pets.py [--eps 0] [--dataset digits]; every flag: --help; more in recipes/README.md.
"""

import warnings
from argparse import BooleanOptionalAction
from typing import Annotated
from fastcore.script import call_parse

# fastai takes 6 s to import: the functions below import it, so that --help and a mistyped flag answer at once.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script", category=FutureWarning)  # fastai's, at import
LESSON = dict(arch="resnet34", pretrained=True, epochs=4, lr=3e-3, bs=64, size=224, item_size=460, min_scale=0.75,
              flip=True)  # fastbook ch. 5; lr: fastai v1's fit_one_cycle default
PETS_RE = r"^(.+)_\d+\.\w+$"  # great_pyrenees_17.jpg -> great_pyrenees (digits: 7_1234.png -> 7)


def get_dls(path, size, item_size, min_scale, flip, bs, valid_pct, split_seed, noise, noise_kind, seed, workers):
    "Lesson 1's data: labels from file names, an 80/20 split of the sorted files, Resize, then aug_transforms."
    from fastai.vision.all import (CategoryBlock, DataBlock, ImageBlock, RandomSplitter, RegexLabeller, Resize,
                                   aug_transforms, get_image_files, using_attr)
    from lsmooth.data import LabelNoise, SkipUnreadable

    files = get_image_files(path).sorted()  # sorted: the same split on every machine
    label = using_attr(RegexLabeller(PETS_RE), "name")
    pets = DataBlock(blocks=(ImageBlock, CategoryBlock),
                     get_y=LabelNoise(label, noise, noise_kind, seed),  # noise in training labels only
                     splitter=SkipUnreadable(RandomSplitter(valid_pct, seed=split_seed)),  # Pets has 2 broken JPEGs
                     item_tfms=Resize(item_size),
                     batch_tfms=aug_transforms(size=size, min_scale=min_scale, do_flip=flip))
    return pets.dataloaders(files, bs=bs, num_workers=workers)


def train(dls, loss_func, arch, pretrained, epochs, lr, path, cbs=(), progress=True, **kwargs):
    "Lesson 1's learner and fit, with lsmooth's calibration metrics; the callbacks `cbs` record the run into `path`."
    from fastai.vision.all import (Normalize, ProgressCallback, accuracy, error_rate, imagenet_stats, noop,
                                   vision_learner)
    from torchvision import models
    from lsmooth import ECE, NLL, Brier
    from lsmooth.distributed import distrib_ctx

    learn = vision_learner(dls, getattr(models, arch, arch), pretrained=pretrained, loss_func=loss_func, path=path,
                           metrics=[error_rate, accuracy, NLL(), ECE(), Brier()], cbs=list(cbs), **kwargs)
    if not pretrained:  # vision_learner normalises for pretrained weights only
        learn.dls.add_tfms([Normalize.from_stats(*imagenet_stats)], "after_batch")
    if not progress:  # a log, not a terminal: no bars (RecordRun(echo=True) prints each epoch's row)
        learn.remove_cb(ProgressCallback)
        learn.logger = noop
    with distrib_ctx(learn):  # several processes (torchrun, accelerate launch): fastai's DDP
        learn.fit_one_cycle(epochs, lr)
    return learn


def get_loss(smoothing, eps, alpha, beta):
    "The experiment's variable: the loss, and the callbacks some kinds of smoothing need (recipes/README.md)."
    from fastai.vision.all import CrossEntropyLossFlat
    from lsmooth import ConfidencePenaltyCrossEntropy, LabelSmoothingCrossEntropy
    from lsmooth.callbacks import OnlineLabelSmoothing, SmoothingSchedule, two_stage

    if smoothing == "online":  # its callback puts its own loss in place for the fit
        return CrossEntropyLossFlat(), [OnlineLabelSmoothing(alpha)]
    if smoothing == "penalty":
        return ConfidencePenaltyCrossEntropy(beta), []
    if eps == 0:  # the baseline: fastai's own cross-entropy
        return CrossEntropyLossFlat(), []
    loss = LabelSmoothingCrossEntropy(eps, spread="others" if smoothing == "others" else "uniform")
    return loss, [SmoothingSchedule(two_stage(eps))] if smoothing == "two-stage" else []


# Offline datasets that lsmooth.data writes into data/: small images, from scratch, seconds per epoch, one CPU thread
# (on the 2-core test machine, 2 threads took 15 s for 2 digits epochs alone and 188 s next to one other process).
STAND_INS = {
    "digits": dict(arch="resnet18", pretrained=False, epochs=8, lr=1e-2, size=16, item_size=16, min_scale=1.0,
                   flip=False, threads=1),  # 8x8 digits: 16 px loses nothing; a flipped 2 is not a 2
    "tiny": dict(arch="resnet18", pretrained=False, epochs=2, lr=1e-2, bs=32, size=32, item_size=32, threads=1),
}
Flag = lambda help: Annotated[bool, help, {"action": BooleanOptionalAction}]  # noqa: E731 - --x / --no-x


@call_parse
def main(
    eps: float = 0.1,  # label smoothing (uniform, others, two-stage); 0: fastai's plain cross-entropy
    smoothing: str = "uniform",  # uniform | others | two-stage | online | penalty
    alpha: float = 0.5,  # online: weight of the hard label (Zhang et al. 2021)
    beta: float = 0.1,  # penalty: weight of the entropy bonus (Pereyra et al. 2017)
    dataset: str = "pets",  # pets (download) | digits | tiny (offline stand-ins, generated in data/)
    data: str = None,  # a local folder in the Pets layout instead of the dataset's own
    arch: str = None,  # torchvision or timm model (pets: resnet34; stand-ins: resnet18)
    pretrained: Flag("start from ImageNet weights (pets: yes; stand-ins: no)") = None,
    epochs: int = None,  # fit_one_cycle epochs (pets: 4; digits: 8; tiny: 2)
    lr: float = None,  # fit_one_cycle lr_max (pets: 3e-3; stand-ins: 1e-2)
    bs: int = None,  # batch size, per process (64; tiny: 32)
    size: int = None,  # aug_transforms size in pixels (pets: 224; digits: 16; tiny: 32)
    item_size: int = None,  # Resize per item, at least --size (pets: 460; digits: 16; tiny: 32)
    min_scale: float = None,  # aug_transforms min_scale of the random crop (pets: 0.75; digits: 1)
    flip: Flag("random horizontal flips (pets: yes; digits: no)") = None,
    valid_pct: float = 0.2,  # RandomSplitter valid_pct
    split_seed: int = 42,  # RandomSplitter seed: every seed and arm trains on the same split
    seed: int = 42,  # training seed: init, batch order, augmentation, label noise
    noise: float = 0.0,  # fraction of training labels corrupted, in [0, 1)
    noise_kind: str = "symmetric",  # symmetric: to another class | uniform: redrawn from all classes
    precision: str = "auto",  # auto (fp16 on CUDA, else fp32) | fp32 | fp16 | bf16
    out: str = "runs",  # run folders go into <out>/<time>-<name>
    name: str = None,  # the run folder is then exactly <out>/<name>; an unfinished run there resumes
    resume: str = None,  # a run folder to finish with its settings (--threads, --workers, --progress: as given now)
    dry_run: bool = False,  # print the settings and the data, train nothing
    check: bool = False,  # check the settings and data, fetch the weights, train nothing (compare.py, before a sweep)
    threads: int = None,  # torch CPU threads (default: torch's; stand-ins: 1)
    workers: int = None,  # DataLoader worker processes (default: 0 on CPU, reproducible; on CUDA up to 8)
    progress: Flag("fastai's progress bars (default: when stdout is a terminal)") = None,
):
    "Lesson 1 with or without label smoothing: one run, recorded into its own folder (recipes/README.md)."
    from lsmooth.cli import Run

    with Run(main, locals(), LESSON, STAND_INS) as run:  # presets filled in, values checked, errors in one line
        from fastai.torch_core import rank_distrib, set_seed
        loss_func, cbs = get_loss(run.smoothing, run.eps, run.alpha, run.beta)  # the losses check their values
        if run.finished():  # a sweep's job run again: nothing to do
            return
        set_seed(run.seed, reproducible=True)  # DataLoader shuffling and augmentation draw from it, ...
        dls = get_dls(run.data_folder(), **run.kwargs_for(get_dls))  # --data, the download, or a stand-in
        if run.dry_run or run.check:
            return run.describe(dls)
        set_seed(run.seed + rank_distrib(), reproducible=True)  # ... and the init: RandomSplitter re-seeded torch
        train(dls, loss_func, **run.kwargs_for(train), path=run.folder, cbs=[*run.callbacks(dls), *cbs],
              **run.weights())  # pretrained weights from the cache or a download (one line offline)
