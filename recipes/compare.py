"""Label smoothing against plain cross-entropy, paired over seeds: error rate, calibration, noisy labels.

The comparison as Müller et al. 2019 make it: every arm of a seed trains on the same split; mean ± std per arm,
each arm's per-seed difference from cross-entropy with a 95% t-interval; ECE, NLL, Brier before and after
temperature scaling. Each run is a run of pets.py, one job; flags this script does not know go to every job.
Measured here (results/compare-digits/summary.json):
    digits, resnet18, 8 epochs, 3 paired seeds, 2-core CPU: error eps=0 1.30 ± 0.43%;
    difference per seed, mean [95% interval]: eps=0.1 -0.37 pts [-0.77, +0.03]
Run: python recipes/compare.py (offline digits, eps 0 vs 0.1, 3 seeds); Pets, GPUs, SLURM: recipes/README.md.
"""

import shlex
import sys
from pathlib import Path
from typing import Annotated

from fastcore.script import call_parse

ARGV = sys.argv[1:]  # as typed: recorded with the results (fastcore takes its own flags out of sys.argv)
KINDS_WITH_EPS = ("uniform", "others", "two-stage")  # one arm per --eps value; online and penalty: one arm each
PER_JOB = ("--seed", "--name", "--resume", "--dry-run", "--check")  # set by the sweep for each job
Many = lambda kind, help: Annotated[kind, help, {"nargs": "+"}]  # noqa: E731


def grid(eps, smoothing, noise, seeds):
    "The comparison: arms (a kind of smoothing and its eps, at a noise rate) × seeds, each arm of a seed one run."
    from lsmooth.runs import arm_label
    from lsmooth.sweep import Job

    arms = [dict(smoothing=kind, eps=e, noise=n) for n in noise for kind in ("uniform", *smoothing)
            for e in ([0.0, *eps] if kind in KINDS_WITH_EPS else [0.0])]  # eps 0 of any kind: cross-entropy, the
    arms = {arm_label(a): a for a in arms}  # baseline every arm is paired with, once at each noise rate
    return [Job.of(label, seed, ["--smoothing", a["smoothing"], "--eps", f"{a['eps']:g}", "--noise", f"{a['noise']:g}"])
            for label, a in arms.items() for seed in seeds]


@call_parse(nested=True)
def main(
    eps: Many(float, "label smoothing values: one arm each for uniform, others and two-stage (eps 0, plain "
                     "cross-entropy, is always an arm: the baseline)") = (0.1,),
    smoothing: Many(str, "kinds of smoothing: uniform, others, two-stage, online, penalty") = ("uniform",),
    noise: Many(float, "training-label noise rates, each crossed with every arm") = (0.0,),
    seeds: Many(int, "seeds: one paired comparison each") = (0, 1, 2),
    out: str = None,  # the sweep folder (default: runs/compare-<dataset>)
    executor: str = "serial",  # serial (one run after another) | local (--jobs at a time) | slurm (a job array)
    jobs: int = None,  # local: runs at a time (default: one per GPU, else 2); slurm: the array's throttle
    partition: str = None,  # slurm: the partition
    gpus: int = 0,  # slurm: GPUs per job
    cpus: int = 1,  # slurm: CPUs per job
    mem_gb: int = None,  # slurm: memory per job
    time_min: int = 60,  # slurm: time limit per job; a job stopped at it is requeued and resumes
    sbatch: Many(str, "slurm: other sbatch options as key=value, e.g. account=mylab qos=normal") = (),
):
    """Run the comparison's grid as pets.py jobs into one sweep folder, then summarise it (tables, figures).
    Every other flag goes to every job (pets.py --help): --dataset (default digits; pets with --data), --epochs,
    --alpha, ..."""
    from fastcore.script import CliError

    from lsmooth.report import format_table, write_summary
    from lsmooth.sweep import SlurmOptions, SweepError, run_sweep

    forwarded = sys.argv[1:]  # what fastcore left: pets.py's flags, the same for every job
    if bad := [a for a in ARGV if a.split("=")[0] in PER_JOB]:  # ARGV: argparse would take --seed for --seeds
        raise CliError(f"compare.py: error: {bad[0]} is set for each job by the sweep; drop it (--seeds: the seeds)")
    if bad := [kv for kv in sbatch if "=" not in kv]:
        raise CliError(f"compare.py: error: --sbatch {bad[0]!r}: write key=value (a flag without value: key=)")
    given = dict(zip(forwarded, forwarded[1:], strict=False)) | dict(
        a.split("=", 1) for a in forwarded if a.startswith("--") and "=" in a)  # --flag value, --flag=value
    dataset = given.get("--dataset") or ("pets" if "--data" in given else None)  # a folder: pets.py's own default
    shared = forwarded if dataset else ["--dataset", "digits", *forwarded]
    out = Path(out or f"runs/compare-{dataset or 'digits'}")
    options = SlurmOptions(partition, gpus, cpus, mem_gb, time_min, jobs, dict(kv.split("=", 1) for kv in sbatch))
    command = shlex.join(["python", "recipes/compare.py", *ARGV])
    try:
        failed = run_sweep(grid(eps, smoothing, noise, seeds), Path(__file__).with_name("pets.py"), shared, out,
                           executor=executor, slots=jobs, slurm=options, command=command)
        if failed and not any(out.glob("runs/*/final.json")):
            raise SweepError(f"every run failed; the first: {next(iter(failed.values()))}")
        data = write_summary(out, command)
    except (SweepError, ValueError) as e:
        raise CliError(f"compare.py: error: {e}") from None
    except KeyboardInterrupt:
        print("compare.py: interrupted; rerun the same command to resume (finished runs are kept)", file=sys.stderr)
        raise SystemExit(130) from None
    print("", format_table(data["arms"], data["paired_differences"]), *data["notes"],
          f"written to {out}: summary.json, summary.md, summary.csv, {', '.join(data['plots'])}", sep="\n")
    if failed:
        raise CliError(f"compare.py: error: {len(failed)} run(s) failed ({', '.join(failed)}); the summary has the "
                       f"others; rerun the same command to retry them")
