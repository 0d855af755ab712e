"""Label smoothing vs. cross-entropy over several seeds, paired: error rate, calibration, noisy labels.

Reproduces the comparison behind the fastai lesson-1 claim (label smoothing, eps=0.1, against plain
cross-entropy) the way Müller et al. 2019 measure it: several seeds, every arm of a seed trained on
the same split, mean ± std per arm and the per-seed difference with a 95% t-interval, plus ECE, NLL
and Brier before and after temperature scaling. Offline by default: scikit-learn's digits, ResNet18
from scratch at 16 px (the images are 8x8), 8 epochs, 1 torch thread on CPU (6-10x faster than 2 on
2 shared cores), eps {0, 0.1}, seeds {0, 1, 2}.

Measured, as recorded in results/compare-digits/summary.json (tests/test_results.py keeps it equal):
    (not measured yet: run the command below and copy runs/compare-digits/summary.* to results/)

Usage:
    python recipes/compare.py                                  # the default above
    python recipes/compare.py --eps -0.1 0 0.1 0.3 --noise 0 0.2 0.4 --seeds 0 1 2 \\
        --epochs 3 --out runs/noise-digits                     # notebook 3's noise sweep
    python recipes/compare.py --dataset pets --seeds 0 1 2     # the lesson-1 experiment (GPU)
    python recipes/compare.py --shard 1/2 --out DIR            # machine 1 of 2 ...
    python recipes/compare.py --shard 2/2 --out DIR            # ... machine 2 of 2
    python recipes/compare.py --merge DIR1 DIR2 --out DIR      # one summary from several folders

Rerunning a command resumes it (finished runs are kept; a killed sweep loses only the run in
progress); a folder holding a sweep with other settings is refused. The sweep folder gets
sweep.json, runs/, results*.jsonl, summary.json / .md / .csv and the plots (see lsmooth.sweep and
lsmooth.report). argparse, not fastcore's @call_parse: the training flags are built from the fields
of lsmooth.train.Config, and a bad value must be one line, not a usage block.
"""

import shlex
import sys
import warnings

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)

import torch  # noqa: E402

from lsmooth.cli import USER_ERRORS, Parser, add_config_flags, config_from_args, error_line  # noqa: E402
from lsmooth.report import format_table  # noqa: E402
from lsmooth.sweep import SweepError, merge, parse_shard, run_sweep  # noqa: E402

PROG = "compare.py"
DATASET = "digits"  # offline and real; "pets" is the lesson-1 experiment (GPU, download)
EPS = [0.0, 0.1]  # baseline first; paired differences are "arm − eps=0" at the same noise rate
NOISE = [0.0]  # training-label noise rates, each crossed with every eps
SEEDS = [0, 1, 2]  # one paired comparison per seed
DIGITS_SIZE = 16  # digits are 8x8: 16 px loses nothing and costs a quarter of the preset's 32
CPU_THREADS = 1  # measured 358 vs 2007 ms per ResNet18 batch with 1 vs 2 threads on 2 shared cores


def parse_args(argv):
    ap = Parser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("--eps", type=float, nargs="+", default=EPS, help="smoothing values, one arm each")
    ap.add_argument("--noise", type=float, nargs="+", default=NOISE, metavar="RATE", help="label-noise rates")
    ap.add_argument("--seeds", type=int, nargs="+", default=SEEDS, metavar="SEED", help="one paired comparison each")
    ap.add_argument("--out", metavar="DIR", help="sweep folder (default: runs/compare-<dataset>)%(default).0s")
    ap.add_argument("--shard", metavar="I/N", help="run only shard I of N (1-based) of the grid%(default).0s")
    ap.add_argument("--merge", nargs="+", metavar="PATH",
                    help="train nothing: summarise these folders into --out%(default).0s")
    add_config_flags(ap.add_argument_group("training (lsmooth.train.Config)"),
                     skip={"eps", "noise", "seed", "out", "name", "progress"})
    ap.set_defaults(dataset=DATASET)
    args = ap.parse_args(argv)
    try:
        args.shard = parse_shard(args.shard) if args.shard else None
    except ValueError as e:
        ap.error(str(e))
    args.out = args.out or ("runs/compare-merged" if args.merge else f"runs/compare-{args.dataset}")
    if args.dataset == "digits" and args.size is None:
        args.size = DIGITS_SIZE
    if args.threads is None and not torch.cuda.is_available():
        args.threads = CPU_THREADS
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    command = shlex.join(["python", "recipes/compare.py", *argv])
    try:
        if args.merge:
            data = merge(args.merge, args.out, command)
        else:
            data = run_sweep(config_from_args(args), args.eps, args.noise, args.seeds, args.out, args.shard, command)
    except (*USER_ERRORS, SweepError, FileNotFoundError) as e:
        return error_line(PROG, e)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; rerun the same command to resume (finished runs are kept)", file=sys.stderr)
        return 130
    s = data["settings"]
    print(f"\n{s['dataset']} {s['arch']}, {s['epochs']} epochs, size {s['size']}: {data['n_runs']} runs "
          f"(validation set, ECE with 15 bins; TS = temperature scaling, 2-fold cross-fitted)")
    print(format_table(data["arms"], data["paired_differences"]))
    for note in data["notes"]:
        print(f"note: {note}")
    print(f"written: {args.out}/summary.json, summary.md, summary.csv, " + ", ".join(data["plots"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
