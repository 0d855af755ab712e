"""A stand-in for recipes/pets.py in the sweep tests: the same command-line contract, no training.

``--out O --name N`` writes the run folder ``O/N`` (config.json and final.json, with numbers made from the
arm and the seed); a folder that has final.json is left alone; ``--check`` only answers; the environment
variable ``FAKE_FAIL_SEED=S`` fails that seed's run. ``--sleep`` stands for training time: a SIGINT then
ends the run, which writes how many SIGINTs it got to ``interrupted``. The log names the GPU it was given.
"""

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

ap = argparse.ArgumentParser(prog="fake_recipe.py")
for flag in ("--smoothing", "--eps", "--noise", "--seed", "--out", "--name", "--dataset", "--sleep"):
    ap.add_argument(flag)
ap.add_argument("--check", action="store_true")
a = ap.parse_args()
if a.check:
    sys.exit(print(f"fake_recipe.py: error: --eps {a.eps}: too large", file=sys.stderr) or 1 if float(a.eps) > 1
             else 0)
run = Path(a.out) / a.name
if (run / "final.json").exists():
    sys.exit(print(f"{run} already finished"))
run.mkdir(parents=True, exist_ok=True)
(run / "threads").write_text(os.environ.get("OMP_NUM_THREADS", "all"))
if "CUDA_VISIBLE_DEVICES" in os.environ:
    print("gpu", os.environ["CUDA_VISIBLE_DEVICES"])
interrupts = []
signal.signal(signal.SIGINT, lambda *_: interrupts.append(1))
print("started", flush=True)
end = time.monotonic() + float(a.sleep or 0)
while time.monotonic() < end and not interrupts:
    time.sleep(0.05)
if interrupts:
    time.sleep(0.5)  # time for a second SIGINT to come
    (run / "interrupted").write_text(str(len(interrupts)))
    sys.exit(130)
if os.environ.get("FAKE_FAIL_SEED") == a.seed:
    sys.exit(print("boom", file=sys.stderr) or 3)
seed, eps = int(a.seed), float(a.eps)
(run / "config.json").write_text(json.dumps({"smoothing": a.smoothing, "eps": eps, "noise": float(a.noise),
                                             "seed": seed, "dataset": a.dataset, "epochs": 2}))
error = 0.1 + 0.01 * seed - eps / 10
(run / "final.json").write_text(json.dumps({"error_rate": error, "nll": 0.2 + eps, "ece": 0.03, "brier": 0.1,
                                            "fit_time_s": 1.0, "ece_ts": 0.02, "nll_ts": 0.19, "temperature": 1.1}))
print("trained", a.name)
