"""Label smoothing vs. cross-entropy, several seeds, paired: error rate, calibration, noisy labels.

Runs a grid of arms (smoothing eps x training-label noise) x seeds by calling ``train`` from
``recipes/pets.py`` in-process. The split is fixed (pets.SPLIT_SEED), so every arm of a seed
sees the same training and validation images and arms are compared seed by seed.

Offline default, measured on this repo's 2-core AMD EPYC CPU (torch 2.14, fastai 2.8, no GPU; the
cores were shared with other jobs, load average ~4.5), 313 s wall for the 6 runs:
    python recipes/compare.py
    -> digits, ResNet18 from scratch at 16 px, 8 epochs, 1 torch thread, eps {0, 0.1}, seeds {0, 1, 2}
    arm      error rate    NLL              ECE (15 bins)    Brier            T after TS   ECE after TS
    eps=0    1.02 ± 0.32%  0.0445 ± 0.0220  0.0103 ± 0.0031  0.0190 ± 0.0074  0.78 ± 0.29  0.0102 ± 0.0029
    eps=0.1  0.93 ± 0.32%  0.0883 ± 0.0047  0.0659 ± 0.0049  0.0191 ± 0.0028  0.43 ± 0.17  0.0094 ± 0.0014
    paired (eps=0.1 − eps=0), mean [95% t-interval]: error −0.09 pts [−0.89, +0.71]; ECE +0.0555
    [+0.0471, +0.0639]: no measurable error change; smoothing makes this easy problem under-confident.

Usage:
    python recipes/compare.py                                  # the default above
    python recipes/compare.py --eps -0.1 0 0.1 0.3 --noise 0 0.2 0.4 --seeds 0 1 2 \\
        --epochs 3 --out runs/noise-digits                     # notebook 3's noise sweep
    python recipes/compare.py --dataset pets --seeds 0 1 2     # the lesson-1 experiment (GPU)
    python recipes/compare.py --shard 1/2 --out DIR            # machine 1 of 2 ...
    python recipes/compare.py --shard 2/2 --out DIR            # ... machine 2 of 2
    python recipes/compare.py --merge DIR1 DIR2 --out DIR      # one summary from several folders

Rerunning a command resumes it: every finished (eps, noise, seed) is in ``<out>/results*.jsonl``
(one JSON line per run, appended with fsync as the run ends) and is skipped; a killed sweep loses
only the run in progress. ``<out>`` also gets sweep.json (the shared settings; a rerun with other
settings is refused), runs/ (one pets.py run folder per run), summary.csv / .json / .md and the
plots error_rate.png, curves.png, reliability.png (and noise.png for several noise rates).

Temperature scaling is fitted per run on the saved validation probabilities by 2-fold
cross-fitting: T is fitted on one half of the validation set and evaluated on the other, and vice
versa (see lsmooth.sweep.temperature_scaling), so the "after TS" numbers are not optimistic.
"""

from __future__ import annotations

