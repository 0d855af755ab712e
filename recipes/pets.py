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

Measured offline (scikit-learn's digits, ResNet18 from scratch at 32 px, 8 epochs):
    python recipes/pets.py --dataset digits --threads 1
MEASURED-FIGURE: to be filled from the committed results file (hardware, error rate, time).

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
