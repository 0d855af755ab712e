"""What do lsmooth's run pieces cost? Lesson 1 bare against the same lesson with RecordRun and ExactResume.

Lesson 1 on the offline digits stand-in with pets.py's digits settings (ResNet18 from scratch, 16 px, batch 64,
one thread), label smoothing 0.1. Each pair runs it twice, in random order, each run in a fresh process: bare
(``vision_learner`` + ``fit_one_cycle``), and with ``cbs=[RecordRun(), ExactResume()]`` (what pets.py adds: the
run folder, and a checkpoint after every epoch, fsync'ed). The wall time of ``fit_one_cycle`` is timed in both;
the ratio (with ÷ bare) is taken within each pair, so the machine's drift hits both alike; the mean ratio gets a
95% Student-t interval over the pairs. The checkpoint's own time per epoch is reported too (the piece to watch
on a GPU, where an epoch is shorter).

    python -m benchmarks.bench_record                 # 8 pairs, 3 epochs
    python -m benchmarks.bench_record --pairs 12 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script", category=FutureWarning)


def one_run(variant: str, epochs: int, folder: str) -> dict:
    """Train once in this process; the fit's wall time and, with the pieces, each checkpoint's time."""
    import torch
    from fastai.vision.all import (
        CategoryBlock,
        DataBlock,
        ImageBlock,
        Normalize,
        ProgressCallback,
        RandomSplitter,
        RegexLabeller,
        Resize,
        aug_transforms,
        get_image_files,
        imagenet_stats,
        noop,
        resnet18,
        set_seed,
        using_attr,
        vision_learner,
    )

    import lsmooth.resume
    from lsmooth import LabelSmoothingCrossEntropy
    from lsmooth.callbacks import RecordRun
    from lsmooth.data import stand_in
    from lsmooth.resume import ExactResume

    torch.set_num_threads(1)
    set_seed(0, reproducible=True)
    files = get_image_files(stand_in("digits")).sorted()
    block = DataBlock(blocks=(ImageBlock, CategoryBlock), get_y=using_attr(RegexLabeller(r"^(.+)_\d+\.\w+$"), "name"),
                      splitter=RandomSplitter(0.2, seed=42), item_tfms=Resize(16),
                      batch_tfms=aug_transforms(size=16, min_scale=1.0, do_flip=False))
    dls = block.dataloaders(files, bs=64, num_workers=0)
    set_seed(0, reproducible=True)
    cbs = [RecordRun(), ExactResume()] if variant == "pieces" else []
    learn = vision_learner(dls, resnet18, pretrained=False, loss_func=LabelSmoothingCrossEntropy(0.1), path=folder,
                           cbs=cbs)
    learn.dls.add_tfms([Normalize.from_stats(*imagenet_stats)], "after_batch")
    learn.remove_cb(ProgressCallback)
    learn.logger = noop
    saves, real = [], lsmooth.resume.atomic_save_torch

    def timed(path, obj):
        t = time.perf_counter()
        real(path, obj)
        saves.append(time.perf_counter() - t)

    lsmooth.resume.atomic_save_torch = timed
    t0 = time.perf_counter()
    learn.fit_one_cycle(epochs, 1e-2)
    return {"fit_s": time.perf_counter() - t0, "checkpoint_s": sum(saves) / epochs if saves else 0.0}


def t_interval(x: list[float]) -> tuple[float, float]:
    from scipy.stats import t

    half = t.ppf(0.975, len(x) - 1) * statistics.stdev(x) / len(x) ** 0.5
    return statistics.mean(x) - half, statistics.mean(x) + half


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="of the order within each pair")
    ap.add_argument("--_run", choices=("bare", "pieces"), help=argparse.SUPPRESS)
    ap.add_argument("--_folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.pairs < 2 and not args._run:
        ap.error(f"--pairs {args.pairs}: an interval needs at least 2")
    if args._run:
        print(json.dumps(one_run(args._run, args.epochs, args._folder)))
        return
    order, ratios, ckpt = random.Random(args.seed), [], []
    print(f"{args.pairs} pairs of digits runs ({args.epochs} epochs), each run in a fresh process", flush=True)
    for pair in range(args.pairs):
        times = {}
        for variant in order.sample(["bare", "pieces"], 2):
            with tempfile.TemporaryDirectory() as folder:
                out = subprocess.run([sys.executable, "-m", "benchmarks.bench_record", "--_run", variant, "--_folder",
                                      folder, "--epochs", str(args.epochs)], capture_output=True, text=True, check=True)
            times[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        ratios.append(times["pieces"]["fit_s"] / times["bare"]["fit_s"])
        ckpt.append(times["pieces"]["checkpoint_s"])
        print(f"pair {pair + 1}: bare {times['bare']['fit_s']:.2f} s, with RecordRun + ExactResume "
              f"{times['pieces']['fit_s']:.2f} s, ratio {ratios[-1]:.3f}; checkpoint {1000 * ckpt[-1]:.0f} ms/epoch",
              flush=True)
    lo, hi = t_interval(ratios)
    print(f"fit time with the pieces ÷ bare: mean {statistics.mean(ratios):.3f}, 95% interval [{lo:.3f}, {hi:.3f}] "
          f"over {len(ratios)} pairs (single pairs {min(ratios):.3f}-{max(ratios):.3f}); checkpoint "
          f"{1000 * statistics.median(ckpt):.0f} ms per epoch (median)")


if __name__ == "__main__":
    main()
