"""Label smoothing vs. cross-entropy over several seeds, paired: error rate, calibration, noisy labels.

Reproduces the lesson-1 comparison (label smoothing eps=0.1 vs. plain cross-entropy) as Müller et al. 2019
measure it: several seeds, both arms of a seed on the same split, mean ± std per arm, per-seed differences
with a 95% t-interval, ECE/NLL/Brier before and after temperature scaling; offline by default (digits).

Measured, as recorded in results/compare-digits/summary.json (tests/test_results.py keeps it equal):
    command: python recipes/compare.py
    machine: AMD EPYC (2 CPUs, 1 torch thread, load 0.8), no GPU; torch 2.14.1+cu130, fastai 2.8.12
    6 runs (219 s of run time in all): digits resnet18, 8 epochs, size 16, metrics on the validation set
    ECE with 15 bins; TS = temperature scaling, 2-fold cross-fitted

    arm      seeds  error rate    NLL              ECE              Brier            ECE after TS
    -------  -----  ------------  ---------------  ---------------  ---------------  ---------------
    eps=0    3      1.02 ± 0.32%  0.0445 ± 0.0220  0.0103 ± 0.0031  0.0190 ± 0.0074  0.0102 ± 0.0029
    eps=0.1  3      0.93 ± 0.43%  0.0942 ± 0.0098  0.0680 ± 0.0028  0.0214 ± 0.0050  0.0068 ± 0.0039

    paired difference per seed, mean [95% t-interval]:
    arm − baseline   pairs  Δ error rate              Δ ECE
    ---------------  -----  ------------------------  --------------------------
    eps=0.1 − eps=0  3      -0.09 pts [-0.49, +0.31]  +0.0577 [+0.0433, +0.0721]

Usage:
    python recipes/compare.py                                  # the default above
    python recipes/compare.py --eps -0.1 0 0.1 0.3 --noise 0 0.2 0.4 --seeds 0 1 2 \\
        --epochs 3 --out runs/noise-digits                     # notebook 3's noise sweep
    python recipes/compare.py --dataset pets --seeds 0 1 2     # the lesson-1 experiment (GPU)
    python recipes/compare.py --shard 1/2 --out DIR            # machine 1 of 2 (--shard 2/2 on the other)
    python recipes/compare.py --merge DIR1 DIR2 --out DIR      # one summary from several folders

Rerunning a command resumes it; a folder holding other settings is refused. argparse, not @call_parse:
the training flags come from the fields of lsmooth.train.Config, and a bad value must be one line.
"""

import shlex
import sys
import warnings

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)

import torch  # noqa: E402

from lsmooth.cli import USER_ERRORS, Parser, add_config_flags, config_from_args, error_line  # noqa: E402
from lsmooth.report import SUMMARY_CSV, SUMMARY_JSON, SUMMARY_MD, format_table, provenance_lines  # noqa: E402
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
        data = merge(args.merge, args.out, command) if args.merge else run_sweep(
            config_from_args(args), args.eps, args.noise, args.seeds, args.out, args.shard, command)
    except (*USER_ERRORS, SweepError, FileNotFoundError) as e:
        return error_line(PROG, e)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; rerun the same command to resume (finished runs are kept)", file=sys.stderr)
        return 130
    print("", *provenance_lines(data)[-2:], format_table(data["arms"], data["paired_differences"]), sep="\n")
    print(*(f"note: {note}" for note in data["notes"]), f"written to {args.out}: "
          + ", ".join([SUMMARY_JSON, SUMMARY_MD, SUMMARY_CSV, *data["plots"]]), sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
