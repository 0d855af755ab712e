"""Does the loss cost anything in training? Steps/s of two losses alternating batch by batch in one run.

Lesson 1 in fastai on the offline ``digits`` stand-in (lsmooth.data writes it into data/), with the
recipe's digits settings (recipes/pets.py: resnet18 from scratch, 16 px, batch 64, one thread).
The loss alternates batch by batch: ``--pair fastai`` (default) ``LabelSmoothingCrossEntropy(0.1)``
against fastai's ``CrossEntropyLossFlat()``; ``--pair online`` online label smoothing (its loss, and
the statistics it gathers after each of its steps) against uniform smoothing. Each training step is
timed from ``before_batch`` to ``after_step`` (forward, loss, backward, optimizer step; data loading
is the same for both and left out). Drift on a shared machine hits both losses alike, so the ratio
of the two median step times is the images/s ratio the loss alone causes.

    python -m benchmarks.bench_recipe                # 2 epochs
    python -m benchmarks.bench_recipe --epochs 6 --pair online
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

# fastai's import calls torch.jit.script, deprecated in recent torch: a line of noise on stderr.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)

import torch  # noqa: E402
from fastai.vision.all import (  # noqa: E402
    Callback,
    CategoryBlock,
    CrossEntropyLossFlat,
    DataBlock,
    ImageBlock,
    Normalize,
    RandomSplitter,
    RegexLabeller,
    Resize,
    get_image_files,
    imagenet_stats,
    resnet18,
    set_seed,
    using_attr,
    vision_learner,
)

from lsmooth import LabelSmoothingCrossEntropy, OnlineLabelSmoothingCrossEntropy  # noqa: E402
from lsmooth.data import stand_in  # noqa: E402

BS = 64


PAIRS = {  # name: the two losses that alternate, the first measured against the second
    "fastai": lambda k: {"lsmooth": LabelSmoothingCrossEntropy(0.1), "CrossEntropyLossFlat": CrossEntropyLossFlat()},
    "online": lambda k: {"online α=0.5": OnlineLabelSmoothingCrossEntropy(k, 0.5),
                         "uniform eps=0.1": LabelSmoothingCrossEntropy(0.1)},
}


class AlternateLoss(Callback):
    """Swap the loss every training batch and time each step; online smoothing's statistics are gathered after
    its own steps' losses and turned into targets after each epoch, as ``lsmooth.callbacks.OnlineLabelSmoothing``
    does (inside the timed step: its cost is the point)."""

    order = -100  # before every other callback's before_batch, so the timer covers them all

    def __init__(self, losses: dict):
        self.losses, self.times = losses, {name: [] for name in losses}

    def before_batch(self):
        if self.training:
            self.current = list(self.losses)[self.iter % 2]
            self.learn.loss_func = self.losses[self.current]
            self.start = time.perf_counter()

    def after_loss(self):
        if self.training and hasattr(self.learn.loss_func, "update"):
            self.learn.loss_func.update(self.pred, *self.yb)

    def after_step(self):
        self.times[self.current].append(time.perf_counter() - self.start)

    def after_train(self):
        for loss in self.losses.values():
            if hasattr(loss, "next_epoch"):
                loss.next_epoch()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--pair", choices=PAIRS, default="fastai",
                    help="fastai: lsmooth against CrossEntropyLossFlat; online: online smoothing against uniform")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    set_seed(0, reproducible=True)
    files = get_image_files(stand_in("digits")).sorted()
    digits = DataBlock(blocks=(ImageBlock, CategoryBlock), get_y=using_attr(RegexLabeller(r"^(\d+)_\d+\.png$"), "name"),
                       splitter=RandomSplitter(0.2, seed=42), item_tfms=Resize(16))  # fmt: skip
    dls = digits.dataloaders(files, bs=BS, num_workers=0)
    timer = AlternateLoss(PAIRS[args.pair](dls.c))
    learn = vision_learner(dls, resnet18, pretrained=False, loss_func=CrossEntropyLossFlat(), cbs=[timer])
    learn.dls.add_tfms([Normalize.from_stats(*imagenet_stats)], "after_batch")
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(args.epochs, 1e-2)
    med = {name: statistics.median(ts) for name, ts in timer.times.items()}
    print(f"\ndigits, {args.epochs} epochs, torch {torch.__version__}, {torch.get_num_threads()} thread; "
          "training steps alternate between the two losses")  # fmt: skip
    for name, ts in timer.times.items():
        print(f"  {name:22s} {len(ts):4d} steps, median {1e3 * med[name]:7.2f} ms/step, {BS / med[name]:7.0f} images/s")
    first, second = timer.losses
    print(f"images/s {first} ÷ {second} = {med[second] / med[first]:.3f}"
          + (" (target ≥ 0.99)" if args.pair == "fastai" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
