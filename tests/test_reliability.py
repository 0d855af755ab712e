"""Issue 6 for single runs: atomic files, checkpoints and --resume, determinism, two processes.

The reference is one uninterrupted 3-epoch run on `tiny` (module fixture). A run that is cut
(Ctrl-C mid-epoch, or SIGKILL of the real command line) and then resumed must end with exactly the
same metrics, epoch by epoch: on one CPU every random stream is restored, so nothing is left to
chance and the comparison is ``==``, not a tolerance.
"""

import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_main
from fastai.callback.core import Callback

from lsmooth.runs import atomic_save_torch, atomic_write_json, rng_state, set_rng_state

ROOT = Path(__file__).resolve().parents[1]
PETS = ROOT / "recipes" / "pets.py"
METRICS = ("error_rate", "accuracy", "nll", "ece", "brier")
TINY = dict(dataset="tiny", epochs=3, size=16, bs=32, seed=0, noise=0.2, threads=1)


def tiny_argv(tiny_dir, out, **kw) -> list[str]:
    opts = TINY | {"data": str(tiny_dir), "out": str(out)} | kw
    return [a for k, v in opts.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def tiny_cfg(pets, tiny_dir, out, **kw):
    return pets.Config(**(TINY | {"data": str(tiny_dir), "out": str(out), "progress": False} | kw))


def epochs_table(run_dir: Path) -> list[dict]:
    """metrics.csv without the wall-clock column."""
    rows = list(csv.DictReader(io.StringIO((Path(run_dir) / "metrics.csv").read_text())))
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


def final_metrics(run_dir: Path) -> dict:
    final = json.loads((Path(run_dir) / "final.json").read_text())
    return {k: final[k] for k in METRICS}


@pytest.fixture(scope="module")
def reference(pets_recipe, tiny_dir, tmp_path_factory) -> Path:
    """An uninterrupted run: the folder every other run here is compared with."""
    final = pets_recipe.train(tiny_cfg(pets_recipe, tiny_dir, tmp_path_factory.mktemp("ref")))
    return Path(final["run_dir"])


def one_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------- atomic files
def test_interrupted_atomic_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    atomic_save_torch(path, {"epoch": 0})

    def dies_halfway(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # what a kill mid-write looks like from inside

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        atomic_save_torch(path, {"epoch": 1})
    monkeypatch.undo()
    assert torch.load(path) == {"epoch": 0}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]  # no temp file left
    atomic_write_json(tmp_path / "final.json", {"a": 1})
    assert json.loads((tmp_path / "final.json").read_text()) == {"a": 1}


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    atomic_save_torch(tmp_path / "rng.pth", rng_state())
    draws = (random.random(), np.random.rand(), torch.rand(2))
    set_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True))
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert draws[:2] == again[:2] and torch.equal(draws[2], again[2])


# ---------------------------------------------------------------- determinism
@pytest.mark.slow
def test_same_seed_same_metrics_every_epoch(pets_recipe, tiny_dir, tmp_path, reference):
    again = Path(pets_recipe.train(tiny_cfg(pets_recipe, tiny_dir, tmp_path))["run_dir"])
    assert final_metrics(again) == final_metrics(reference)
    assert epochs_table(again) == epochs_table(reference)
    assert len(epochs_table(reference)) == 3
    other = pets_recipe.train(tiny_cfg(pets_recipe, tiny_dir, tmp_path, seed=1, epochs=1))
    assert other["nll"] != final_metrics(reference)["nll"]  # the seed does matter


