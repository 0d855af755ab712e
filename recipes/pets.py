"""Oxford-IIIT Pets, ResNet34, ``fit_one_cycle(4)``: label smoothing vs. plain cross-entropy.

Reproduces the fastai lesson-1 experiment in fastai v2: labels from file names
(``^(.+)_\\d+\\.jpg$``), fastai's 80/20 ``RandomSplitter(seed=42)`` over the sorted file list,
``Resize(460)`` then ``aug_transforms(size=224, min_scale=0.75)``, ImageNet-pretrained torchvision
ResNet34 with a frozen body, ``fit_one_cycle(4)``, loss ``LabelSmoothingCrossEntropy(eps=0.1)``;
``--eps 0`` is the baseline with fastai's ``CrossEntropyLossFlat``. The training is
``lsmooth.train.train``; this file is its command line.

Published, not measured here (ResNet34, 4 epochs, frozen body, no smoothing): error rate 7.1% in
the fastai course-v3 lesson-1 notebook (5.7-7.3% across its versions), 8.0% in the fastai2 port;
the seed article reports 7.5% with label smoothing. fastbook: gains from label smoothing usually
need more epochs.

Offline, ``python recipes/compare.py`` runs this same training function on scikit-learn's digits
(ResNet18 from scratch, both arms, 3 paired seeds).
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
    python recipes/pets.py                    # Pets (~800 MB download + weights), eps=0.1
    python recipes/pets.py --eps 0            # the fastai baseline
    python recipes/pets.py --data ~/pets      # a local copy (its images/ folder or the root)
    python recipes/pets.py --dataset digits --noise 0.4
    python recipes/pets.py --dry-run          # resolved config + data summary, no training
    python recipes/pets.py --resume runs/20250101-120000-pets-resnet34-eps0.1-noise0-s42

Every run writes ``<out>/<time>-<name>/``: config.json (every setting, resolved), env.json,
metrics.csv, final.json, valid_preds.pt. ``--resume RUN_DIR`` finishes a killed run from its last
epoch with the settings of its config.json (only --threads and --workers may be given again); on
the same CPU the final metrics equal an uninterrupted run's exactly.

Several GPUs (fastai's ``distrib_ctx``; ``pip install accelerate``): --bs is per process.
    accelerate launch --multi_gpu --num_processes 4 recipes/pets.py
    torchrun --nproc_per_node 2 recipes/pets.py --dataset tiny   # 2 CPU processes (gloo), as tested
Runs are deterministic on CPU; on GPUs some CUDA kernels are not (see lsmooth/train.py).

Why argparse and not fastcore's ``@call_parse``: the flags are built from the fields of
``lsmooth.train.Config`` (each setting declared once, there), which a function signature would
repeat; and a bad value must be one line (``pets.py: error: ... (see --help)``), not a usage block.
"""

import sys
import warnings

# fastai's import calls torch.jit.script, deprecated in recent torch: a line of noise on stderr.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)

from lsmooth.cli import USER_ERRORS, Parser, add_config_flags, config_from_args, error_line, given_flags  # noqa: E402
from lsmooth.runs import CHECKPOINT_FILE  # noqa: E402
from lsmooth.train import dry_run, resume, train  # noqa: E402

PROG = "pets.py"
RESUME_FLAGS = {"resume", "threads", "workers"}  # what --resume accepts; the rest comes from config.json


def parser() -> Parser:
    ap = Parser(prog=PROG, description=__doc__.splitlines()[0])
    add_config_flags(ap)
    ap.add_argument("--dry-run", action="store_true", help="print config and data summary only")
    ap.add_argument("--resume", metavar="RUN_DIR", help="finish an interrupted run from its last epoch")
    return ap


def main(argv=None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    try:
        if args.resume is not None:
            extra = sorted(given_flags(ap, argv) - RESUME_FLAGS)
            if extra:
                flags = ", ".join("--" + f.replace("_", "-") for f in extra)
                return error_line(PROG, f"--resume takes the settings from {args.resume}/config.json; drop {flags}")
            resume(args.resume, threads=args.threads, workers=args.workers)
        elif args.dry_run:
            dry_run(config_from_args(args))
        else:
            train(config_from_args(args))
    except USER_ERRORS as e:
        return error_line(PROG, e)
    except KeyboardInterrupt as e:
        run_dir = getattr(e, "run_dir", None)
        if run_dir is not None and (run_dir / CHECKPOINT_FILE).exists():
            print(f"{PROG}: interrupted; continue with: python recipes/pets.py --resume {run_dir}", file=sys.stderr)
        else:
            print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
