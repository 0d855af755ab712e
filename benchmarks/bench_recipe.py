#!/usr/bin/env python
"""Does the loss cost anything in training? Steps/s with lsmooth vs fastai's CrossEntropyLossFlat.

One training run of ``lsmooth.train.train`` (what ``recipes/pets.py`` runs; offline ``digits`` preset by
default) in which the loss alternates batch by batch: even batches use
``LabelSmoothingCrossEntropy(0.1)``, odd ones ``CrossEntropyLossFlat()``. Each training step is
timed from ``before_batch`` to ``after_step`` (forward, loss, backward, optimizer step; the data
loading is the same for both and left out). Drift on a shared machine hits both losses alike, so
the ratio of the two median step times is the images/s ratio the loss alone causes.

    python benchmarks/bench_recipe.py                # digits, 2 epochs
    python benchmarks/bench_recipe.py --epochs 4 --dataset tiny
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings

# fastai's import calls torch.jit.script, deprecated in recent torch: a line of noise on stderr.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)

import torch  # noqa: E402
from fastai.callback.core import Callback  # noqa: E402
from fastai.losses import CrossEntropyLossFlat  # noqa: E402

from lsmooth.train import Config, resolve, train  # noqa: E402


class AlternateLoss(Callback):
    """Swap the loss every training batch and time each step."""

    order = -100  # before every other callback's before_batch, so the timer covers them all

    def __init__(self):
        self.times = {"lsmooth": [], "CrossEntropyLossFlat": []}
        self.other = CrossEntropyLossFlat()

    def before_fit(self):
        self.lsmooth = self.learn.loss_func

    def before_batch(self):
        if not self.training:
            return
        self.current = "lsmooth" if self.iter % 2 == 0 else "CrossEntropyLossFlat"
        self.learn.loss_func = self.lsmooth if self.current == "lsmooth" else self.other
        self.start = time.perf_counter()

    def after_step(self):
        self.times[self.current].append(time.perf_counter() - self.start)

    def after_fit(self):
        self.learn.loss_func = self.lsmooth


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits", choices=["digits", "tiny"])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--size", type=int, default=16, help="image size (compare.py's digits default)")
    args = ap.parse_args(argv)
    timer = AlternateLoss()
    with tempfile.TemporaryDirectory() as out:
        cfg = Config(dataset=args.dataset, eps=0.1, epochs=args.epochs, size=args.size, out=out,
                          progress=False, seed=0)
        train(cfg, cbs=[timer])
    med = {name: statistics.median(ts) for name, ts in timer.times.items()}
    bs = resolve(cfg).bs
    print(f"\n{args.dataset}, {args.epochs} epochs, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"training steps alternate between the two losses")
    for name, ts in timer.times.items():
        print(f"  {name:22s} {len(ts):4d} steps, median {1e3 * med[name]:7.2f} ms/step, {bs / med[name]:7.0f} images/s")
    ratio = med["CrossEntropyLossFlat"] / med["lsmooth"]
    print(f"images/s lsmooth ÷ CrossEntropyLossFlat = {ratio:.3f} (target ≥ 0.99)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