# ---------------------------------------------------------------- checkpoints and --resume
class StopMidEpoch(Callback):
    """Ctrl-C in the middle of epoch 1, after epoch 0's checkpoint was written."""

    def before_batch(self):
        if self.training and self.epoch == 1 and self.iter == 2:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_ctrl_c_then_resume_ends_like_an_uninterrupted_run(pets_recipe, tiny_dir, tmp_path, capsys,
                                                          monkeypatch, reference):
    real = pets_recipe.vision_learner
    monkeypatch.setattr(pets_recipe, "vision_learner", lambda *a, **k: real(*a, **k).add_cb(StopMidEpoch()))
    code, _, err = run_main(pets_recipe, tiny_argv(tiny_dir, tmp_path), capsys)
    (run,) = tmp_path.iterdir()
    assert code == 130
    assert f"continue with: python recipes/pets.py --resume {run}" in one_line(err)
    assert {p.name for p in run.iterdir()} == {"config.json", "env.json", "metrics.csv", "checkpoint.pth"}
    assert len(epochs_table(run)) == 1
    ckpt = torch.load(run / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 0 and {"model", "opt", "rng", "smooth_loss"} <= ckpt.keys()

    monkeypatch.undo()
    (run / ".checkpoint.pth.x.tmp").write_bytes(b"half")  # a kill during a checkpoint write
    code, out, err = run_main(pets_recipe, ["--resume", str(run)], capsys)
    assert code == 0, err
    assert "resuming" in out and "after epoch 1 of 3" in out
    assert final_metrics(run) == final_metrics(reference)
    assert epochs_table(run) == epochs_table(reference)  # every epoch exactly once
    assert {p.name for p in run.iterdir()} == {"config.json", "env.json", "metrics.csv", "final.json",
                                               "valid_preds.pt"}  # checkpoint and stray temp gone
    code, out, _ = run_main(pets_recipe, ["--resume", str(run)], capsys)
    assert code == 0 and "already finished" in out


def _wait_for(root: Path, pattern: str, proc: subprocess.Popen, timeout: float = 90) -> Path:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        hits = list(root.glob(pattern))
        if hits:
            return hits[0]
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"the run ended before writing a checkpoint: {err[-2000:]}")
        time.sleep(0.02)
    raise TimeoutError(f"{root}/{pattern}")


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a launcher and every process under it (torchrun's workers live in their own sessions)."""
    psutil = pytest.importorskip("psutil") if proc.args[1:3] == ["-m", "torch.distributed.run"] else None
    if psutil is None:  # a single process
        proc.kill()
        proc.wait()
        return
    try:
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:  # already over
        proc.wait()
        return
    for p in procs:
        p.send_signal(signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(procs, timeout=10)


@pytest.mark.slow
def test_sigkill_of_the_real_command_then_resume(tiny_dir, tmp_path, reference):
    proc = subprocess.Popen([sys.executable, str(PETS), *tiny_argv(tiny_dir, tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        ckpt = _wait_for(tmp_path, "*/checkpoint.pth", proc)
    finally:
        _kill_tree(proc)
    run = ckpt.parent
    assert not (run / "final.json").exists()
    res = subprocess.run([sys.executable, str(PETS), "--resume", str(run)], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert final_metrics(run) == final_metrics(reference)
    assert epochs_table(run) == epochs_table(reference)


@pytest.fixture
def cut_run(pets_recipe, reference, tmp_path) -> Path:
    """A run folder as a kill after epoch 0 leaves it (the reference's config, a checkpoint)."""
    run = tmp_path / "cut"
    run.mkdir()
    (run / "config.json").write_text((reference / "config.json").read_text())
    atomic_save_torch(run / "checkpoint.pth", {"epoch": 0, "data_id": "other data", "rng": [{}]})
    return run


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--eps", "0.2"], "drop --eps"),
        (["--dataset", "digits", "--bs", "8"], "drop --bs, --dataset"),
    ],
)
def test_resume_refuses_new_settings(pets_recipe, capsys, cut_run, argv, needle):
    code, _, err = run_main(pets_recipe, ["--resume", str(cut_run), *argv], capsys)
    assert code == 2 and needle in one_line(err)


def test_resume_bad_folders_give_one_line(pets_recipe, capsys, tmp_path, cut_run):
    code, _, err = run_main(pets_recipe, ["--resume", str(tmp_path / "nope")], capsys)
    assert code == 2 and "no config.json" in one_line(err)
    (cut_run / "checkpoint.pth").unlink()
    code, _, err = run_main(pets_recipe, ["--resume", str(cut_run)], capsys)
    assert code == 2 and "no checkpoint.pth" in one_line(err)


def test_resume_refuses_changed_data(pets_recipe, capsys, cut_run):
    code, _, err = run_main(pets_recipe, ["--resume", str(cut_run), "--threads", "1"], capsys)
    assert code == 2 and "changed since the run started" in one_line(err)


# ---------------------------------------------------------------- two processes (gloo on CPU)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*argv) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(PETS), *argv]


@pytest.mark.slow
def test_two_processes_write_once_and_resume_after_sigkill(tiny_dir, tmp_path):
    """torchrun (what `accelerate launch --multi_gpu` runs) with 2 CPU processes and gloo."""
    pytest.importorskip("accelerate")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    full = subprocess.run(_torchrun(*tiny_argv(tiny_dir, tmp_path / "full")), capture_output=True, text=True,
                          timeout=120, env=env)
    assert full.returncode == 0, full.stderr[-3000:]
    (ref,) = (tmp_path / "full").iterdir()  # one run folder, written by rank 0 only
    assert {p.name for p in ref.iterdir()} == {"config.json", "env.json", "metrics.csv", "final.json",
                                               "valid_preds.pt"}
    assert json.loads((ref / "config.json").read_text())["processes"] == 2
    assert full.stdout.count("run folder:") == 1 and full.stdout.count("data:") == 1  # rank 0 prints
    assert len(epochs_table(ref)) == 3
    assert torch.load(ref / "valid_preds.pt")["probs"].shape == (44, 37)  # not gathered twice

    proc = subprocess.Popen(_torchrun(*tiny_argv(tiny_dir, tmp_path / "cut")), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    try:
        ckpt = _wait_for(tmp_path / "cut", "*/checkpoint.pth", proc)
    finally:
        _kill_tree(proc)
    assert not (ckpt.parent / "final.json").exists()
    res = subprocess.run(_torchrun("--resume", str(ckpt.parent)), capture_output=True, text=True, timeout=120,
                         env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert final_metrics(ckpt.parent) == final_metrics(ref)
    assert epochs_table(ckpt.parent) == epochs_table(ref)