import warnings

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import pets` from anywhere

import pets  # noqa: E402
import torch  # noqa: E402

from lsmooth.data import NOISE_KINDS, DataError  # noqa: E402
from lsmooth.runs import atomic_write_json, check_writable  # noqa: E402
from lsmooth.sweep import format_table, grid, load_results, parse_shard, run_sweep, shard, write_summary  # noqa: E402

# ---------------------------------------------------------------- settings
DATASET = "digits"      # offline and real; "pets" is the fastai lesson-1 experiment (GPU, download)
EPS = (0.0, 0.1)        # baseline first; 0 = plain cross-entropy
NOISE = (0.0,)          # training-label noise rates (pets.NOISE_KIND: flip to a different class)
SEEDS = (0, 1, 2)       # one paired (baseline, smoothing) comparison per seed
THREADS = 1             # torch CPU threads on a machine without GPU: measured 6-10x faster than 2 on
                        # 2 cores shared with other jobs (358 vs 2007 ms per ResNet18 batch at 16 px)
BASELINE_EPS = 0.0      # paired differences are "arm − this arm" at the same noise rate
# Digits at 16 px instead of pets.py's 32 (the images are 8x8: nothing is lost, compute is a quarter)
# and 8 epochs: one run took ~45 s with 1 thread on the shared 2-core CPU, so 6 runs fit in ~10 min.
DIGITS = dict(size=16, epochs=8)
PROG = "compare.py"
# Settings shared by every run of a sweep; a rerun into the same folder must match them.
SHARED = ("dataset", "data", "arch", "pretrained", "epochs", "lr", "bs", "size", "noise_kind", "precision")


class SweepError(ValueError):
    """A sweep that cannot run as asked; the message says what is wrong."""


def default_out(dataset: str) -> str:
    return f"{pets.OUT}/compare-{dataset}"


def make_configs(args: argparse.Namespace) -> tuple[list, dict]:
    """The grid's jobs and their resolved pets.Config, checked before anything trains."""
    jobs = grid(args.eps, args.noise, args.seeds)
    if args.shard:
        jobs = shard(jobs, *parse_shard(args.shard))
    if args.threads is None and not torch.cuda.is_available():
        args.threads = THREADS
    if args.dataset == "digits":
        args.size = DIGITS["size"] if args.size is None else args.size
        args.epochs = DIGITS["epochs"] if args.epochs is None else args.epochs
    base = pets.Config(dataset=args.dataset, data=args.data, arch=args.arch, pretrained=args.pretrained,
                       epochs=args.epochs, lr=args.lr, bs=args.bs, size=args.size, noise_kind=args.noise_kind,
                       precision=args.precision, workers=args.workers, threads=args.threads, progress=False,
                       out=str(Path(args.out) / "runs"))
    configs = {}
    for e in dict.fromkeys(args.eps):
        for n in dict.fromkeys(args.noise):
            pets.resolve(dataclasses.replace(base, eps=e, noise=n))  # ConfigError on a bad value
    for job in jobs:
        configs[job.key] = dataclasses.replace(base, eps=job.eps, noise=job.noise, seed=job.seed,
                                               name=f"eps{job.eps:g}-noise{job.noise:g}-s{job.seed}")
    return jobs, configs


def check_sweep_folder(out: Path, settings: dict) -> None:
    """Record the shared settings in out/sweep.json, or refuse a folder holding other settings."""
    f = out / "sweep.json"
    if f.exists():
        old = json.loads(f.read_text())
        diff = [k for k in SHARED if old.get(k) != settings.get(k)]
        if diff:
            k = diff[0]
            raise SweepError(f"{out} holds a sweep with {k}={old.get(k)!r}, not {settings.get(k)!r}; "
                             f"use another --out (or the same settings to resume)")
    else:
        atomic_write_json(f, settings)


def sweep(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    jobs, configs = make_configs(args)
    resolved = pets.resolve(next(iter(configs.values()))) if configs else None
    try:
        check_writable(out)
    except OSError as e:
        raise SweepError(f"--out: {e}") from None
    if resolved is not None:
        settings = {k: getattr(resolved, k) for k in SHARED}
        check_sweep_folder(out, settings)
        i_n = parse_shard(args.shard) if args.shard else None
        results = out / ("results.jsonl" if i_n is None else f"results-shard{i_n[0]}of{i_n[1]}.jsonl")
        run_sweep(jobs, lambda job: pets.train(configs[job.key]), results, settings, done_from=[out])
    return summarize(out, out)


def summarize(sources, out: Path) -> dict:
    sources = sources if isinstance(sources, list) else [sources]
    try:
        rows = load_results(*sources)
    except ValueError as e:  # rows from different settings
        raise SweepError(str(e)) from None
    if not rows:
        raise SweepError(f"no finished runs in {', '.join(map(str, sources))}")
    summary = write_summary(rows, out, BASELINE_EPS)
    s = rows[0]["settings"]
    print(f"\n{s['dataset']} {s['arch']}, {s['epochs']} epochs, size {s['size']}: {len(rows)} runs "
          f"(validation set, ECE with 15 bins; TS = temperature scaling, 2-fold cross-fitted)")
    print(format_table(summary["arms"], summary["paired_differences"]))
    for note in summary["notes"]:
        print(f"note: {note}")
    print(f"written: {out}/summary.csv, summary.json, summary.md, " + ", ".join(Path(p).name for p in summary["plots"]))
    return summary


# ---------------------------------------------------------------- command line
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(argv=None) -> argparse.Namespace:
    ap = _Parser(prog=PROG, description=__doc__.splitlines()[0],
                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--dataset", choices=list(pets.PRESETS), default=DATASET)
    ap.add_argument("--eps", type=float, nargs="+", default=list(EPS), metavar="EPS",
                    help="smoothing values, one arm each (negative = negative LS)")
    ap.add_argument("--noise", type=float, nargs="+", default=list(NOISE), metavar="RATE",
                    help="training-label noise rates, each crossed with every eps")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), metavar="SEED")
    ap.add_argument("--out", metavar="DIR", help="sweep folder (default: runs/compare-<dataset>)")
    ap.add_argument("--shard", metavar="I/N", help="run only shard I of N (1-based) of the grid")
    ap.add_argument("--merge", nargs="+", metavar="PATH",
                    help="train nothing: summarise these sweep folders / results files into --out")
    g = ap.add_argument_group("passed to pets.py (default: the dataset's preset)")
    g.add_argument("--data", metavar="PATH", help="local folder in the Pets layout")
    g.add_argument("--arch")
    g.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--epochs", type=int, help=f"(digits: {DIGITS['epochs']})")
    g.add_argument("--lr", type=float)
    g.add_argument("--bs", type=int)
    g.add_argument("--size", type=int, help=f"(digits: {DIGITS['size']})")
    g.add_argument("--noise-kind", choices=NOISE_KINDS, default=pets.NOISE_KIND)
    g.add_argument("--precision", choices=pets.PRECISIONS, default=pets.PRECISION)
    g.add_argument("--workers", type=int)
    g.add_argument("--threads", type=int, help=f"torch CPU threads (default: {THREADS} without a GPU)")
    args = ap.parse_args(argv)
    if args.shard:
        try:
            parse_shard(args.shard)
        except ValueError as e:
            ap.error(str(e))
    if args.out is None:
        args.out = default_out(args.dataset) if not args.merge else f"{pets.OUT}/compare-merged"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.merge:
            summarize(list(args.merge), Path(args.out))
        else:
            sweep(args)
    except (pets.ConfigError, DataError, pets.WeightsUnavailable, SweepError, FileNotFoundError) as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; rerun the same command to resume (finished runs are kept)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
