"""Label smoothing against plain cross-entropy, paired over seeds: error rate, calibration, noisy labels.

The comparison as Müller et al. 2019 make it: every arm of a seed trains on the same split; mean ± std per arm,
each arm's per-seed difference from cross-entropy with a 95% t-interval; ECE, NLL, Brier before and after
temperature scaling. Each run is a run of pets.py, one job; flags this script does not know go to every job.
Measured here (results/compare-digits/summary.json):
    (not measured yet)
Run: python recipes/compare.py (offline digits, eps 0 vs 0.1, 3 seeds); Pets, GPUs, SLURM: recipes/README.md.
"""

import shlex
import sys
from pathlib import Path
from typing import Annotated

from fastcore.script import call_parse

COMMAND = shlex.join(["python", "recipes/compare.py", *sys.argv[1:]])  # as typed: recorded with the results
KINDS_WITH_EPS = ("uniform", "others", "two-stage")  # one arm per --eps value; online and penalty: one arm each
PER_JOB = ("--name", "--resume", "--dry-run", "--check", "--seed", "--out")  # set by the sweep for each job
Many = lambda kind, help: Annotated[kind, help, {"nargs": "+"}]  # noqa: E731


def grid(eps, smoothing, noise, seeds):
    "The comparison: arms (a kind of smoothing and its eps, at a noise rate) × seeds, each arm of a seed one run."
    from lsmooth.report import arm_label
    from lsmooth.sweep import Job

    arms = [dict(smoothing=kind, eps=e, noise=n) for n in noise for kind in smoothing
            for e in (eps if kind in KINDS_WITH_EPS else [0.0])]  # eps 0 with any kind: cross-entropy, the baseline
    arms = {arm_label(a): a for a in arms}  # ... one arm however many kinds reach it
    return [Job.of(label, seed, ["--smoothing", a["smoothing"], "--eps", f"{a['eps']:g}", "--noise", f"{a['noise']:g}"])
            for label, a in arms.items() for seed in seeds]


@call_parse(nested=True)  # flags not declared here are left in sys.argv for pets.py
def main(
    eps: Many(float, "label smoothing values: one arm each for uniform, others and two-stage; 0 is the baseline")
    = (0.0, 0.1),
    smoothing: Many(str, "kinds of smoothing: uniform, others, two-stage, online, penalty") = ("uniform",),
    noise: Many(float, "training-label noise rates, each crossed with every arm") = (0.0,),
    seeds: Many(int, "seeds: one paired comparison each") = (0, 1, 2),
    dataset: str = "digits",  # pets (GPU and download) | digits | tiny (offline)
    out: str = None,  # the sweep folder (default: runs/compare-<dataset>)
    executor: str = "serial",  # serial (one run after another) | local (--jobs at a time) | slurm (a job array)
    jobs: int = None,  # local: runs at a time (default: one per GPU, else 2); slurm: the array's throttle
    partition: str = None,  # slurm: the partition
    gpus: int = 0,  # slurm: GPUs per job
    cpus: int = 1,  # slurm: CPUs per job
    mem_gb: int = None,  # slurm: memory per job
    time_min: int = 60,  # slurm: time limit per job; a job stopped at it is requeued and resumes
    sbatch: str = None,  # slurm: other sbatch options, e.g. "account=mylab,qos=normal"
):
    "Run the comparison's grid as pets.py jobs into one sweep folder, then summarise it (tables, figures)."
    from fastcore.script import CliError

    from lsmooth.report import format_table, write_summary
    from lsmooth.sweep import SlurmOptions, SweepError, run_sweep

    forwarded = sys.argv[1:]  # e.g. --epochs 3 --alpha 0.7: the same for every job
    if bad := [a for a in forwarded if a.split("=")[0] in PER_JOB]:
        raise CliError(f"compare.py: error: {bad[0]} is set for each job by the sweep; drop it")
    out = Path(out or f"runs/compare-{dataset}")
    options = SlurmOptions(partition, gpus, cpus, mem_gb, time_min, jobs,
                           dict(kv.split("=", 1) for kv in sbatch.split(",")) if sbatch else {})
    try:
        failed = run_sweep(grid(eps, smoothing, noise, seeds), Path(__file__).with_name("pets.py"),
                           ["--dataset", dataset, *forwarded], out, executor=executor, slots=jobs,
                           slurm=options, command=COMMAND)
        data = write_summary(out, COMMAND)
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

