"""Does the loss cost anything in training? Steps/s with lsmooth vs fastai's CrossEntropyLossFlat.

Lesson 1 in fastai on the offline ``digits`` stand-in (lsmooth.data writes it into data/), with the
recipe's digits settings (recipes/pets.py: resnet18 from scratch, 16 px, batch 64, one thread).
The loss alternates batch by batch: even batches use ``LabelSmoothingCrossEntropy(0.1)``, odd
ones ``CrossEntropyLossFlat()``. Each training step is timed from ``before_batch`` to
``after_step`` (forward, loss, backward, optimizer step; data loading is the same for both and
left out). Drift on a shared machine hits both losses alike, so the ratio of the two median step
times is the images/s ratio the loss alone causes.

    python -m benchmarks.bench_recipe                # 2 epochs
    python -m benchmarks.bench_recipe --epochs 6
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

from lsmooth import LabelSmoothingCrossEntropy  # noqa: E402
from lsmooth.data import stand_in  # noqa: E402

BS = 64


class AlternateLoss(Callback):
    """Swap the loss every training batch and time each step."""

    order = -100  # before every other callback's before_batch, so the timer covers them all

    def __init__(self):
        self.times = {"lsmooth": [], "CrossEntropyLossFlat": []}
        self.losses = {"lsmooth": LabelSmoothingCrossEntropy(0.1), "CrossEntropyLossFlat": CrossEntropyLossFlat()}

    def before_batch(self):
        if self.training:
            self.current = "lsmooth" if self.iter % 2 == 0 else "CrossEntropyLossFlat"
            self.learn.loss_func = self.losses[self.current]
            self.start = time.perf_counter()

    def after_step(self):
        self.times[self.current].append(time.perf_counter() - self.start)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    set_seed(0, reproducible=True)
    files = get_image_files(stand_in("digits")).sorted()
    digits = DataBlock(blocks=(ImageBlock, CategoryBlock), get_y=using_attr(RegexLabeller(r"^(\d+)_\d+\.png$"), "name"),
                       splitter=RandomSplitter(0.2, seed=42), item_tfms=Resize(16))  # fmt: skip
    dls = digits.dataloaders(files, bs=BS, num_workers=0)
    timer = AlternateLoss()
    learn = vision_learner(dls, resnet18, pretrained=False, loss_func=CrossEntropyLossFlat(), cbs=[timer])
    learn.dls.add_tfms([Normalize.from_stats(*imagenet_stats)], "after_batch")
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(args.epochs, 1e-2)
    med = {name: statistics.median(ts) for name, ts in timer.times.items()}
    print(f"\ndigits, {args.epochs} epochs, torch {torch.__version__}, {torch.get_num_threads()} thread; "
          "training steps alternate between the two losses")  # fmt: skip
    for name, ts in timer.times.items():
        print(f"  {name:22s} {len(ts):4d} steps, median {1e3 * med[name]:7.2f} ms/step, {BS / med[name]:7.0f} images/s")
    ratio = med["CrossEntropyLossFlat"] / med["lsmooth"]
    print(f"images/s lsmooth ÷ CrossEntropyLossFlat = {ratio:.3f} (target ≥ 0.99)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
